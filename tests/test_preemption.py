"""Preemption end to end: SIGTERM (what SLURM and spot instances send) reaches a sweep mid-trial;
the worker checkpoints at the next step and the trial is continued from there, by the rerun of
the same command (the whole job was stopped) or at once by a replacement worker (only the worker
was stopped). The continued trial equals an uninterrupted run of the same config: adapter hash,
final metrics and every intermediate value; Optuna has one finished trial for the config (the
preempted attempt FAIL, marked and linked), MLflow one run, never left RUNNING."""

from __future__ import annotations

import os
import signal

import pytest
from optuna.trial import TrialState

from sweep_helpers import TINY, only_study, run_sweep, runs, start_sweep, wait_for

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]

LONGER = [o for o in TINY if not o.startswith(("train.max_steps", "train.eval_every_steps"))] + [
    "train.max_steps=300", "train.eval_every_steps=30", "data.max_train_samples=96", "lora.lora_dropout=0.1",
    "hydra.sweeper.n_trials=1", "hydra.sweeper.n_jobs=1", "hydra.sweeper.pruner=none"]


def _training(cwd):
    """The running trial once it has reported its first eval (mid-trial: 10 evals in all)."""
    if not (cwd / "optuna-journal.log").exists():
        return None
    running = [t for t in only_study(cwd).get_trials() if t.state == TrialState.RUNNING and t.intermediate_values]
    return running[0] if running else None


def _assert_same_as_uninterrupted(cwd, reference) -> None:
    trials = only_study(cwd).get_trials()
    preempted, done = trials[0], trials[-1]
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE], [(t.number, t.state) for t in trials]
    step = preempted.user_attrs["preempted_at_step"]
    assert 30 <= step < 300, step
    assert done.user_attrs["resumes_trial"] == preempted.number and done.user_attrs["resumed_from_step"] == step
    assert done.params == preempted.params == reference.params
    assert done.user_attrs["adapter_sha256"] == reference.user_attrs["adapter_sha256"]
    assert done.user_attrs["metrics"] == reference.user_attrs["metrics"]
    assert done.intermediate_values == reference.intermediate_values
    assert done.value == reference.value
    _client, _parents, children = runs(cwd)
    assert len(children) == 1, [c.info.run_name for c in children]
    run = children[0]
    assert run.info.status == "FINISHED" and run.info.run_id == done.user_attrs["mlflow_run_id"] \
        == preempted.user_attrs["mlflow_run_id"]
    assert run.data.tags["sweep.preempted"] == "continued" and run.data.tags["sweep.preempted_at_step"] == str(step)
    assert run.data.metrics["eval_accuracy"] == reference.user_attrs["metrics"]["eval_accuracy"]
    assert not list((cwd).rglob("trainer_state.pt")), "the continued trial's checkpoint is removed"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_bert_dir):
    cwd = tmp_path_factory.mktemp("uninterrupted")
    run_sweep(cwd, *LONGER, f"model.name_or_path={tiny_bert_dir}")
    (trial,) = only_study(cwd).get_trials()
    assert trial.state == TrialState.COMPLETE
    return trial


def test_a_preempted_sweep_continues_its_trial_bitwise_on_rerun(tmp_path, tiny_bert_dir, reference):
    args = [*LONGER, f"model.name_or_path={tiny_bert_dir}"]
    proc = start_sweep(tmp_path, *args)
    try:
        wait_for(lambda: _training(tmp_path), 300, "the trial's first eval", interval=0.2)
        os.killpg(proc.pid, signal.SIGTERM)  # as SLURM does: every process of the job
        assert proc.wait(timeout=120) != 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    log = (tmp_path / "sweep.log").read_text()
    assert "Rerun the same command to resume" in log, log[-3000:]
    trials = only_study(tmp_path).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    _client, _parents, children = runs(tmp_path)
    assert [c.info.status for c in children] == ["KILLED"]

    run_sweep(tmp_path, *args)
    _assert_same_as_uninterrupted(tmp_path, reference)


def test_a_worker_stopped_alone_is_continued_by_a_replacement(tmp_path, tiny_bert_dir, reference):
    proc = start_sweep(tmp_path, *LONGER, f"model.name_or_path={tiny_bert_dir}")
    try:
        trial = wait_for(lambda: _training(tmp_path), 300, "the trial's first eval", interval=0.2)
        os.kill(int(trial.user_attrs["worker_pid"]), signal.SIGTERM)
        assert proc.wait(timeout=300) == 0, (tmp_path / "sweep.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    _assert_same_as_uninterrupted(tmp_path, reference)
