"""The sweep process applies every MLflow event its workers sent, even when the store is slower
than the workers: no run may stay RUNNING because its close event was still queued at the end.
An event it does not know, or cannot write, closes its run FAILED with the reason."""

from __future__ import annotations

import multiprocessing as mp
from dataclasses import dataclass
from types import SimpleNamespace

import optuna
import pytest
from mlflow.tracking import MlflowClient

from sweeps.runtime.events import MetricsLogged, RunClosed, RunOpened
from sweeps.runtime.supervisor import Supervisor
from sweeps.tracking.runbook import RunBook, tracking_uri

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
        supervisor.events.put((None, RunOpened(key, f"trial-{number}", CONFIG, {}, "a: 1\n")))
        for step in range(1, 6):
            supervisor.events.put((None, MetricsLogged(key, step, {"eval_accuracy": step / 10})))
        supervisor.events.put((None, RunClosed(key, "FINISHED", {"eval_accuracy": 0.5}, {})))
    supervisor.procs[0] = _ended_worker()

    supervisor.run()

    client = MlflowClient(tracking_uri=uri)
    children = [r for r in client.search_runs([runbook.experiment_id]) if r.info.run_id != runbook.parent_run_id]
    assert len(children) == N_TRIALS
    assert {r.info.status for r in children} == {"FINISHED"}
    assert all(len(client.get_metric_history(r.info.run_id, "eval_accuracy")) == 6 for r in children)
    assert runbook.open_runs == {}


@dataclass(frozen=True)
class TrialRenamed:
    """An event the sink has never heard of, as a renamed event class would be."""

    key: str
    metrics: dict


def _sweep_with_one_open_run(tmp_path):
    uri = tracking_uri("sqlite:///mlflow.db", cwd=tmp_path)
    runbook = RunBook(uri, "events")
    runbook.open_parent("sweep", None, params={}, tags={})
    supervisor = Supervisor(optuna.create_study(), runbook, [SimpleNamespace(worker_id=0, cuda_device=None)],
                            n_trials=1, max_retry=0, max_failure_rate=1.0)
    supervisor.events.put((None, RunOpened("events:0", "trial-0", {"lr": 0.1}, {}, "lr: 0.1\n")))
    return uri, runbook, supervisor


@pytest.mark.parametrize("bad", [TrialRenamed("events:0", {"eval_accuracy": 0.5}),
                                 MetricsLogged("events:0", 1, {"eval accuracy?!": 0.5})],
                         ids=["unknown event", "event MLflow refuses"])
def test_an_unknown_or_failing_event_closes_its_run_failed_with_the_reason(tmp_path, caplog, bad):
    uri, runbook, supervisor = _sweep_with_one_open_run(tmp_path)
    supervisor.events.put((None, bad))
    supervisor.events.put((None, RunClosed("events:0", "FINISHED", {"eval_accuracy": 0.5})))
    supervisor.procs[0] = _ended_worker()

    supervisor.run()

    client = MlflowClient(tracking_uri=uri)
    (run,) = [r for r in client.search_runs([runbook.experiment_id]) if r.info.run_id != runbook.parent_run_id]
    assert run.info.status == "FAILED"  # not FINISHED by the close that followed, not left RUNNING
    reason = run.data.tags["sweep.end_reason"]
    expected = "unknown trial event 'TrialRenamed'" if isinstance(bad, TrialRenamed) else "MetricsLogged could not be written"
    assert expected in reason
    assert any(r.levelname == "ERROR" and expected in r.getMessage() for r in caplog.records)
    assert any(expected in f for f in supervisor.outcome.failures)
    assert runbook.open_runs == {}


def test_a_renamed_event_field_fails_where_the_event_is_built():
    with pytest.raises(TypeError, match="metric"):
        MetricsLogged("events:0", 1, metric={"eval_accuracy": 0.5})
