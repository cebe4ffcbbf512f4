"""Modules named like commands work as commands: every `lora-sweep` subcommand's module answers
`python -m <module> --help`, `python -m sweeps.dry_run [overrides]` prints what `lora-sweep dry-run
[overrides]` prints, and every other module of sweeps/ and analysis/ (and `python -m trainer`), run
with `python -m`, says it is not a command and exits non-zero instead of exiting 0 in silence."""

from __future__ import annotations

import os
import pty
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sweep_helpers import REPO, env
from sweeps.commands import COMMANDS, ENTRY_MODULES, INTERNAL_MODULES, module_run_by_dash_m

pytestmark = pytest.mark.timeout(600)


def python_m(module: str, *args: str, cwd: Path | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd or REPO, env=env(), capture_output=True,
                          text=True, errors="replace", timeout=300, **kwargs)


def modules_of(package: str) -> list[str]:
    """Every importable module of a package, the package itself included, by dotted name."""
    root = REPO / package
    found = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        if any(not part.isidentifier() for part in parts):
            continue
        found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


@pytest.mark.parametrize("module", sorted({module for module, _ in COMMANDS.values()} | {"sweeps.cli"}))
def test_each_command_module_answers_help(module):
    proc = python_m(module, "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage:"), proc.stdout[:500]
    assert "not a command" not in proc.stderr


LIBRARY_MODULES = [m for package in ("sweeps", "analysis") for m in modules_of(package)
                   if m not in ENTRY_MODULES and m not in INTERNAL_MODULES]


def test_library_modules_are_listed():
    """The parametrized check below sees the modules it is about (a wrong path would test nothing)."""
    assert {"sweeps", "sweeps.sweeper", "sweeps.search.space", "analysis", "analysis.frames"} <= set(LIBRARY_MODULES)
    assert "sweeps.export" not in LIBRARY_MODULES and "sweeps.dry_run" not in LIBRARY_MODULES


@pytest.mark.parametrize("module", LIBRARY_MODULES)
def test_library_module_says_it_is_not_a_command(module):
    proc = python_m(module)
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-1000:], proc.stderr[-2000:])
    assert proc.stderr.startswith(f"python -m {module}: not a command"), proc.stderr[:1000]
    assert "lora-sweep <command>" in proc.stderr and "\n  dry-run " in proc.stderr  # and the commands there are
    assert proc.stdout == ""


@pytest.mark.parametrize("module", ["trainer", "trainer.recipe", "trainer.data.encoding"])
def test_trainer_says_it_is_a_library(module):
    proc = python_m(module)
    assert proc.returncode != 0
    assert "not a command" in proc.stderr and "python sweep.py -m" in proc.stderr, proc.stderr


def test_the_writer_process_refuses_a_terminal_but_serves_a_pipe():
    """sweeps.tracking.writer is started by the sweep with a pipe on its stdin; from a terminal it says
    what it is instead of waiting for input."""
    primary, secondary = pty.openpty()
    try:
        proc = python_m("sweeps.tracking.writer", stdin=secondary)
    finally:
        os.close(primary)
        os.close(secondary)
    assert proc.returncode == 2 and "not a command (the sweep's MLflow writer process" in proc.stderr, proc.stderr
    piped = python_m("sweeps.tracking.writer", input="")  # empty pipe: it starts, reads, and fails on no setup
    assert "not a command" not in piped.stderr and "EOFError" in piped.stderr, piped.stderr[-2000:]


@pytest.mark.parametrize("argv, module", [
    (["python", "-m", "sweeps.export", "--study", "analysis.x"], "sweeps.export"),
    (["python", "-W", "ignore", "-X", "dev", "-m", "sweeps.sweeper"], "sweeps.sweeper"),
    (["python", "-Im", "sweeps.ui", "--port", "1"], "sweeps.ui"),
    (["python", "-msweeps.ui"], "sweeps.ui"),
    (["python", "-Wignore", "-m", "analysis"], "analysis"),
    (["python", "--check-hash-based-pycs", "always", "-m", "sweeps"], "sweeps"),
    (["python", "-c", "import sweeps", "-m", "x"], None),
    (["python", "sweep.py", "-m", "lora.r=8"], None),
])
def test_the_module_of_a_command_line(argv, module):
    assert module_run_by_dash_m(argv) == module


TIMING = re.compile(r"\d+(\.\d+)?\s*(s|ms|seconds?)\b|\d{4}-\d\d-\d\d[ T][\d:,.]+")


@pytest.mark.slow
def test_python_m_dry_run_prints_what_lora_sweep_dry_run_prints(tmp_path):
    exe = shutil.which("lora-sweep")
    assert exe, "the console command is missing: pip install -e . installs lora-sweep"
    overrides = ["data.max_train_samples=48", "data.max_eval_samples=24"]
    module = python_m("sweeps.dry_run", *overrides, cwd=tmp_path)
    command = subprocess.run([exe, "dry-run", *overrides], cwd=tmp_path, env=env(), capture_output=True, text=True,
                             timeout=300)
    assert module.returncode == 0 and command.returncode == 0, (module.stderr[-3000:], command.stderr[-3000:])
    assert "nothing will be written" in module.stdout and "first 5 sampled configs" in module.stdout
    assert TIMING.sub("<t>", module.stdout) == TIMING.sub("<t>", command.stdout)
    assert not any(tmp_path.iterdir())  # a dry run writes nothing
