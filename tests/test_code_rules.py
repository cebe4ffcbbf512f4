"""House rules read from the source: no module of ours uses a private name of another module of
ours, and Optuna's private handles (`study._storage`, `trial._trial_id`, ...) are reached in one
place only (sweeps/search/study.py), so an Optuna upgrade that moves them breaks there and nowhere else."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OURS = ("sweeps", "trainer", "analysis", "hydra_plugins")
OPTUNA_PRIVATE = {"_storage", "_trial_id", "_study_id", "_is_multi_objective"}
OPTUNA_ADAPTER = REPO / "sweeps" / "search" / "study.py"


def sources() -> list[Path]:
    files = [p for top in (*OURS, "bench") for p in (REPO / top).rglob("*.py") if "work" not in p.relative_to(REPO).parts]
    return [*files, REPO / "sweep.py"]


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def names_of_ours(tree: ast.AST, keep=lambda module, name: True) -> set[str]:
    """Names the file binds to our modules (`import sweeps.x`) or to what it imports from them
    (`from sweeps.x import y`, where `keep(module, name)`)."""
    ours: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in OURS:
            ours |= {alias.asname or alias.name for alias in node.names if keep(node.module, alias.name)}
        elif isinstance(node, ast.Import):
            ours |= {alias.asname or alias.name.split(".")[0] for alias in node.names if alias.name.split(".")[0] in OURS}
    return ours


def violations(path: Path) -> list[str]:
    """`from ours import _x`, and `name._x` where `name` came from one of our modules; Optuna's
    private handles on anything but `self` outside the adapter."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = [f"{path.relative_to(REPO)}:{node.lineno}: from {node.module} import {alias.name}"
             for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
             and node.module.split(".")[0] in OURS for alias in node.names if private(alias.name)]
    ours = names_of_ours(tree)  # names bound to our modules, or to what was imported from them
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not private(node.attr):
            continue
        base = node.value
        while isinstance(base, ast.Attribute):
            base = base.value
        if isinstance(base, ast.Name) and base.id in ours:
            found.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}")
        elif (node.attr in OPTUNA_PRIVATE and path != OPTUNA_ADAPTER
              and not (isinstance(node.value, ast.Name) and node.value.id == "self")):
            found.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)} (Optuna's; use sweeps.search.study)")
    return found


def test_no_private_names_cross_modules():
    found = [v for path in sources() for v in violations(path)]
    assert not found, "\n".join(found)


def test_the_rule_catches_what_it_forbids(tmp_path, monkeypatch):
    """The checker itself: each forbidden form in a scratch module is reported."""
    bad = tmp_path / "sweeps" / "bad.py"
    bad.parent.mkdir()
    bad.write_text("from sweeps.runtime.worker import _Heartbeat\nimport sweeps.search.study as st\nfrom sweeps import export\n"
                   "st._private()\nexport._helper\nstudy = object()\nstudy._storage\nself._storage\n")
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    found = violations(bad)
    assert sorted(found, key=lambda f: int(f.split(":")[1])) == [
        "sweeps/bad.py:1: from sweeps.runtime.worker import _Heartbeat", "sweeps/bad.py:4: st._private",
        "sweeps/bad.py:5: export._helper", "sweeps/bad.py:7: study._storage (Optuna's; use sweeps.search.study)"], found


def _code(module: str, name: str) -> bool:
    """`from module import name` binds a module, class or function (not a state object such as STOP)."""
    import importlib
    import inspect

    try:
        obj = getattr(importlib.import_module(module), name)
    except AttributeError:
        return True  # a submodule
    except ImportError:
        return True
    return inspect.ismodule(obj) or inspect.isclass(obj) or inspect.isroutine(obj)


def patches(path: Path) -> list[str]:
    """`ours.name = ...` or `setattr(ours, ...)`, where `ours` is one of our modules or a class or
    function imported from one."""
    tree = ast.parse(path.read_text(), filename=str(path))
    ours = names_of_ours(tree, keep=_code)
    found = []
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, (ast.AugAssign, ast.AnnAssign)) else []
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr" and node.args:
            targets = [ast.Attribute(value=node.args[0], attr="?")]
        for target in targets:
            if not isinstance(target, ast.Attribute):
                continue
            base = target.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in ours:
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(target)}")
    return found


def test_nothing_patches_our_modules_at_run_time():
    """The benchmarks read the runtime's own trace (LORA_SWEEP_TRACE) instead of replacing our
    functions: a patch aimed at a renamed function silently measures nothing."""
    found = [v for path in sources() for v in patches(path)]
    assert not found, "\n".join(found)


def test_the_patch_rule_catches_what_it_forbids(tmp_path, monkeypatch):
    bad = tmp_path / "bench" / "bad.py"
    bad.parent.mkdir()
    bad.write_text("import trainer.recipe as recipe\nfrom sweeps.runtime import worker\n"
                   "recipe.train_loop = print\nsetattr(worker.Worker, 'run_one', print)\n"
                   "import json\njson.dumps = print\n")
    monkeypatch.setattr(__import__(__name__), "REPO", tmp_path)
    assert patches(bad) == ["bench/bad.py:3: recipe.train_loop", "bench/bad.py:4: worker.Worker.?"]
