"""A sweep's output holds no library message a user cannot act on: offline, importing bitsandbytes
makes the `kernels` package log `Skipping publisher trust check for 'kernels-community/...'` in every
process that imports it (the sweep, each trial's); trainer/__init__.py filters that one message."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sweep_helpers import TINY, env, run_sweep

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

NOISE = "Skipping publisher trust check"


def library_prints_it() -> bool:
    """Whether a bare `import bitsandbytes`, offline and without our logging setup, prints the message
    here. (A CPU without the kernel-backed 4-bit path, or a bitsandbytes that stops asking the hub,
    prints nothing to filter.)"""
    proc = subprocess.run([sys.executable, "-c", "import bitsandbytes"], env=env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return NOISE in proc.stdout + proc.stderr


def test_a_sweep_prints_no_publisher_check_note(tmp_path, tiny_bert_dir):
    if not library_prints_it():  # the control: the sweep's silence below must come from the filter
        pytest.skip("bitsandbytes does not ask the kernel hub on this machine: no message to filter")
    proc = run_sweep(tmp_path, *TINY, f"model.name_or_path={tiny_bert_dir}", "hydra.sweeper.n_trials=2",
                     "hydra.sweeper.n_jobs=2", "hydra.sweeper.pruner=none")
    out = proc.stdout + proc.stderr
    assert "trials: 2 complete" in out, out[-3000:]  # trials ran (and imported bitsandbytes: quant=4bit)
    assert NOISE not in out, [line for line in out.splitlines() if NOISE in line]


def test_the_filter_drops_only_that_message():
    """The kernels logger's other warnings still reach the user."""
    code = ("import logging, trainer; log = logging.getLogger('kernels._internals.hf_hub'); "
            "log.warning('Skipping publisher trust check for x because Hugging Face Hub is in offline mode.'); "
            "log.warning('kernel download failed: something a user can act on')")
    proc = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert NOISE not in proc.stderr and "something a user can act on" in proc.stderr, proc.stderr
