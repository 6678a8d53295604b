"""ftcli: FlowTracer reference implementation (attention-flow token credit for GRPO).

`from ftcli import get_task` is lazy: the task registry is imported on first use, and it
never imports torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["get_task", "list_tasks"]


def __getattr__(name: str) -> Any:
    """Lazy re-exports (PEP 562)."""
    if name in __all__:
        from ftcli import tasks

        return getattr(tasks, name)
    raise AttributeError(f"module 'ftcli' has no attribute {name!r}")
