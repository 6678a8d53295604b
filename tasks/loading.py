"""Reading benchmark files from the data root, and checking their rows.

Files are read in place (never copied into the repository) and cached per process:
JSON Lines and JSON with the standard `json` module, parquet with `pyarrow`. Every problem is
reported in one line that names the file and, where there is one, the physical line (JSON
Lines: lines are split at `\\n` only, so a `\\r` inside a line shifts nothing), the record
(JSON array) or the row (parquet):

    .../gsm8k/test.jsonl:7: field question: null, expected a non-empty string
    .../countdown/tinyzero_test/test.parquet: not a readable parquet file (Parquet magic ...)

A JSON Lines line that is not a JSON object is skipped with one warning (and listed by
`ft data check`): the CrossThinkQA file ends in a cut-off line by construction. A file that
cannot be read at all (empty, not UTF-8, not parquet) and a row whose fields are missing,
null, empty or of the wrong type raise `DataError`. Tasks check their rows with `check_field`.

A missing file in the data cache is fetched on first use (`ftcli.fetch.data`), unless
`FT_NO_DOWNLOAD=1` or the data root was given explicitly (`--data-root`, `FT_DATA`).
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftcli.config import data_cache, resolve_data_root

log = logging.getLogger("ftcli.tasks")

MAX_SHOWN = 40  # characters of a bad value quoted in an error


class DataError(ValueError):
    """A benchmark file or row that cannot be used; the message is one line naming it."""


class DataFileMissing(FileNotFoundError):
    """A benchmark file that is not under the data root (and could not be fetched)."""


@dataclass(frozen=True)
class Records:
    """The rows of one data file, where each row sits, and the lines that did not parse.

    `lines[i]` is the 1-based physical line of row i (JSON Lines), else 0; `kind` says how
    rows are located in messages (`line`, `record` for a JSON array, `row` for parquet).
    """

    path: Path
    rows: list[dict[str, Any]]
    corrupt_lines: tuple[int, ...] = field(default=())
    lines: tuple[int, ...] = field(default=())
    kind: str = "line"

    def where(self, index: int) -> str:
        """`FILE:LINE` (JSON Lines), `FILE:record N` or `FILE:row N` of row `index`."""
        if self.kind == "line" and index < len(self.lines):
            return f"{self.path}:{self.lines[index]}"
        return f"{self.path}:{self.kind} {index + 1}"


_CACHE: dict[tuple[str, float, int], Records] = {}
_LOCK = threading.Lock()


def resolve_root(root: str | Path | None = None) -> Path:
    """The data root of a task: its `data_root` option, else `$FT_DATA`, else the data cache."""
    return resolve_data_root(root)


def data_file(root: Path, relpath: str) -> Path:
    """`root / relpath`; a file missing from the data cache is fetched first when allowed.

    Raises `DataFileMissing` in one line naming the file and how to get it.
    """
    from ftcli.fetch.data import FetchError, ensure_file  # keeps `import ftcli.tasks` light

    path = root / relpath
    if path.is_file():
        return path
    in_cache = Path(root).expanduser().resolve() == data_cache().resolve()
    if in_cache:
        try:
            if ensure_file(relpath) is not None:
                return path
        except FetchError as e:
            raise DataFileMissing(str(e)) from None
        hint = "FT_NO_DOWNLOAD is set"
    else:
        hint = "the data root was set by --data-root or FT_DATA"
    raise DataFileMissing(
        f"benchmark file {path} not found ({hint}): run `ft data fetch {fetch_name(relpath)}` "
        "(add --from DIR_OR_URL for a mirror) and unset FT_DATA, or point --data-root / FT_DATA "
        "at a folder that holds it"
    )


def fetch_name(relpath: str) -> str:
    """The `ft data fetch` argument that brings `relpath` (its first task, else the path)."""
    from ftcli.fetch.data import source_for

    src = source_for(relpath)
    return src.tasks[0] if src and src.tasks else relpath


def read_records(path: Path) -> Records:
    """All rows of a `.jsonl` / `.json` / `.parquet` file (cached per path, mtime and size)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime, st.st_size)
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = _read_uncached(path)
        return _CACHE[key]


def _read_uncached(path: Path) -> Records:
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    if path.suffix == ".parquet":
        records = _read_parquet(path)
    elif path.suffix == ".json":
        records = _read_json_array(path)
    else:
        records = _read_jsonl(path)
    if not records.rows:
        raise DataError(f"{path}: no records")
    return records


def _read_parquet(path: Path) -> Records:
    import pyarrow.parquet as pq  # only parquet files need it

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # noqa: BLE001 - any arrow failure is one line naming the file
        raise DataError(f"{path}: not a readable parquet file ({_first_line(e)})") from None
    return Records(path, rows, kind="row")


