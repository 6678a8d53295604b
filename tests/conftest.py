"""Test settings: one torch thread (2 threads on a loaded 2-core box can be 10x slower),
offline hubs, deterministic seeds, and the benchmark files.

Benchmark files: tests never download from the internet (`FT_NO_DOWNLOAD=1`). When
`FT_DATA_MIRROR` names a mirror (a folder or http(s) URL laid out like the data root; CI sets
it), every registry file is fetched from it, sha256-checked, into a temporary data cache that
becomes `FT_DATA` for the session. Otherwise the data root is `FT_DATA` or the user's data
cache. Tests marked `needs_data` run when every registry file there is verified and are
skipped, with the reason, when not.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("FT_NO_DOWNLOAD", "1")

import shutil  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

_DATA: dict[str, str | None] = {"missing": None, "tmp": None}


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "needs_data: needs the benchmark files (fetched from FT_DATA_MIRROR, else skipped)",
    )
    _prepare_data()


def _prepare_data() -> None:
    """Fetch from FT_DATA_MIRROR into a temporary cache (FT_DATA), or find what is there."""
    from ftcli.config import data_root
    from ftcli.fetch.data import FetchError, fetch, file_status, registry

    mirror = os.environ.get("FT_DATA_MIRROR")
    if mirror and not os.environ.get("FT_DATA"):
        tmp = tempfile.mkdtemp(prefix="ft-test-data-")
        _DATA["tmp"] = tmp
        try:
            fetch(registry(), dest=Path(tmp), mirror=mirror)
        except FetchError as e:
            _DATA["missing"] = f"fetching from FT_DATA_MIRROR={mirror} failed: {e}"
            return
        os.environ["FT_DATA"] = tmp
    root = data_root()
    bad = [s.path for s in registry() if file_status(root, s) != "verified"]
    if bad:
        _DATA["missing"] = (
            f"benchmark files not verified under {root} ({len(bad)} of {len(registry())}, "
            f"e.g. {bad[0]}): set FT_DATA_MIRROR to a folder or URL laid out like the data "
            "root, or run `ft data fetch --all`"
        )


def pytest_unconfigure(config):
    if _DATA["tmp"]:
        shutil.rmtree(_DATA["tmp"], ignore_errors=True)


def pytest_runtest_setup(item):
    if item.get_closest_marker("needs_data") and _DATA["missing"]:
        pytest.skip(_DATA["missing"])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def results_md():
    """scripts/results_md.py as a module (a script, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("results_md", Path(__file__).parents[1] / "scripts" / "results_md.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
