"""Benchmark files: the registry, `ft data fetch` from a mirror (folder or loopback http),
digest checks, resume, the data-root order and fetching on first use. Loopback only."""

import hashlib
import http.server
import json
import os
import threading
import time
from pathlib import Path

import pytest
from ftcli.tasks.loading import DataFileMissing
from typer.testing import CliRunner

from ftcli import get_task, list_tasks
from ftcli.cli import app
from ftcli.config import data_cache, resolve_data_root
from ftcli.fetch.data import (
    DigestMismatch,
    FetchError,
    Source,
    fetch,
    file_status,
    registry,
    select,
)

BUILTIN = [
    "math", "math500", "aime24", "aime25", "amc23", "olympiadbench", "minerva", "gsm8k",
    "countdown", "crossthinkqa",
]


# ---------------------------------------------------------------------------------------------
# A small mirror: three files, with their registry entries
# ---------------------------------------------------------------------------------------------
def _make_mirror(folder: Path) -> list[Source]:
    files = {
        "aime24/test.jsonl": b"".join(
            json.dumps({"id": i, "problem": f"What is {i}+1?", "answer": str(i + 1)}).encode()
            + b"\n"
            for i in range(3)
        ),
        "gsm8k/test.jsonl": b'{"question": "2+2?", "answer": "2+2=4\\n#### 4"}\n',
        "big/blob.bin": bytes(range(256)) * 800,  # 204,800 bytes: several chunks
    }
    out = []
    for rel, data in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        out.append(
            Source(rel, (rel.split("/")[0],), f"https://upstream.invalid/{rel}",
                   hashlib.sha256(data).hexdigest(), len(data), "test")
        )
    return out


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves `server.root` with Range support; `server.cut` = {path: n} sends only n bytes
    of that file once (advertising the full length), then closes the connection."""

    def do_GET(self):  # noqa: N802 - http.server's name
        srv = self.server
        rel = self.path.lstrip("/")
        srv.requests.append((rel, self.headers.get("Range")))
        path = Path(srv.root) / rel
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = srv.cut.pop(rel, None)
        if cut is not None:
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture
def http_mirror(tmp_path):
    """(base URL, mirror folder, sources, server) of a mirror on 127.0.0.1, in a thread."""
    folder = tmp_path / "mirror"
    sources = _make_mirror(folder)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.root, server.cut, server.requests = str(folder), {}, []
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", folder, sources, server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _cache_files(dest: Path) -> list[str]:
    return sorted(str(p.relative_to(dest)) for p in dest.rglob("*")) if dest.exists() else []


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------
def test_registry_covers_every_file_a_builtin_task_reads():
    paths = {s.path for s in registry()}
    for name in BUILTIN:
        task = get_task(name)
        assert set(task.files.values()) <= paths, name
        for rel in task.files.values():
            assert name in next(s for s in registry() if s.path == rel).tasks
    for s in registry():
        assert len(s.sha256) == 64 and int(s.sha256, 16) >= 0 and s.size > 0 and s.licence
        # pinned: a raw file at a 40-hex commit, never a branch
        parts = s.url.split("/")
        assert s.url.startswith("https://raw.githubusercontent.com/") and len(parts[5]) == 40
        int(parts[5], 16)
    assert set(list_tasks()[: len(BUILTIN)]) == {t for s in registry() for t in s.tasks}


def test_select_by_task_or_path_and_unknown_names():
    assert [s.path for s in select(["gsm8k"])] == ["gsm8k/train.jsonl", "gsm8k/test.jsonl"]
    assert [s.path for s in select(["aime24/test.jsonl"])] == ["aime24/test.jsonl"]
    assert len(select([], all_files=True)) == len(registry())
    with pytest.raises(ValueError, match="no benchmark files for 'nope'; known: aime24"):
        select(["nope"])
    with pytest.raises(ValueError, match="--all"):
        select([])


# ---------------------------------------------------------------------------------------------
# Fetching over http
# ---------------------------------------------------------------------------------------------
def test_http_fetch_verifies_then_skips_verified_files(http_mirror, tmp_path):
    base, _, sources, server = http_mirror
    dest = tmp_path / "cache"
    statuses = [st for _, st in fetch(sources, dest=dest, mirror=base)]
    assert statuses == ["fetched"] * 3
    for s in sources:
        assert file_status(dest, s) == "verified"
    assert _cache_files(dest) == ["aime24", "aime24/test.jsonl", "big", "big/blob.bin",
                                  "gsm8k", "gsm8k/test.jsonl"]
    n = len(server.requests)
    assert [st for _, st in fetch(sources, dest=dest, mirror=base)] == ["present"] * 3
    assert len(server.requests) == n  # nothing requested again


def test_corrupted_file_in_mirror_is_rejected_and_nothing_enters_the_cache(http_mirror, tmp_path):
    base, folder, sources, _ = http_mirror
    blob = folder / "aime24" / "test.jsonl"
    data = bytearray(blob.read_bytes())
    data[10] ^= 1  # same size, one bit flipped
    blob.write_bytes(bytes(data))
    dest = tmp_path / "cache"
    with pytest.raises(DigestMismatch) as e:
        fetch(sources[:1], dest=dest, mirror=base)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("aime24/test.jsonl: sha256 mismatch")
    assert sources[0].sha256 in msg and hashlib.sha256(bytes(data)).hexdigest() in msg
    assert _cache_files(dest) == []


def test_longer_file_in_mirror_is_rejected(http_mirror, tmp_path):
    base, folder, sources, _ = http_mirror
    (folder / "gsm8k" / "test.jsonl").write_bytes(b"x" * 10_000)
    dest = tmp_path / "cache"
    with pytest.raises(DigestMismatch, match="gsm8k/test.jsonl: sha256 mismatch"):
        fetch([sources[1]], dest=dest, mirror=base)
    assert _cache_files(dest) == []


def test_interrupted_download_resumes_with_a_range_request(http_mirror, tmp_path):
    base, _, sources, server = http_mirror
    blob = sources[2]
    server.cut[blob.path] = 70_000  # the first transfer stops after 70,000 bytes
    dest = tmp_path / "cache"
    with pytest.raises(FetchError, match="interrupted after 70000 of 204800 bytes") as e:
        fetch([blob], dest=dest, mirror=base)
    assert "resume" in str(e.value) and "\n" not in str(e.value)
    part = dest / "big" / "blob.bin.part"
    assert part.stat().st_size == 70_000 and not (dest / blob.path).exists()
    assert [st for _, st in fetch([blob], dest=dest, mirror=base)] == ["fetched"]
    assert server.requests[-1] == (blob.path, "bytes=70000-")
    assert file_status(dest, blob) == "verified" and not part.exists()


def test_stale_partial_file_that_does_not_match_is_discarded(http_mirror, tmp_path):
    base, _, sources, _ = http_mirror
    dest = tmp_path / "cache"
    part = dest / "big" / "blob.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"garbage" * 100)  # not a prefix of the file
    with pytest.raises(DigestMismatch):
        fetch([sources[2]], dest=dest, mirror=base)
    assert _cache_files(dest) == []
    assert [st for _, st in fetch([sources[2]], dest=dest, mirror=base)] == ["fetched"]


def test_without_a_network_the_fetch_fails_fast_and_names_a_mirror(tmp_path):
    import socket

    with socket.socket() as s:  # a loopback port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = Source("aime24/test.jsonl", ("aime24",), f"http://127.0.0.1:{port}/x.jsonl", "0" * 64,
                 10, "test")
    t0 = time.monotonic()
    with pytest.raises(FetchError) as e:
        fetch([src], dest=tmp_path / "cache")
    assert time.monotonic() - t0 < 10
    assert "FT_DATA_MIRROR" in str(e.value) and "--from" in str(e.value)
    assert _cache_files(tmp_path / "cache") == []


def test_http_404_is_one_line(http_mirror, tmp_path):
    base, _, sources, _ = http_mirror
    gone = Source("nothere/file.jsonl", ("x",), "", "0" * 64, 5, "test")
    with pytest.raises(FetchError, match=r"HTTP 404"):
        fetch([gone], dest=tmp_path / "cache", mirror=base)


# ---------------------------------------------------------------------------------------------
# Folder mirrors and the command
# ---------------------------------------------------------------------------------------------
def test_folder_mirror_and_file_url(tmp_path):
    sources = _make_mirror(tmp_path / "mirror")
    dest = tmp_path / "cache"
    fetch(sources[:2], dest=dest, mirror=str(tmp_path / "mirror"))
    fetch(sources[2:], dest=dest, mirror=(tmp_path / "mirror").as_uri())
    assert all(file_status(dest, s) == "verified" for s in sources)
    with pytest.raises(FetchError, match="not found in the mirror"):
        fetch(sources[:1], dest=tmp_path / "c2", mirror=str(tmp_path / "nowhere"))


def _real_mirror(tmp_path, names=("aime24",)):
    """A folder mirror holding byte-exact copies of real registry files (needs the data)."""
    root = resolve_data_root()
    mirror = tmp_path / "mirror"
    for s in select(names):
        (mirror / s.path).parent.mkdir(parents=True, exist_ok=True)
        (mirror / s.path).write_bytes((root / s.path).read_bytes())
    return mirror


@pytest.mark.needs_data
def test_ft_data_fetch_then_check(tmp_path, monkeypatch):
    mirror = _real_mirror(tmp_path, ["aime24", "gsm8k"])
    monkeypatch.setenv("FT_CACHE", str(tmp_path / "ftcache"))
    monkeypatch.delenv("FT_DATA", raising=False)
    runner = CliRunner()
    res = runner.invoke(app, ["data", "fetch", "aime24", "gsm8k", "--from", str(mirror)])
    assert res.exit_code == 0, res.output
    assert "fetched  aime24/test.jsonl" in res.output and "3 file(s) verified" in res.output
    res = runner.invoke(app, ["data", "fetch", "aime24", "--from", str(mirror)])
    assert "present  aime24/test.jsonl" in res.output
    res = runner.invoke(app, ["data", "check"])
    assert res.exit_code == 1  # the other files are missing
    assert "verified  aime24/test.jsonl" in res.output
    assert "missing   math500/test.jsonl  (ft data fetch math500)" in res.output
    assert "aime24/test.jsonl (30 / 30) ok" in res.output
    assert "gsm8k/test.jsonl (1319 / 1319) ok" in res.output


@pytest.mark.needs_data
def test_ft_data_check_says_corrupt(tmp_path):
    mirror = _real_mirror(tmp_path)
    path = mirror / "aime24" / "test.jsonl"
    path.write_bytes(path.read_bytes() + b"\n")  # rows unchanged, bytes not
    res = CliRunner().invoke(app, ["data", "check", "--data-root", str(mirror)])
    assert res.exit_code == 1
    assert "corrupt   aime24/test.jsonl  (size or sha256 differs" in res.output


def test_ft_data_fetch_rejects_corrupt_mirror_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("FT_CACHE", str(tmp_path / "ftcache"))
    mirror = tmp_path / "mirror" / "aime24"
    mirror.mkdir(parents=True)
    (mirror / "test.jsonl").write_text('{"id": 1, "problem": "p", "answer": "1"}\n')
    res = CliRunner().invoke(app, ["data", "fetch", "aime24", "--from", str(tmp_path / "mirror")])
    assert res.exit_code == 1
    err = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(err) == 1 and "aime24/test.jsonl: sha256 mismatch: expected af2b8bd2" in err[0]
    assert _cache_files(tmp_path / "ftcache" / "data") == []


# ---------------------------------------------------------------------------------------------
# Data root order, fetching on first use
# ---------------------------------------------------------------------------------------------
def test_data_root_order(tmp_path, monkeypatch):
    monkeypatch.setenv("FT_CACHE", str(tmp_path / "c"))
    monkeypatch.delenv("FT_DATA", raising=False)
    assert resolve_data_root() == data_cache() == tmp_path / "c" / "data"
    monkeypatch.setenv("FT_DATA", str(tmp_path / "env"))
    assert resolve_data_root() == tmp_path / "env"
    assert resolve_data_root(tmp_path / "opt") == tmp_path / "opt"
    assert get_task("aime24").root == tmp_path / "env"
    assert get_task("aime24", data_root=tmp_path / "opt").root == tmp_path / "opt"


def test_product_code_never_names_the_shared_folder():
    repo = Path(__file__).resolve().parent.parent
    for folder in ("ftcli", "tasks", "evals"):
        for path in (repo / folder).rglob("*.py"):
            assert "shared/data" not in path.read_text(encoding="utf-8"), path


def test_missing_file_fetched_on_first_use_from_the_mirror(tmp_path, monkeypatch):
    sources = _make_mirror(tmp_path / "mirror")
    monkeypatch.setenv("FT_CACHE", str(tmp_path / "c"))
    monkeypatch.delenv("FT_DATA", raising=False)
    monkeypatch.setenv("FT_DATA_MIRROR", str(tmp_path / "mirror"))
    monkeypatch.setattr("ftcli.fetch.data.registry", lambda: tuple(sources))
    monkeypatch.setenv("FT_NO_DOWNLOAD", "1")
    with pytest.raises(DataFileMissing, match="FT_NO_DOWNLOAD is set.*ft data fetch aime24"):
        get_task("aime24").load("test")
    monkeypatch.setenv("FT_NO_DOWNLOAD", "0")
    samples = get_task("aime24").load("test")
    assert [s["answer"] for s in samples] == ["1", "2", "3"]
    assert file_status(tmp_path / "c" / "data", sources[0]) == "verified"


def test_first_use_without_network_is_one_line_naming_the_mirror(tmp_path, monkeypatch):
    monkeypatch.setenv("FT_CACHE", str(tmp_path / "c"))
    monkeypatch.delenv("FT_DATA", raising=False)
    monkeypatch.delenv("FT_DATA_MIRROR", raising=False)
    monkeypatch.setenv("FT_NO_DOWNLOAD", "0")
    src = Source("aime24/test.jsonl", ("aime24",), "http://127.0.0.1:9/aime24.jsonl", "0" * 64,
                 10, "test")
    monkeypatch.setattr("ftcli.fetch.data.registry", lambda: (src,))
    res = CliRunner().invoke(app, ["data", "show", "aime24"])
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: cannot fetch http://127.0.0.1:9/")
    assert "FT_DATA_MIRROR" in lines[0]


def test_explicit_data_root_is_never_written(tmp_path, monkeypatch):
    monkeypatch.setenv("FT_NO_DOWNLOAD", "0")
    with pytest.raises(DataFileMissing, match="--data-root or FT_DATA.*ft data fetch aime24"):
        get_task("aime24", data_root=tmp_path).load("test")
    assert os.listdir(tmp_path) == []
