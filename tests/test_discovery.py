"""Hydra finds our sweeper after a regular `pip install .` and after `pip install -e .` (PEP 660
editable installs use import hooks that can hide namespace plugins from Hydra's scan: hydra #3252)."""

from __future__ import annotations

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
    import os

    found, origin = _discover(sys.executable, tmp_path, {**os.environ, "PYTHONPATH": str(site)})
    assert "LoraOptunaSweeper" in found
    assert origin.startswith(str(site))  # the installed copy, not the checkout


def test_editable_install_is_discovered(tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    _pip(python, "-e", str(REPO))
    found, origin = _discover(python, tmp_path)  # run from elsewhere: no checkout on sys.path
    assert "LoraOptunaSweeper" in found
    assert origin.startswith(str(REPO))


def test_sweep_py_shows_the_plugin():
    proc = subprocess.run([sys.executable, str(REPO / "sweep.py"), "--info", "plugins"], capture_output=True,
                          text=True, timeout=120)
    assert "LoraOptunaSweeper" in proc.stdout
