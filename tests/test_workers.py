"""Parallel workers and faults: asynchronous scheduling, SIGKILL of a worker, Ctrl-C and resume,
diverging trials, four workers on the embedded store, two sweeps on one PostgreSQL study."""

from __future__ import annotations

import os
import signal
import uuid

import optuna
import pytest
from optuna.trial import TrialState

from sweep_helpers import TINY, interrupt, only_study, run_sweep, runs, start_sweep, wait_for

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]

# Trials long enough (a few seconds) to be caught mid-flight, short enough for CI.
LONGER = [o for o in TINY if not o.startswith(("train.max_steps", "train.eval_every_steps"))] + [
    "train.max_steps=120", "train.eval_every_steps=40", "data.max_train_samples=96"]


def _model(path) -> str:
    return f"model.name_or_path={path}"


def _no_run_left_running(cwd) -> None:
    _, parents, children = runs(cwd)
    assert [r.info.run_id for r in parents + children if r.info.status == "RUNNING"] == []


def test_two_workers_run_asynchronously(tmp_path, tiny_bert_dir):
    run_sweep(tmp_path, *TINY, _model(tiny_bert_dir), "hydra.sweeper.n_jobs=2", "hydra.sweeper.n_trials=6",
              "hydra.sweeper.pruner=none", "train.max_steps=choice(4, 40)")
    study = only_study(tmp_path)
    trials = sorted(study.trials, key=lambda t: t.datetime_start)
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    assert {t.user_attrs["worker_id"] for t in trials} == {0, 1}
    # Every trial links to its own MLflow run, short trials included (they can end before the
    # sweep process has created the run).
    _, _, children = runs(tmp_path)
    assert sorted(t.user_attrs["mlflow_run_id"] for t in trials) == sorted(r.info.run_id for r in children)
    overlaps = sum(a.datetime_start < b.datetime_complete and b.datetime_start < a.datetime_complete
                   for i, a in enumerate(trials) for b in trials[i + 1:])
    assert overlaps > 0, "trials of the two workers never ran at the same time"
    # No batch barrier: each worker starts its next trial right after its previous one, whatever
    # the other worker is doing.
    for worker in (0, 1):
        mine = [t for t in trials if t.user_attrs["worker_id"] == worker]
        for prev, nxt in zip(mine, mine[1:]):
            assert (nxt.datetime_start - prev.datetime_complete).total_seconds() < 5.0


def test_timeout_ends_the_search_on_time(tmp_path, tiny_bert_dir):
    """hydra.sweeper.timeout: no trial starts after the time budget, the running ones finish, and
    the sweep ends normally (the benchmarks compare pruning at equal wall-clock budgets with it)."""
    timeout = 20
    run_sweep(tmp_path, *LONGER, _model(tiny_bert_dir), "hydra.sweeper.n_jobs=2", "hydra.sweeper.n_trials=60",
              "hydra.sweeper.pruner=none", f"hydra.sweeper.timeout={timeout}")
    everything = only_study(tmp_path).trials
    # the informed start-up's queued trials that the clock left unstarted
    # stay queued for a resume; every trial that started finished
    trials = [t for t in everything if t.state != TrialState.WAITING]
    assert 0 < len(trials) < 60
    assert all(t.state == TrialState.COMPLETE for t in trials), [t.state for t in trials]
    assert all(t.user_attrs.get("startup") == "informed" for t in everything if t.state == TrialState.WAITING)
    starts = sorted(t.datetime_start.timestamp() for t in trials)
    assert starts[-1] <= starts[0] + timeout  # the clock starts with the search, before the first trial
    _no_run_left_running(tmp_path)


