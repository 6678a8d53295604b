"""`python -m ftcli.train [ft train options]`: `ft train` as a module, for launchers.

    deepspeed --num_gpus 2 --module ftcli.train --zero-stage 2 --out runs/x ...
    torchrun --nproc_per_node 2 -m ftcli.train --zero-stage 2 --out runs/x ...

`ftcli.train_entry` (the name of earlier releases) runs this module too. The deepspeed
launcher's `--local_rank=N` argument is accepted (and ignored: LOCAL_RANK is read from the
environment). Set OMP_NUM_THREADS yourself with the deepspeed launcher on CPU (torchrun sets it
to 1).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from ftcli.cli import app  # the entry point sits above the CLI; imported when it runs

    args = list(sys.argv[1:] if argv is None else argv)
    app(["train", *args], prog_name="ftcli.train")


if __name__ == "__main__":
    main()
