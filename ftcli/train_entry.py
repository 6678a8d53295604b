"""`python -m ftcli.train_entry [ft train options]`: `ft train` as a module, for launchers.

    deepspeed --num_gpus 2 --module ftcli.train_entry --zero-stage 2 --out runs/x ...
    torchrun --nproc_per_node 2 -m ftcli.train_entry --zero-stage 2 --out runs/x ...

The deepspeed launcher's `--local_rank=N` argument is accepted (and ignored: LOCAL_RANK is
read from the environment). Set OMP_NUM_THREADS yourself with the deepspeed launcher on CPU
(torchrun sets it to 1).
"""

from __future__ import annotations

import sys

from ftcli.cli import app


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    app(["train", *args], prog_name="ftcli.train_entry")


if __name__ == "__main__":
    main()