def test_sigkill_of_a_worker_mid_trial_is_failed_retried_and_closed(tmp_path, tiny_bert_dir):
    proc = start_sweep(tmp_path, *LONGER, _model(tiny_bert_dir), "hydra.sweeper.n_jobs=2",
                       "hydra.sweeper.n_trials=4", "hydra.sweeper.pruner=none", "hydra.sweeper.max_retry=1")
    try:
        def running_trial():
            if not (tmp_path / "optuna-journal.log").exists():
                return None
            study = only_study(tmp_path)
            for trial in study.get_trials(states=(TrialState.RUNNING,)):
                if trial.intermediate_values or trial.user_attrs.get("mlflow_run_id"):
                    return trial
            return None

        victim = wait_for(running_trial, 300, "a trial in flight")
        os.kill(int(victim.user_attrs["worker_pid"]), signal.SIGKILL)
        assert proc.wait(timeout=600) == 0, (tmp_path / "sweep.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    study = only_study(tmp_path)
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 4 and states.count(TrialState.FAIL) >= 1
    killed = study.trials[victim.number]
    assert killed.state == TrialState.FAIL and "died" in killed.user_attrs["fail_reason"]
    retry = [t for t in study.trials if t.user_attrs.get("retry_of") == victim.number]
    assert retry and retry[0].state == TrialState.COMPLETE and retry[0].params == killed.params
    _no_run_left_running(tmp_path)
    _, _, children = runs(tmp_path)
    (victim_run,) = [r for r in children if r.info.run_id == killed.user_attrs["mlflow_run_id"]]
    assert victim_run.info.status == "FAILED"


def test_ctrl_c_stops_cleanly_and_a_rerun_resumes(tmp_path, tiny_bert_dir):
    # trials long enough that the Ctrl-C, sent once a trial has passed its first eval, still finds
    # it in flight on a loaded machine
    args = [*LONGER, _model(tiny_bert_dir), "hydra.sweeper.n_jobs=2", "hydra.sweeper.n_trials=4",
            "hydra.sweeper.pruner=none", "train.max_steps=400"]
    proc = start_sweep(tmp_path, *args)
    try:
        wait_for(lambda: (tmp_path / "optuna-journal.log").exists() and any(
            t.intermediate_values for t in only_study(tmp_path).get_trials(states=(TrialState.RUNNING,))),
            300, "a trial in flight")
        interrupt(proc)
        assert proc.wait(timeout=180) != 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    study = only_study(tmp_path)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    # the trials in flight were checkpointed and queued to continue (the rerun resumes them)
    preempted = [t for t in study.trials if "preempted" in t.user_attrs.get("fail_reason", "")]
    waiting = study.get_trials(states=(TrialState.WAITING,))
    continuations = [t for t in waiting if "resumes_trial" in t.user_attrs]
    assert preempted and len(continuations) == len(preempted)
    # the rest of the queue is the informed start-up's trials not yet started
    assert all(t.user_attrs.get("startup") == "informed" for t in waiting if "resumes_trial" not in t.user_attrs)
    _no_run_left_running(tmp_path)
    _, parents, children = runs(tmp_path)
    assert parents[0].info.status == "KILLED" and any(r.info.status == "KILLED" for r in children)
    done_before = len(study.get_trials(states=(TrialState.COMPLETE,)))

    run_sweep(tmp_path, *args)
    study = only_study(tmp_path)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 4
    continued = [t for t in study.trials if t.user_attrs.get("resumes_trial") in {p.number for p in preempted}]
    assert len(continued) == len(preempted) and all(t.state == TrialState.COMPLETE for t in continued)
    assert len([t for t in study.trials if t.state == TrialState.COMPLETE]) - done_before == 4 - done_before
    _no_run_left_running(tmp_path)


@pytest.mark.timeout(120)
def test_a_worker_stops_asking_once_its_own_failures_pass_the_sweeps_limit(tmp_path):
    """The sweep reads no worker news while it opens the MLflow store, so a trial that fails at once
    (here: no config to compose) must not repeat unchecked until it does: the worker stops itself
    once it alone has failed more trials than max_failure_rate x n_trials allows."""
    import queue

    from sweeps.runtime.compose import ComposeSpec
    from sweeps.runtime.events import TrialEnd, TrialFinished
    from sweeps.runtime.worker import Worker, WorkerSpec
    from sweeps.search.space import parse_search_space
    from sweeps.search.storage import open_storage, storage_url

    url = storage_url(None, cwd=tmp_path)
    optuna.create_study(storage=open_storage(url), study_name="s", direction="maximize")
    spec = WorkerSpec(worker_id=0, study_name="s", storage_url=url, n_trials=4,
                      space=parse_search_space({"lora.r": "choice(4, 8)"}),
                      compose=ComposeSpec(str(tmp_path / "no-such-config-dir"), "sweep"), objectives=["eval_accuracy"],
                      trial_root=str(tmp_path), pruner="none", failure_limit=0.5 * 4)
    unread = queue.Queue()  # nobody drains it, as while the sweep opens its MLflow store
    worker = Worker(spec, events=unread)
    worker.loop()
    assert [t.state for t in worker.study.trials] == [TrialState.FAIL] * 3  # 3 > 2: the sweep's abort point
    sent = [m for _, m in list(unread.queue) if isinstance(m, TrialFinished)]
    assert [m.state for m in sent] == [TrialEnd.FAIL] * 3


def test_diverging_trials_fail_with_the_reason_and_too_many_abort(tmp_path, tiny_bert_dir):
    proc = run_sweep(tmp_path, *TINY, _model(tiny_bert_dir), "search_space=none", "seed=0,1,2,3",
                     "train.learning_rate=1e12", "lora.lora_alpha=1024", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=1",
                     "hydra.sweeper.max_failure_rate=0.5", check=False)
    assert proc.returncode != 0
    assert "max_failure_rate" in proc.stdout + proc.stderr
    study = only_study(tmp_path)
    failed = study.get_trials(states=(TrialState.FAIL,))
    diverged = [t for t in failed if "non-finite" in t.user_attrs["fail_reason"]]
    assert len(diverged) >= 3  # aborted once failures exceeded 0.5 * n_trials ...
    assert len(failed) <= 4 and not study.get_trials(states=(TrialState.COMPLETE,))  # ... and went no further
    _, parents, children = runs(tmp_path)
    assert sum(r.info.status == "FAILED" and "non-finite" in r.data.tags.get("error", "") for r in children) >= 3
    assert {r.info.status for r in children} <= {"FAILED", "KILLED"}
    assert parents[0].info.status == "FAILED"


def test_four_workers_on_the_embedded_store(tmp_path, tiny_bert_dir):
    proc = run_sweep(tmp_path, *TINY, _model(tiny_bert_dir), "hydra.sweeper.n_jobs=4", "hydra.sweeper.n_trials=8",
                     "hydra.sweeper.pruner=none")
    text = (proc.stdout + proc.stderr).lower()
    assert "locked" not in text and "operationalerror" not in text
    study = only_study(tmp_path)
    assert len(study.trials) == 8 and all(t.state == TrialState.COMPLETE for t in study.trials)
    assert len({t.user_attrs["worker_id"] for t in study.trials}) >= 2
    _, parents, children = runs(tmp_path)
    assert len(parents) == 1 and len(children) == 8 and all(r.info.status == "FINISHED" for r in children)


@pytest.fixture
def postgres_url():
    url = os.environ.get("LORA_SWEEP_PG_URL")
    if not url:
        pytest.skip("LORA_SWEEP_PG_URL is not set (bash .ci/postgres.sh starts a server and prints it)")
    assert url.startswith("postgresql://") and "\n" not in url, f"LORA_SWEEP_PG_URL is not one URL: {url!r}"
    return url


def _fresh_database(url: str) -> str:
    """A new database on the server, so the MLflow schema and study start empty."""
    import sqlalchemy

    name = f"lora_sweep_{uuid.uuid4().hex[:10]}"
    engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    engine.dispose()
    return url.rsplit("/", 1)[0] + "/" + name


@pytest.mark.postgres
def test_two_sweep_processes_share_one_postgres_study(tmp_path, tiny_bert_dir, postgres_url):
    storage, tracking = _fresh_database(postgres_url), _fresh_database(postgres_url)
    args = [*TINY, _model(tiny_bert_dir), "hydra.sweeper.n_trials=6", "hydra.sweeper.n_jobs=1",
            "train.max_steps=choice(6, 30)", f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=shared",
            f"mlflow.tracking_uri={tracking}", "hydra.sweeper.pruner=none"]
    first, second = (tmp_path / "a"), (tmp_path / "b")
    first.mkdir(), second.mkdir()
    procs = [start_sweep(first, *args), start_sweep(second, *args)]
    try:
        codes = [p.wait(timeout=900) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    logs = [(d / "sweep.log").read_text()[-3000:] for d in (first, second)]
    assert codes == [0, 0], logs
    study = optuna.load_study(study_name="shared", storage=storage)
    assert len(study.trials) == 6 and all(t.state == TrialState.COMPLETE for t in study.trials)
    assert len({t.user_attrs["supervisor_pid"] for t in study.trials}) == 2, "both machines worked on the study"

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking)
    exp = client.get_experiment_by_name("lora-sweep")
    found = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in found if r.data.tags.get("sweep.role") == "parent"]
    children = [r for r in found if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1 and len(children) == 6
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert all(r.info.status == "FINISHED" for r in children)