def _read_json_array(path: Path) -> Records:
    text = _decode(path.read_bytes(), path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of records, got {type(data).__name__}")
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise DataError(f"{path}:record {i + 1}: not a JSON object")
    return Records(path, data, kind="record")


def _read_jsonl(path: Path) -> Records:
    """One JSON object per physical line (split at `\\n` only); warn once per corrupt line."""
    raw = path.read_bytes()
    pieces = raw.split(b"\n")
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    bad: list[int] = []
    last = len(pieces)
    for lineno, piece in enumerate(pieces, start=1):
        if not piece.strip():
            continue
        cut_off = lineno == last and not raw.endswith(b"\n")  # a file cut inside its last line
        try:
            text = piece.decode("utf-8")
        except UnicodeDecodeError as e:
            if cut_off:
                bad.append(lineno)
                log.warning("%s:%d: skipped a cut-off last line (not UTF-8)", path, lineno)
                continue
            raise DataError(
                f"{path}:{lineno}: not valid UTF-8 (byte 0x{piece[e.start]:02x} at column "
                f"{e.start + 1})"
            ) from None
        if lineno == 1 and text.startswith("\ufeff"):  # a UTF-8 byte order mark
            text = text[1:]
        try:
            row = json.loads(text)
            if not isinstance(row, dict):
                raise ValueError(f"not a JSON object but {type(row).__name__}")
        except ValueError as e:  # JSONDecodeError is a ValueError
            bad.append(lineno)
            log.warning("%s:%d: skipped a corrupt row (%s)", path, lineno, _first_line(e)[:80])
            continue
        rows.append(row)
        lines.append(lineno)
    return Records(path, rows, tuple(bad), tuple(lines), kind="line")


def _decode(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        lineno = raw.count(b"\n", 0, e.start) + 1
        raise DataError(
            f"{path}:{lineno}: not valid UTF-8 (byte 0x{raw[e.start]:02x})"
        ) from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# ---------------------------------------------------------------------------------------------
# Row checks
# ---------------------------------------------------------------------------------------------
KINDS = {
    "text": "a non-empty string",
    "int": "an integer",
    "scalar": "a string or a number",
    "int_list": "a non-empty list of integers",
    "text_list": "a non-empty list of strings",
    "id": "a string or an integer",
    "answers": "a non-empty string or a non-empty list of strings",
}


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def _fits(value: Any, kind: str) -> bool:
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if kind == "text":
        return isinstance(value, str) and bool(value.strip())
    if kind == "int":
        return is_int
    if kind == "scalar":
        return (isinstance(value, str) and bool(value.strip())) or is_int or (
            isinstance(value, float) and value == value and abs(value) != float("inf")
        )
    if kind == "int_list":
        return (
            isinstance(value, list)
            and bool(value)
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        )
    if kind == "text_list":
        return isinstance(value, list) and bool(value) and all(_fits(v, "text") for v in value)
    if kind == "answers":
        return _fits(value, "text") or _fits(value, "text_list")
    if kind == "id":
        return (isinstance(value, str) and bool(value.strip())) or is_int
    raise ValueError(f"unknown field kind {kind!r}")


def check_field(records: Records, index: int, name: str, kind: str) -> Any:
    """Field `name` of row `index`, checked against `kind` (see KINDS), or DataError as
    `FILE:LINE: field NAME: what is wrong`."""
    row = records.rows[index]
    if name not in row:
        problem = "missing"
    elif row[name] is None:
        problem = "null"
    elif _fits(row[name], kind):
        return row[name]
    elif isinstance(row[name], str) and not row[name].strip():
        problem = "empty"
    else:
        problem = f"{type(row[name]).__name__} {_shown(row[name])}"
    raise DataError(f"{records.where(index)}: field {name}: {problem}, expected {KINDS[kind]}")


def row_error(records: Records, index: int, name: str, problem: str) -> DataError:
    """A DataError for a field that has the right type but an unusable value."""
    return DataError(f"{records.where(index)}: field {name}: {problem}")


# ---------------------------------------------------------------------------------------------
# Provenance (what a run's config.json records)
# ---------------------------------------------------------------------------------------------
def describe_data(task: Any) -> dict[str, Any]:
    """Where a task's problems come from, for a run's `config.json`.

    A task with a `data_source()` method describes itself (e.g. generated Countdown: the
    generator and its seed); otherwise: the data root and, per file that exists, its path
    and sha256.
    """
    if hasattr(task, "data_source"):
        return task.data_source()
    return describe_files(getattr(task, "root", resolve_data_root()), getattr(task, "files", {}))


def describe_files(root: str | Path, files: dict[str, str]) -> dict[str, Any]:
    """`{"source": "files", "root", "files": {split: {"path", "sha256"}}}` (None: missing)."""
    from ftcli.fetch.data import sha256_file

    root = Path(root)
    out = {}
    for split, relpath in files.items():
        path = root / relpath
        out[split] = {"path": relpath, "sha256": sha256_file(path) if path.is_file() else None}
    return {"source": "files", "root": str(root), "files": out}


GENERATED_TASKS = ("countdown",)  # tasks with `source="generated"` (no files needed)


def task_data_options(
    task: str, data_root: str | Path | None = None, source: str | None = None, seed: int = 0
) -> dict[str, Any]:
    """The `get_task` options that carry a command's data settings: `data_root` when given
    (else the task resolves `$FT_DATA`, then the data cache), and `source="generated"` with
    its `seed` for a task that can generate its problems (ValueError for one that cannot).

        get_task(cfg.task, **task_data_options(cfg.task, cfg.data_root, cfg.data_source, cfg.seed))
    """
    options: dict[str, Any] = {}
    if data_root:
        options["data_root"] = data_root
    if source and source != "files":
        if source != "generated" or task not in GENERATED_TASKS:
            raise ValueError(
                f"task {task!r} has no {source!r} data source (files; generated: "
                f"{', '.join(GENERATED_TASKS)})"
            )
        options.update(source=source, seed=seed)
    return options

