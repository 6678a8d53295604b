"""Run tracking (`--report-to`): the metrics.jsonl scalars and a few samples, in TensorBoard
and/or Weights & Biases.

    tracker = create_tracker("tensorboard,wandb", run_dir, config, rank=rank)
    try:
        tracker.log(step, row)               # a metrics.jsonl row: every numeric key is a scalar
        tracker.log_samples(step, samples)   # samples.jsonl rows: responses, credited tokens
    finally:
        tracker.close()

Backends (several may be comma-separated; `none`, the default, logs nothing):
- `tensorboard`: event files under `<run_dir>/tb/` (torch's SummaryWriter; needs the
  `tensorboard` package: `pip install "ftcli[tracking]"`). `tensorboard --logdir <run_dir>/tb`.
- `wandb`: a W&B run whose files live under `<run_dir>/wandb/`. The mode is WANDB_MODE when set,
  otherwise `online` with an API key (WANDB_API_KEY or a `wandb login` netrc entry) and
  `offline` without one, so it never needs a network unless asked to; `wandb sync
  <run_dir>/wandb/offline-run-*` uploads an offline run later. Project: WANDB_PROJECT or
  `ftcli`; run name: WANDB_NAME or the run directory's name.

Scalars keep the names of metrics.jsonl (nested dicts are flattened with '/'); `step` is the x
axis. Only rank 0 logs: other ranks (and `none`) get a `Tracker` whose methods do nothing.
"""

from __future__ import annotations

import importlib.util
import json
import netrc
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from urllib.parse import urlparse

BACKENDS = ("none", "tensorboard", "wandb")
INSTALL_HINT = 'pip install "ftcli[tracking]"'
REPORT_TO_HELP = (
    "Where to log the metrics.jsonl scalars and a few samples: none, tensorboard (<out>/tb), "
    "wandb (offline without an API key), or a comma list."
)
CREDIT_OPEN, CREDIT_CLOSE = "\u27e6", "\u27e7"  # ⟦credited token⟧: no meaning in markdown
MAX_SAMPLE_CHARS = 4000  # model output is untrusted: a logged response is cut to this length
_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


class TrackingError(ValueError):
    """A bad `--report-to` value or a missing tracking package (one-line message for the CLI)."""


# ---------------------------------------------------------------------------------------------
# The option value
# ---------------------------------------------------------------------------------------------
def parse_report_to(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """`--report-to` -> the backends to log to, in order, without duplicates (() for `none`).

    Raises TrackingError for an unknown backend, `none` combined with another, or a backend
    whose package is not installed (checked without importing it).
    """
    parts = value.split(",") if isinstance(value, str) else list(value or ())
    names: list[str] = []
    for p in parts:
        p = str(p).strip().lower()
        if p and p not in names:
            names.append(p)
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise TrackingError(f"unknown --report-to backend {unknown[0]!r} (choose from {', '.join(BACKENDS)}, or a comma list)")
    if "none" in names:
        if len(names) > 1:
            raise TrackingError("--report-to none cannot be combined with another backend")
        return ()
    for n in names:
        if importlib.util.find_spec(_PACKAGES[n]) is None:
            raise TrackingError(f"--report-to {n} needs the {_PACKAGES[n]} package: {INSTALL_HINT}")
    return tuple(names)


def report_to_callback(value: str | None) -> str:
    """Typer `callback=` of a `--report-to` option: the value normalised ("tensorboard,wandb"),
    or a one-line `typer.BadParameter`."""
    import typer  # here: the trainer uses this module without the CLI

    try:
        return ",".join(parse_report_to(value)) or "none"
    except TrackingError as e:
        raise typer.BadParameter(str(e)) from None


# ---------------------------------------------------------------------------------------------
# What is logged
# ---------------------------------------------------------------------------------------------
def flatten_scalars(row: Mapping, prefix: str = "", skip: Sequence[str] = ("step",)) -> dict[str, float]:
    """The numeric entries of a metrics row as {name: float}; nested dicts become 'a/b', and
    None, strings, lists and the keys in `skip` (top level) are left out."""
    out: dict[str, float] = {}
    for k, v in row.items():
        if not prefix and k in skip:
            continue
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_scalars(v, f"{name}/", skip=()))
        elif isinstance(v, bool):
            out[name] = float(v)
        elif isinstance(v, (int, float)):
            out[name] = float(v)
    return out


