"""`lora-sweep <command>`: every command answers --help with its own usage, and a wrong command is
refused with the list of allowed ones (the dry run itself is tested in test_dry_run.py)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from sweeps.cli import COMMANDS


def lora_sweep(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("lora-sweep")
    assert exe, "the console command is missing: pip install -e . installs lora-sweep"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=300)


def test_help_lists_every_command():
    proc = lora_sweep("--help")
    assert proc.returncode == 0
    for name in COMMANDS:
        assert f"\n  {name} " in proc.stdout, name


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_command_has_help(name):
    proc = lora_sweep(name, "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage:"), proc.stdout[:500]


def test_unknown_command_names_the_allowed_ones():
    proc = lora_sweep("train")
    assert proc.returncode == 2
    assert "unknown command 'train'" in proc.stderr and "report, reproduce, export, chat, slurm, dry-run" in proc.stderr
    assert lora_sweep().returncode == 2  # no command: the usage, and a non-zero exit
