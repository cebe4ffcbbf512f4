"""Riding out a store blip, and knowing when a trial's owner is gone.

Unit tests: the database failure is simulated (an Optuna in-memory storage that starts refusing
connections); the real PostgreSQL restart and the real SIGKILL are in test_postgres_restart.py and
test_resume_after_kill.py.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import time
from types import SimpleNamespace

import optuna
import pytest
import sqlalchemy.exc
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, TEMPORARILY_UNAVAILABLE
from omegaconf import OmegaConf
from optuna.trial import TrialState

from sweeps.progress import SweepProgress
from sweeps.search.storage import RetryingStorage, StoreUnavailable, is_transient, open_storage, retry_call
from sweeps.search.study import fail_orphaned_trials, owner_attrs, process_started
from sweeps.runtime.supervisor import Supervisor
from sweeps.tracking.runbook import RunBook, tracking_uri

REFUSED = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception(
    'connection to server at "127.0.0.1", port 5432 failed: Connection refused'))


class Flaky(optuna.storages.InMemoryStorage):
    """An in-memory study whose database goes away while `down` is set (connection refused)."""

    down = False

    def get_all_trials(self, *args, **kwargs):
        if self.down:
            raise REFUSED
        return super().get_all_trials(*args, **kwargs)


def test_a_store_call_rides_out_a_short_outage_and_gives_up_after_the_budget():
    calls = []

    def read():
        calls.append(time.monotonic())
        if len(calls) < 4:
            raise REFUSED
        return "trials"

    assert retry_call(read, "read", budget_s=30) == "trials"
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    assert gaps[-1] > gaps[0]  # exponential back-off, not a hot loop

    start = time.monotonic()
    with pytest.raises(StoreUnavailable, match="store_retry_s"):
        retry_call(lambda: (_ for _ in ()).throw(REFUSED), "read", budget_s=1.5)
    assert 1.5 <= time.monotonic() - start < 5

    bug = ValueError("no such column: trials.nonexistent")  # a real error is never retried
    start = time.monotonic()
    with pytest.raises(ValueError):
        retry_call(lambda: (_ for _ in ()).throw(bug), "read", budget_s=30)
    assert time.monotonic() - start < 0.5


def test_transient_errors_are_recognised_through_the_wrappers_optuna_and_mlflow_put_around_them():
    wrapped = optuna.exceptions.StorageInternalError("An exception is raised during the commit.")
    wrapped.__cause__ = REFUSED
    assert is_transient(wrapped)
    assert is_transient(MlflowException("database down", error_code=TEMPORARILY_UNAVAILABLE))
    assert is_transient(ConnectionRefusedError(111, "Connection refused"))
    assert not is_transient(MlflowException("Run 'abc' not found", error_code=RESOURCE_DOES_NOT_EXIST))
    assert not is_transient(KeyError("study"))


def test_the_progress_bar_survives_a_database_blip():
    inner = Flaky()
    study = optuna.create_study(storage=RetryingStorage(inner, budget_s=30))
    study.enqueue_trial({})
    progress = SweepProgress(study, 1, "search")
    inner.down = True
    start = time.monotonic()
    import threading

    threading.Timer(1.5, lambda: setattr(inner, "down", False)).start()
    progress.refresh(force=True)  # blocks through the outage instead of ending the sweep
    assert time.monotonic() - start >= 1.4


def _sleeper() -> None:
    time.sleep(600)


def test_a_sweep_that_gives_up_on_its_store_stops_its_workers_first(tmp_path):
    """No worker may keep training with nobody recording it: when the store stays down past
    store_retry_s the sweep process stops its workers, then fails."""
    inner = Flaky()
    study = optuna.create_study(storage=RetryingStorage(inner, budget_s=1.0))
    runbook = RunBook(tracking_uri("sqlite:///mlflow.db", cwd=tmp_path), "giving-up")
    runbook.open_parent("sweep", None, params={}, tags={})
    runbook.open_trial("s:0", "trial-0", {}, {}, "a: 1\n")
    supervisor = Supervisor(study, runbook, [SimpleNamespace(worker_id=0, cuda_device=None)],
                            n_trials=4, max_retry=0, max_failure_rate=1.0)
    worker = mp.get_context("fork").Process(target=_sleeper)
    worker.start()
    supervisor.procs[0] = worker
    progress = SweepProgress(study, 4, "search")
    inner.down = True
    try:
        with pytest.raises(Exception):
            supervisor.run(on_progress=progress.refresh)
        worker.join(timeout=10)
        assert not worker.is_alive(), "the worker kept running after the sweep process gave up"
        status = runbook.client.get_run(runbook.parent_run_id).info.status  # parent: the session's to close
        assert status == "RUNNING"
        assert runbook.open_runs == {}  # its trial's run was closed, not left RUNNING
    finally:
        if worker.is_alive():
            worker.kill()


class BeatStore:
    """The heartbeat side of an RDB storage, failing `fail` times in a row (a database restart)."""

    def __init__(self, fail: int):
        self.fail, self.beats = fail, []

    def get_heartbeat_interval(self):
        return 1

    def record_heartbeat(self, trial_id):
        if self.fail > 0 and self.beats:
            self.fail -= 1
            raise REFUSED
        self.beats.append(time.monotonic())

    def get_trial(self, trial_id):
        return SimpleNamespace(state=TrialState.RUNNING)


def test_the_heartbeat_keeps_beating_after_a_failed_beat():
    """A heartbeat thread that died on its first error would get a live trial failed as stale
    and re-run elsewhere while it still trains."""
    from sweeps.runtime.reporting import Heartbeat

    store = BeatStore(fail=2)
    beat = Heartbeat(store, 7, 1)
    try:
        time.sleep(6)
    finally:
        beat.stop()
    assert store.fail == 0 and len(store.beats) >= 2, store.beats


def test_a_reused_pid_is_not_mistaken_for_the_dead_sweep_that_owned_a_trial(tmp_path):
    """Resume: a RUNNING trial whose sweep process is gone becomes FAIL and is queued again with
    the same params, even when its pid now belongs to another process; a live owner's is kept."""
    storage = open_storage(str(tmp_path / "j.log"))
    study = optuna.create_study(storage=storage, study_name="s")
    live = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    for key, value in owner_attrs(0, os.getpid(), process_started(os.getpid())).items():
        live.set_user_attr(key, value)
    reused = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    for key, value in owner_attrs(1, os.getpid(), process_started(os.getpid()) - 3600).items():
        reused.set_user_attr(key, value)  # same pid, started an hour earlier: another process

    assert fail_orphaned_trials(study, max_retry=1) == [reused.number]
    assert fail_orphaned_trials(study, max_retry=1) == []  # idempotent: queued once
    trials = study.get_trials()
    assert trials[live.number].state == TrialState.RUNNING
    assert trials[reused.number].state == TrialState.FAIL
    (retry,) = study.get_trials(states=(TrialState.WAITING,))
    assert retry.system_attrs["fixed_params"] == trials[reused.number].params  # the same config, queued
    assert retry.user_attrs["retry_of"] == reused.number
    assert trials[reused.number].user_attrs["host"] == socket.gethostname()


