"""Benchmark files: the registry (`tasks/sources.toml`) and fetching into the data cache.

    from ftcli.fetch.data import registry, select, fetch, file_status
    fetch(select(["aime24"]))                      # upstream URLs, pinned at a commit
    fetch(select([], all_files=True), mirror="/mnt/mirror/data")    # an offline mirror
    fetch(select(["gsm8k"]), mirror="http://10.0.0.5:8000/data")    # a mirror over http

A mirror is a folder, a `file://` URL or an http(s) base URL laid out like the data root
(`aime24/test.jsonl`, `countdown/tinyzero_test/test.parquet`, ...). Each file is written to
`<file>.part` (resumed where an interrupted fetch stopped: HTTP Range, or the offset in a
local file), checked against the registry's sha256 and size, then renamed into place
(atomic), so the cache never holds a partial or unverified file. A digest mismatch deletes
the partial file and raises `DigestMismatch`, one line naming the file and both digests.
Without a network, a fetch fails as soon as the name lookup or connection fails (at most
`TIMEOUT` seconds) and the message says how to point at a mirror.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO, Any

from ftcli.config import data_cache, data_mirror, downloads_allowed

TIMEOUT = 10.0  # seconds per connect / read of an http(s) fetch
CHUNK = 1 << 16
MIRROR_HINT = (
    "without a network, point at a mirror laid out like the data root: "
    "`ft data fetch NAME --from DIR_OR_URL` or FT_DATA_MIRROR=DIR_OR_URL"
)

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10 (pyproject requires tomli there)
    import tomli as tomllib


class FetchError(RuntimeError):
    """A file that could not be fetched (one line: the file, the place, the reason)."""


class DigestMismatch(FetchError):
    """A fetched file whose sha256 (or size) is not the registry's; nothing was kept."""


@dataclass(frozen=True)
class Source:
    """One benchmark file of the registry (see tasks/sources.toml)."""

    path: str  # inside the data root
    tasks: tuple[str, ...]
    url: str  # pinned upstream raw-file URL
    sha256: str
    size: int
    licence: str
    hub: str = ""


@functools.cache
def registry() -> tuple[Source, ...]:
    """Every file of `tasks/sources.toml`, in its order."""
    text = resources.files("ftcli.tasks").joinpath("sources.toml").read_text(encoding="utf-8")
    entries = tomllib.loads(text)["file"]
    return tuple(
        Source(
            path=e["path"],
            tasks=tuple(e.get("tasks", ())),
            url=e["url"],
            sha256=e["sha256"].lower(),
            size=int(e["size"]),
            licence=e.get("licence", ""),
            hub=e.get("hub", ""),
        )
        for e in entries
    )


def source_for(relpath: str) -> Source | None:
    """The registry entry of a path inside the data root, or None."""
    return next((s for s in registry() if s.path == relpath), None)


def select(names: Iterable[str], all_files: bool = False) -> list[Source]:
    """Registry entries for task names (`aime24`, `countdown`, ...) or file paths.

    Raises ValueError (naming what is known) for a name that is neither.
    """
    names = list(names)
    if all_files:
        return list(registry())
    if not names:
        raise ValueError("name a task or a file to fetch, or pass --all")
    out: list[Source] = []
    for name in names:
        found = [s for s in registry() if name in s.tasks or s.path == name]
        if not found:
            known = sorted({t for s in registry() for t in s.tasks})
            raise ValueError(f"no benchmark files for {name!r}; known: {', '.join(known)}")
        out += [s for s in found if s not in out]
    return out


# ---------------------------------------------------------------------------------------------
# Checking
# ---------------------------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_status(root: Path, src: Source) -> str:
    """`verified` (size and sha256 match the registry), `missing` or `corrupt`."""
    path = Path(root) / src.path
    if not path.is_file():
        return "missing"
    if path.stat().st_size != src.size or sha256_file(path) != src.sha256:
        return "corrupt"
    return "verified"


# ---------------------------------------------------------------------------------------------
# Fetching
# ---------------------------------------------------------------------------------------------
def ensure_file(relpath: str) -> Path | None:
    """Fetch a registry file into the data cache on first use.

    Returns its path, or None when fetching is not allowed (`FT_NO_DOWNLOAD=1`) or the path
    is not in the registry. Uses `FT_DATA_MIRROR` when set, else the upstream URL.
    """
    src = source_for(relpath)
    if src is None or not downloads_allowed():
        return None
    fetch([src], mirror=data_mirror())
    return data_cache() / relpath


def fetch(
    sources: Iterable[Source],
    dest: Path | None = None,
    mirror: str | None = None,
    console: Any = None,
    on_done: Any = None,
) -> list[tuple[Source, str]]:
    """Fetch `sources` into `dest` (default: the data cache); `(source, status)` per file.

    Status: `present` (already there and verified: skipped) or `fetched`. `mirror` is a
    folder or base URL laid out like the data root (None: each file's upstream URL).
    `on_done(source, status)` is called after each file. Raises FetchError on the first
    file that fails; the files fetched before it stay.
    """
    dest = Path(dest) if dest is not None else data_cache()
    sources = list(sources)
    out = []
    with _progress(console, sum(s.size for s in sources)) as advance:
        for src in sources:
            status = _fetch_one(src, dest, mirror, advance)
            out.append((src, status))
            if on_done is not None:
                on_done(src, status)
    return out


