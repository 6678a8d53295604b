"""The package's shape: folders by command, the import graph layered (no cycles, nothing imports
upward), at most 16 top-level modules, no two module names that differ only by a suffix, and
the old import paths of moved modules kept for one release."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

import ftcli

ROOT = Path(ftcli.__file__).parent

# Lower layers first; a module may import from its own layer and the layers below it only.
# Top-level modules (flow, attention, credit, generation, rundir, io, ...) are the core.
LAYERS = [
    {"<core>"},
    {"ftcli.fetch"},
    {"ftcli.tasks", "ftcli.evals"},
    {"ftcli.evaluation", "ftcli.score"},
    {"ftcli.train"},
    {"ftcli.policy"},
    {"ftcli.experiments", "ftcli.integrations"},
    {"ftcli.commands"},
    {"ftcli.cli", "<entry>"},
]


def _modules() -> dict[str, Path]:
    """Every module of the package, ftcli.tasks and ftcli.evals (installed from the repository
    root) included."""
    out = {}
    roots = [("ftcli", ROOT)] + [(f"ftcli.{sub}", Path(importlib.import_module(f"ftcli.{sub}").__file__).parent)
                                 for sub in ("tasks", "evals")]
    for prefix, root in roots:
        for p in sorted(root.rglob("*.py")):
            parts = p.relative_to(root).with_suffix("").parts
            if prefix == "ftcli" and parts[0] in ("tasks", "evals"):
                continue
            name = ".".join((prefix, *parts))
            out[name.removesuffix(".__init__")] = p
    return out


MODULES = _modules()


def _imports(path: Path, module_level: bool) -> set[str]:
    """ftcli modules imported by a file (function-level imports too unless `module_level`)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level else list(ast.walk(tree))
    found = set()
    for n in nodes:
        if isinstance(n, ast.Import):
            found |= {a.name for a in n.names}
        elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
            found.add(n.module)
            found |= {f"{n.module}.{a.name}" for a in n.names}  # `from ftcli.x import submodule`
    return {m for m in found if m in MODULES}


def _layer(mod: str) -> int:
    if mod.endswith(".__main__"):
        key = "<entry>"
    elif mod.count(".") == 1 and MODULES[mod].name != "__init__.py" and mod != "ftcli.cli":
        key = "<core>"
    else:
        key = ".".join(mod.split(".")[:2])
    return next(i for i, names in enumerate(LAYERS) if key in names)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(node, stack):
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                found.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_nothing_imports_upward():
    bad = []
    for mod, path in MODULES.items():
        if mod == "ftcli":  # the lazy get_task re-export
            continue
        for dep in _imports(path, module_level=False):
            if dep != "ftcli" and _layer(dep) > _layer(mod):
                bad.append(f"{mod} -> {dep}")
    assert not bad, bad


def test_no_import_cycles():
    """Between packages (all imports, deferred ones included) and between modules (the imports
    that run at import time)."""
    pkg_graph: dict[str, set[str]] = {}
    mod_graph: dict[str, set[str]] = {}
    for mod, path in MODULES.items():
        if mod == "ftcli":
            continue
        pkg = ".".join(mod.split(".")[:2]) if _layer(mod) != 0 else "<core>"
        for dep in _imports(path, module_level=False):
            dpkg = ".".join(dep.split(".")[:2]) if dep != "ftcli" and _layer(dep) != 0 else "<core>"
            if dpkg != pkg:
                pkg_graph.setdefault(pkg, set()).add(dpkg)
        # a package's own __init__ runs before its submodules whatever they import: no edge
        mod_graph[mod] = {d for d in _imports(path, module_level=True)
                          if d != "ftcli" and d != mod and not mod.startswith(d + ".")}
    assert not _cycles(pkg_graph)
    assert not _cycles(mod_graph)


def test_top_level_is_small_and_names_do_not_collide():
    top = sorted(p.stem for p in ROOT.glob("*.py") if p.stem != "__init__")
    assert len(top) <= 16, top
    stems = sorted({p.stem for p in ROOT.rglob("*.py") if not p.stem.startswith("__")})
    clashes = [(a, b) for a in stems for b in stems if a != b and b.startswith(a)]
    assert not clashes, clashes


@pytest.mark.parametrize("old", sorted(ftcli.MOVED))
def test_old_import_paths_warn_and_alias(old):
    new = ftcli.MOVED[old]
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match="moved to"):
        mod = importlib.import_module(old)
    assert mod is importlib.import_module(new)


def test_old_evaluation_names():
    import ftcli.evaluation as ev
    from ftcli.evaluation import sampling

    ev.__dict__.pop("sample_task", None)
    with pytest.warns(DeprecationWarning, match="ftcli.evaluation.sampling"):
        from ftcli.evaluation import sample_task
    assert sample_task is sampling.sample_task


def test_nothing_in_the_repository_uses_an_old_path():
    repo = ROOT.parent
    old_names = {f"ftcli.evaluation.{n}" for n in ("sample_task", "grade", "accuracy")}
    files = [p for d in ("ftcli", "tasks", "evals", "tests", "bench", "scripts", "examples")
             for p in (repo / d).rglob("*.py") if p.name != Path(__file__).name]
    bad = []
    for p in files:
        for n in ast.walk(ast.parse(p.read_text())):
            names = set()
            if isinstance(n, ast.Import):
                names = {a.name for a in n.names}
            elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
                names = {n.module} | {f"{n.module}.{a.name}" for a in n.names}
            if names & (set(ftcli.MOVED) | old_names):
                bad.append(f"{p.relative_to(repo)}:{n.lineno}")
    assert not bad, bad


HEAVY = ("torch", "transformers", "deepspeed")


@pytest.mark.parametrize("command", [[], ["train"], ["eval"], ["score"], ["data"], ["ablate"], ["ablate", "intervene"], ["sft"]])
def test_help_imports_no_torch(command):
    """`ft --help` and `ft <cmd> --help` build the CLI from light modules: torch, transformers
    and deepspeed are imported by the commands that run, not for their help."""
    import subprocess

    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "ftcli.cli", *command, "--help"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "ftcli.train.config" in imported  # the CLI was built
    assert not {m for m in imported if m.split(".")[0] in HEAVY}
    # importtime reports `import` statements; sys.modules also has what importlib imported
    probe = ("import runpy, sys\n"
             f"sys.argv = ['ft', *{command!r}, '--help']\n"
             "try:\n    runpy.run_module('ftcli.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == "[]", (r.stdout[-500:], r.stderr[-2000:])


def test_rule_summaries_are_the_registry():
    """The torch-free names and summaries `--help` lists are the credit rule registry's."""
    from ftcli import credit, options

    builtin = [n for n in credit.RULES if n in options.RULE_SUMMARIES]
    assert builtin == list(options.RULE_SUMMARIES)
    assert all(credit.RULES[n].summary == options.RULE_SUMMARIES[n] for n in builtin)
    assert credit.describe_rules is options.describe_rules
