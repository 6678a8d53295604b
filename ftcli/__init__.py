"""ftcli: FlowTracer reference implementation (attention-flow token credit for GRPO).

`from ftcli import get_task` is lazy: the task registry is imported on first use, and it
never imports torch.

Modules that moved keep their old import path for one release: `import ftcli.evaluate` gives
`ftcli.evaluation.benchmarks` (the same module object) with a DeprecationWarning. `ftcli.train_entry`
is `ftcli.train.__main__` (`python -m ftcli.train_entry` still runs `ft train`).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from typing import Any

__all__ = ["get_task", "list_tasks"]

# old module -> new module (old paths are removed in the release after 0.1)
MOVED = {
    "ftcli.evaluate": "ftcli.evaluation.benchmarks",
    "ftcli.suites": "ftcli.evaluation.suites",
    "ftcli.metrics": "ftcli.evaluation.metrics",
    "ftcli.scoring": "ftcli.score.pairs",
    "ftcli.render": "ftcli.score.render",
    "ftcli.datafetch": "ftcli.fetch.data",
    "ftcli.model_fetch": "ftcli.fetch.gguf",
    "ftcli.models": "ftcli.fetch.models",
    "ftcli.train.rundir": "ftcli.rundir",
    "ftcli.sft": "ftcli.policy.sft",
    "ftcli.plots": "ftcli.experiments.plots",
    "ftcli.intervention": "ftcli.experiments.blocking",
    "ftcli.tracking": "ftcli.train.tracking",
    "ftcli.modelcard": "ftcli.train.modelcard",
    "ftcli.policy.model": "ftcli.policy.build",
    "ftcli.train_entry": "ftcli.train.__main__",
}
# `ftcli.evaluation` was a module (the sampling loop) and is now the package of `ft eval`:
# its old names are served by the package's __getattr__ (ftcli/evaluation/__init__.py).


class _MovedLoader(importlib.abc.Loader):
    """Loads an old module path as the module it moved to (one module object, one state)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        warnings.warn(f"{module.__name__} moved to {self.target}; the old path is removed in the next release",
                      DeprecationWarning, stacklevel=2)
        # the import system returns what sys.modules holds under the old name after exec_module
        sys.modules[module.__name__] = importlib.import_module(self.target)

    def get_code(self, fullname: str):
        """`python -m <old path>` runs the new module's code (runpy asks the loader for it)."""
        return importlib.util.find_spec(self.target).loader.get_code(self.target)


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path=None, target=None):
        new = MOVED.get(fullname)
        if new is None:
            return None
        origin = importlib.util.find_spec(new).origin
        return importlib.machinery.ModuleSpec(fullname, _MovedLoader(new), origin=origin)


if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
    sys.meta_path.append(_MovedFinder())


def __getattr__(name: str) -> Any:
    """Lazy re-exports (PEP 562)."""
    if name in __all__:
        from ftcli import tasks

        return getattr(tasks, name)
    raise AttributeError(f"module 'ftcli' has no attribute {name!r}")