def mark_credited(tokens: Sequence[str], credited: Iterable[int], limit: int = MAX_SAMPLE_CHARS) -> str:
    """The response with each credited token (weight != 1) wrapped in ⟦ ⟧, cut to `limit`
    characters."""
    marked = set(credited)
    text = "".join(f"{CREDIT_OPEN}{t}{CREDIT_CLOSE}" if i in marked else t for i, t in enumerate(tokens))
    return text if len(text) <= limit else text[:limit] + " [...]"


def _sample_text(sample: Mapping) -> str:
    """A sample's response with its credited tokens marked (or its plain response)."""
    tokens = sample.get("tokens")
    if isinstance(tokens, list) and all(isinstance(t, str) for t in tokens):
        return mark_credited(tokens, [i for i in sample.get("credited", ()) if isinstance(i, int)])
    text = str(sample.get("response", ""))
    return text if len(text) <= MAX_SAMPLE_CHARS else text[:MAX_SAMPLE_CHARS] + " [...]"


def _num(x) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def _fence(text: str) -> str:
    """`text` in a markdown code block whose fence no backtick run inside can close."""
    run = longest = 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text}\n{fence}"


def samples_markdown(step: int, samples: Sequence[Mapping]) -> str:
    """The TensorBoard text of one step's samples: a header line per sample (id, reward,
    correct, advantage, credited / response tokens), then the marked response as code."""
    parts = [f"step {step}: credited tokens are marked {CREDIT_OPEN}like this{CREDIT_CLOSE}"]
    for s in samples:
        n_tok = len(s.get("tokens") or ())
        head = "  ".join(f"**{k}** {_num(s[k])}" for k in ("id", "reward", "correct", "advantage") if k in s)
        head += f"  **credited** {len(s.get('credited') or ())}/{n_tok}"
        parts.append(f"{head}\n\n{_fence(_sample_text(s))}")
    return "\n\n---\n\n".join(parts)


SAMPLE_COLUMNS = ("step", "id", "reward", "correct", "advantage", "credited", "tokens", "response")


def sample_table_rows(step: int, samples: Sequence[Mapping]) -> list[list]:
    """Rows of the W&B samples table (columns `SAMPLE_COLUMNS`)."""
    return [[step, str(s.get("id")), s.get("reward"), s.get("correct"), s.get("advantage"),
             len(s.get("credited") or ()), len(s.get("tokens") or ()), _sample_text(s)] for s in samples]


# ---------------------------------------------------------------------------------------------
# Trackers
# ---------------------------------------------------------------------------------------------
class Tracker:
    """The interface; this base class logs nothing (`--report-to none`, ranks other than 0)."""

    def log(self, step: int, scalars: Mapping) -> None:
        """Log the numeric entries of a metrics row (`flatten_scalars`) at `step`."""

    def log_samples(self, step: int, samples: Sequence[Mapping]) -> None:
        """Log samples.jsonl rows of `step` with their credited tokens marked."""

    def close(self) -> None:
        """Flush and release (idempotent)."""

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