def test_store_retry_s_is_validated():
    from sweeps.preflight import check_sweeper_settings
    from sweeps.search.samplers import SweeperConfigError
    from sweeps.search.space import parse_search_space
    from sweeps.sweeper_config import LoraOptunaSweeperConf

    conf = OmegaConf.structured(LoraOptunaSweeperConf(store_retry_s=-1))
    space = parse_search_space({}, ["lora.r=4,8"])
    with pytest.raises(SweeperConfigError, match=r"hydra.sweeper.store_retry_s: must be a number of seconds >= 0"):
        check_sweeper_settings(conf, space, ["eval_accuracy"])


@pytest.mark.slow
def test_a_nan_objective_fails_the_trial_and_its_mlflow_run_alike(tmp_path, tiny_bert_dir):
    """One step at an absurd learning rate: the training loss is finite, the eval loss is NaN.
    Optuna stores such a trial as FAIL; its MLflow run must not say FINISHED."""
    from sweep_helpers import run_sweep, runs, only_study

    proc = run_sweep(tmp_path, "data.max_train_samples=16", "data.max_eval_samples=16", "train.max_steps=1",
                     "train.batch_size=8", "train.max_seq_length=32", "quant=none", f"model.name_or_path={tiny_bert_dir}",
                     "hydra.sweeper.n_jobs=1", "hydra.sweeper.n_trials=1", "search_space=none", "seed=0,1",
                     "train.learning_rate=1e30", "train.warmup_ratio=0", "hydra.sweeper.objectives=[eval_loss]",
                     "hydra.sweeper.direction=minimize", "hydra.sweeper.max_failure_rate=1", check=False)
    assert proc.returncode != 0
    trials = only_study(tmp_path).trials
    assert trials and all(t.state == TrialState.FAIL for t in trials)
    nan = [t for t in trials if t.user_attrs["fail_reason"].startswith("non-finite objective: eval_loss=nan")]
    assert len(nan) >= 2  # the rest was stopped by the abort (max_failure_rate)
    _, _, children = runs(tmp_path)
    by_number = {int(r.data.tags["optuna.trial_number"]): r for r in children}
    assert all(by_number[t.number].info.status == "FAILED" for t in nan)
    assert all("eval_loss=nan" in by_number[t.number].data.tags["error"] for t in nan)


def _open_at_once(url: str, barrier, errors) -> None:
    barrier.wait()
    try:
        open_storage(url)
    except Exception as exc:  # noqa: BLE001 - reported to the test
        errors.put(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")


def test_processes_opening_a_fresh_sqlite_store_at_once_all_get_it(tmp_path):
    """A sweep and a dashboard (or two sweeps) opening a new SQLite study database in the same
    moment both run Optuna's schema migration; the loser's duplicate version row must be taken
    for the race it is, and the store opened once the winner is done."""
    ctx = mp.get_context("spawn")
    for attempt in range(3):
        url = f"sqlite:///{tmp_path / f'race{attempt}.db'}"
        barrier, errors = ctx.Barrier(6), ctx.Queue()
        procs = [ctx.Process(target=_open_at_once, args=(url, barrier, errors)) for _ in range(6)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        found = []
        while not errors.empty():
            found.append(errors.get())
        assert not found, found
        assert all(p.exitcode == 0 for p in procs)
