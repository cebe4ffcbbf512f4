"""Hydra finds our sweeper after a regular `pip install .` and after `pip install -e .` (PEP 660
editable installs use import hooks that can hide namespace plugins from Hydra's scan: hydra #3252)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from sweep_helpers import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

DISCOVER = ("from hydra.core.plugins import Plugins; from hydra.plugins.sweeper import Sweeper; "
            "import hydra_plugins.lora_optuna_sweeper as m; "
            "print([p.__name__ for p in Plugins.instance().discover(Sweeper)]); print(m.__file__)")


def _pip(python: str | Path, *args: str) -> None:
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", *args], capture_output=True,
                          text=True, timeout=500)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


def _discover(python: str | Path, cwd: Path, env: dict[str, str] | None = None) -> list[str]:
    proc = subprocess.run([str(python), "-c", DISCOVER], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.splitlines()


def test_regular_install_is_discovered(tmp_path):
    site = tmp_path / "site"
    _pip(sys.executable, "--target", str(site), str(REPO))
    found, origin = _discover(sys.executable, tmp_path, {**os.environ, "PYTHONPATH": str(site)})
    assert "LoraOptunaSweeper" in found
    assert origin.startswith(str(site))  # the installed copy, not the checkout


def holds_this_project(entry: Path) -> bool:
    """An import-path entry that would put a clone of this project on the path: the checkout, a
    folder in it (tests/), or another clone (a path-based editable install of it)."""
    return (entry == REPO or REPO in entry.parents
            or ((entry / "sweep.py").is_file() and (entry / "hydra_plugins" / "lora_optuna_sweeper").is_dir()))


def venv_seeing_this_environment(env_dir: Path) -> Path:
    """A fresh virtualenv that also imports the packages of the interpreter running the tests, whatever
    that is: a virtualenv, a conda environment or the system Python. (`system_site_packages=True`
    would give it the base interpreter's packages, which hold the dependencies only when they were
    installed there, not in the user's virtualenv.) The folders of this interpreter's import path that
    the new one lacks go in a .pth file of the new environment, after its own site-packages; the
    standard library is not repeated (pip's build isolation would drop it with them), entries holding
    this project are left out, and the parent's .pth files are not run, so no other install of the
    project (an editable install's finder hook) comes along. Returns the new environment's python."""
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    probe = "import json, sys, sysconfig; print(json.dumps([sysconfig.get_path('purelib'), sys.path]))"
    purelib, own = json.loads(subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True,
                                             timeout=60).stdout)
    own_real = {os.path.realpath(p) for p in own if p}
    inherited = [p for p in dict.fromkeys(sys.path) if p and Path(p).is_dir() and os.path.realpath(p) not in own_real
                 and not holds_this_project(Path(p).resolve())]
    (Path(purelib) / "_parent_environment.pth").write_text("".join(f"{p}\n" for p in inherited))
    return python


def test_editable_install_is_discovered(tmp_path):
    python = venv_seeing_this_environment(tmp_path / "venv")
    _pip(python, "-e", str(REPO))
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # no checkout on sys.path but the install's
    found, origin = _discover(python, tmp_path, clean)  # run from elsewhere: no checkout on sys.path
    assert "LoraOptunaSweeper" in found
    assert origin.startswith(str(REPO))


def test_sweep_py_shows_the_plugin():
    proc = subprocess.run([sys.executable, str(REPO / "sweep.py"), "--info", "plugins"], capture_output=True,
                          text=True, timeout=120)
    assert "LoraOptunaSweeper" in proc.stdout