class TensorBoardTracker(Tracker):
    """Scalars and a `samples` text summary in `<run_dir>/tb/` (flushed at every call)."""

    def __init__(self, run_dir: str | os.PathLike, config: Mapping | None = None, resume_step: int = 0):
        try:  # optional dependency: torch's writer imports the tensorboard package
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TrackingError(f"--report-to tensorboard needs the tensorboard package: {INSTALL_HINT}") from None
        self.log_dir = Path(run_dir) / "tb"
        # a resumed run drops the events an earlier attempt wrote after its checkpoint (all of
        # them for resume_step -1: a resume with no checkpoint starts over)
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=resume_step + 1 if resume_step else None)
        if config is not None and resume_step <= 0:
            self.writer.add_text("config", _fence(json.dumps(dict(config), indent=2, default=str)), 0)
            self.writer.flush()

    def log(self, step: int, scalars: Mapping) -> None:
        for k, v in flatten_scalars(scalars).items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def log_samples(self, step: int, samples: Sequence[Mapping]) -> None:
        if samples:
            self.writer.add_text("samples", samples_markdown(step, samples), step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def wandb_mode(env: Mapping[str, str] | None = None) -> str:
    """WANDB_MODE when set; else `online` when an API key is configured (WANDB_API_KEY, or a
    netrc entry for the W&B host, as `wandb login` writes), else `offline`."""
    env = os.environ if env is None else env
    if env.get("WANDB_MODE"):
        return env["WANDB_MODE"]
    if env.get("WANDB_API_KEY"):
        return "online"
    host = urlparse(env.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    try:
        has_entry = netrc.netrc(env.get("NETRC") or None).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        has_entry = False
    return "online" if has_entry else "offline"


class WandbTracker(Tracker):
    """A W&B run under `<run_dir>/wandb/` (mode: `wandb_mode()`): scalars, and a `samples`
    table per `log_samples` call. A resumed run (`resume_step` != 0) starts a new W&B run."""

    def __init__(self, run_dir: str | os.PathLike, config: Mapping | None = None, resume_step: int = 0):
        try:  # optional dependency
            import wandb
        except ImportError:
            raise TrackingError(f"--report-to wandb needs the wandb package: {INSTALL_HINT}") from None
        self._wandb = wandb
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.mode = wandb_mode()
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or "ftcli",
            name=os.environ.get("WANDB_NAME") or run_dir.resolve().name,
            dir=str(run_dir), mode=self.mode, config=dict(config or {}),
            # no stdout/stderr capture (the progress bar owns the terminal), no system sampling
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True, save_code=False),
        )

    def log(self, step: int, scalars: Mapping) -> None:
        data = flatten_scalars(scalars)
        if data:
            self.run.log(data, step=step)

    def log_samples(self, step: int, samples: Sequence[Mapping]) -> None:
        if samples:
            table = self._wandb.Table(columns=list(SAMPLE_COLUMNS), data=sample_table_rows(step, samples))
            self.run.log({"samples": table}, step=step)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


class MultiTracker(Tracker):
    """Several backends at once (each call goes to all, in order; close closes every one)."""

    def __init__(self, trackers: Sequence[Tracker]):
        self.trackers = list(trackers)

    def log(self, step: int, scalars: Mapping) -> None:
        for t in self.trackers:
            t.log(step, scalars)

    def log_samples(self, step: int, samples: Sequence[Mapping]) -> None:
        for t in self.trackers:
            t.log_samples(step, samples)

    def close(self) -> None:
        errors = []
        for t in self.trackers:
            try:
                t.close()
            except Exception as e:  # noqa: BLE001 - close the others, then re-raise the first
                errors.append(e)
        if errors:
            raise errors[0]


_CLASSES = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker}


def create_tracker(report_to: str | Iterable[str] | None, run_dir: str | os.PathLike,
                   config: Mapping | str | os.PathLike | None = None, *, rank: int = 0, resume_step: int = 0) -> Tracker:
    """The tracker of `report_to` (see `parse_report_to`) writing under `run_dir`, with the
    resolved `config` (a dict, or the path of the run's config.json, read on rank 0 only); a
    no-op `Tracker` for `none` and for every rank but 0. `resume_step`: the checkpoint step a
    resumed run continues after (TensorBoard drops the events logged after it); -1 for a resumed
    run that starts over without a checkpoint (every earlier event is dropped); 0 for a new run."""
    names = parse_report_to(report_to)
    if rank != 0 or not names:
        return Tracker()
    if config is not None and not isinstance(config, Mapping):
        config = json.loads(Path(config).read_text(encoding="utf-8"))
    made: list[Tracker] = []
    try:
        for n in names:
            made.append(_CLASSES[n](run_dir, config, resume_step=resume_step))
    except BaseException:
        MultiTracker(made).close()
        raise
    return made[0] if len(made) == 1 else MultiTracker(made)