def _fetch_one(src: Source, dest: Path, mirror: str | None, advance) -> str:
    target = dest / src.path
    dest.mkdir(parents=True, exist_ok=True)
    with _lock(dest):
        if file_status(dest, src) == "verified":
            advance(src.size)
            return "present"
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        origin = _location(src, mirror)
        try:
            digest, size = _download(src, origin, part, advance)
        finally:
            _remove_empty_dirs(target.parent, dest)
        if size != src.size or digest != src.sha256:
            part.unlink(missing_ok=True)
            _remove_empty_dirs(target.parent, dest)
            raise DigestMismatch(
                f"{src.path}: sha256 mismatch: expected {src.sha256}, got {digest} "
                f"({size} of {src.size} bytes, from {origin}); nothing was written to the cache"
            )
        os.replace(part, target)
        return "fetched"


def _location(src: Source, mirror: str | None) -> str:
    """Where `src` comes from: upstream URL, `BASE/path` of an http(s) mirror, or a file."""
    if not mirror:
        return src.url
    if mirror.startswith(("http://", "https://")):
        return mirror.rstrip("/") + "/" + urllib.parse.quote(src.path)
    if mirror.startswith("file://"):
        mirror = urllib.parse.unquote(urllib.parse.urlparse(mirror).path)
    return str(Path(mirror).expanduser() / src.path)


def _download(src: Source, origin: str, part: Path, advance) -> tuple[str, int]:
    """Append `origin` to `part` from where it stopped; (sha256, size) of the whole file.

    Reads at most one byte past the registry size (a longer file is a mismatch). An
    interrupted transfer keeps `part` for the next attempt and raises FetchError.
    """
    offset = part.stat().st_size if part.is_file() else 0
    if offset > src.size:
        part.unlink()
        offset = 0
    h = hashlib.sha256()
    if offset:
        with open(part, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    size = offset
    if offset < src.size:
        with _open(origin, offset) as (stream, resumed, announced):
            if offset and not resumed:  # the server ignored the range: start again
                h, size = hashlib.sha256(), 0
            else:
                advance(offset)
            start = size
            with open(part, "ab" if size else "wb") as out:
                try:
                    while size <= src.size:
                        chunk = stream.read(min(CHUNK, src.size + 1 - size))
                        if not chunk:
                            break
                        out.write(chunk)
                        h.update(chunk)
                        size += len(chunk)
                        advance(len(chunk))
                except (OSError, urllib.error.URLError, http.client.HTTPException) as e:
                    raise FetchError(
                        f"{src.path}: transfer from {origin} interrupted after {size} of "
                        f"{src.size} bytes ({_reason(e)}); run the fetch again to resume"
                    ) from None
                finally:
                    out.flush()
                    os.fsync(out.fileno())
            if announced is not None and size - start < announced and size < src.size:
                raise FetchError(  # the connection closed before the announced length
                    f"{src.path}: transfer from {origin} interrupted after {size} of "
                    f"{src.size} bytes; run the fetch again to resume"
                )
    else:
        advance(offset)
    return h.hexdigest(), size


@contextlib.contextmanager
def _open(origin: str, offset: int) -> Iterator[tuple[IO[bytes], bool, int | None]]:
    """(stream, resumed, announced length) for `origin` from byte `offset` (resumed False:
    from byte 0; announced: the http Content-Length, None for a local file)."""
    if not origin.startswith(("http://", "https://")):
        path = Path(origin)
        if not path.is_file():
            raise FetchError(f"{origin} not found in the mirror")
        with open(path, "rb") as f:
            f.seek(offset)
            yield f, True, None
        return
    req = urllib.request.Request(origin, headers={"User-Agent": "ftcli-data-fetch"})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    try:
        resp = urllib.request.urlopen(req, timeout=TIMEOUT)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # range past the end: the partial file is stale
            with _open(origin, 0) as (stream, _, announced):
                yield stream, False, announced
            return
        raise FetchError(f"cannot fetch {origin}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise FetchError(f"cannot fetch {origin}: {_reason(e)}; {MIRROR_HINT}") from None
    length = resp.headers.get("Content-Length")
    with resp:
        yield resp, bool(offset) and resp.status == 206, int(length) if length else None


def _reason(e: BaseException) -> str:
    reason = getattr(e, "reason", None) or e
    text = str(reason).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _remove_empty_dirs(folder: Path, stop: Path) -> None:
    """Remove `folder` and its parents below `stop` while they are empty."""
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:  # not empty (or gone)
            return
        folder = folder.parent


@contextlib.contextmanager
def _lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on the destination folder, so two processes never write the same
    `.part` (no lock file is left behind)."""
    try:
        import fcntl  # POSIX only; elsewhere concurrent fetches are not guarded
    except ImportError:  # pragma: no cover
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def _progress(console: Any, total: int) -> Iterator[Any]:
    """A byte-count progress bar on stderr (shown on a terminal only); yields `advance(n)`."""
    from ftcli.progress import progress_bar

    if console is None:
        from rich.console import Console

        console = Console(stderr=True)
    bar = progress_bar("fetch", console=console, disable=not sys.stderr.isatty(), transient=True)
    with bar:
        task = bar.add_task("fetch", total=total)
        yield lambda n: bar.advance(task, n)
