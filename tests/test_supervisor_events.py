"""The sweep process applies every MLflow event its workers sent, even when the store is slower
than the workers: no run may stay RUNNING because its close event was still queued at the end."""

from __future__ import annotations

import multiprocessing as mp
from types import SimpleNamespace

import optuna
from mlflow.tracking import MlflowClient

from sweeps.supervisor import Supervisor
from sweeps.tracking import RunBook, tracking_uri

N_TRIALS = 12
CONFIG = {f"group{g}": {f"field{f}": f * g for f in range(10)} for g in range(8)}  # 80 params, like a real trial


def _ended_worker() -> mp.Process:
    """A worker process that has already exited normally (its events are all in the queue)."""
    proc = mp.get_context("fork").Process(target=int)
    proc.start()
    proc.join()
    return proc


def test_events_queued_behind_a_slow_store_are_all_applied_before_run_returns(tmp_path):
    uri = tracking_uri("sqlite:///mlflow.db", cwd=tmp_path)
    runbook = RunBook(uri, "drain")
    runbook.open_parent("sweep", None, params={}, tags={})
    supervisor = Supervisor(optuna.create_study(), runbook, [SimpleNamespace(worker_id=0, cuda_device=None)],
                            n_trials=N_TRIALS, max_retry=0, max_failure_rate=1.0)
    # What a worker sends over its trials: far more than the store can write in the sweep
    # process's polling window, as at the end of a sweep whose workers finish together.
    for number in range(N_TRIALS):
        key = f"drain:{number}"
        supervisor.events.put(("call", None, ("open_trial", {
            "key": key, "run_name": f"trial-{number}", "config": CONFIG, "tags": {}, "config_yaml": "a: 1\n"})))
        for step in range(1, 6):
            supervisor.events.put(("call", None, ("log_metrics", {"key": key, "step": step,
                                                                  "metrics": {"eval_accuracy": step / 10}})))
        supervisor.events.put(("call", None, ("close_trial", {"key": key, "status": "FINISHED",
                                                              "metrics": {"eval_accuracy": 0.5}, "tags": {}})))
    supervisor.procs[0] = _ended_worker()

    supervisor.run()

    client = MlflowClient(tracking_uri=uri)
    children = [r for r in client.search_runs([runbook.experiment_id]) if r.info.run_id != runbook.parent_run_id]
    assert len(children) == N_TRIALS
    assert {r.info.status for r in children} == {"FINISHED"}
    assert all(len(client.get_metric_history(r.info.run_id, "eval_accuracy")) == 6 for r in children)
    assert runbook.open_runs == {}
