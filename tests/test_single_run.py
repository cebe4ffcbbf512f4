"""`python sweep.py` without -m: its MLflow run is written by a writer process, and however the
training process ends (Ctrl-C, SIGKILL) the run is closed, never left RUNNING."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from sweep_helpers import SWEEP, TINY, env, interrupt, mlflow_client, wait_for

pytestmark = pytest.mark.timeout(600)

# far longer than the test waits (it stops the run at its first logged steps); the writer may lag
# the trainer by seconds (it creates the store meanwhile)
LONG = [o for o in TINY if not o.startswith(("train.max_steps", "train.eval_every_steps", "train.log_every_steps"))] + [
    "train.max_steps=50000", "train.eval_every_steps=25000", "train.log_every_steps=10", "data.max_train_samples=96"]


def _start(cwd, model_dir) -> subprocess.Popen:
    log = open(cwd / "single.log", "w")
    # a terminal's foreground job: SIGINT at its default even when the test itself was started in the
    # background (`cmd &` makes children ignore SIGINT, and Python then raises no KeyboardInterrupt)
    return subprocess.Popen([sys.executable, str(SWEEP), *LONG, f"model.name_or_path={model_dir}"], cwd=cwd,
                            env=env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _the_run(cwd):
    if "MLflow run " not in (cwd / "single.log").read_text():  # the writer has created the store and the run
        return None  # (opening the store before would race its schema migration)
    client = mlflow_client(cwd)
    exp = client.get_experiment_by_name("lora-sweep")
    found = client.search_runs([exp.experiment_id]) if exp else []
    return found[0] if found else None


def _training(cwd):
    run = _the_run(cwd)
    return run is not None and run.info.status == "RUNNING" and "train_loss" in run.data.metrics


@pytest.mark.parametrize("how, status", [("ctrl_c", "KILLED"), ("sigkill", "FAILED")])
def test_a_single_run_stopped_mid_training_is_closed(tmp_path, tiny_bert_dir, how, status):
    proc = _start(tmp_path, tiny_bert_dir)
    try:
        wait_for(lambda: _training(tmp_path), 300, "the single run's first step metrics")
        if how == "ctrl_c":
            interrupt(proc)                      # the whole process group, as a terminal does
        else:
            os.kill(proc.pid, signal.SIGKILL)    # the training process only: its writer must notice
        assert proc.wait(timeout=120) != 0
        run = wait_for(lambda: (r := _the_run(tmp_path)) is not None and r.info.status != "RUNNING" and r, 60,
                       "the run to be closed")
        assert run.info.status == status, (run.info.status, (tmp_path / "single.log").read_text()[-3000:])
        assert run.data.params["lora.r"] == "8" and "train_loss" in run.data.metrics
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
