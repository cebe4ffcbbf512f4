"""A sweep process killed with SIGKILL (OOM killer, kill -9, a lost node) and the same command run
again: the rerun must recognise the trials whose owner is gone, fail them, close their MLflow runs
and run them again, and finish with exactly n_trials finished trials, for the search and for the
reproduction, on the embedded journal and on PostgreSQL."""

from __future__ import annotations

import os
import signal
import uuid

import optuna
import pytest
from optuna.trial import TrialState

from sweep_helpers import TINY, run_sweep, start_sweep, wait_for

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]

# Trials of several seconds: long enough to be caught mid-flight on a loaded machine (the informed
# start-up's trials cost the same, so two workers finish theirs together), short enough for CI.
LONGER = [o for o in TINY if not o.startswith(("train.max_steps", "train.eval_every_steps"))] + [
    "train.max_steps=480", "train.eval_every_steps=80", "data.max_train_samples=96"]


def _fresh_database(url: str) -> str:
    import sqlalchemy

    name = f"lora_sweep_{uuid.uuid4().hex[:10]}"
    engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    engine.dispose()
    return url.rsplit("/", 1)[0] + "/" + name


class Stores:
    """Where the sweep under test keeps its study and runs, and how the test reads them back."""

    def __init__(self, cwd, kind: str):
        self.cwd, self.kind = cwd, kind
        self._opened = None
        if kind == "journal":
            self.storage, self.tracking = str(cwd / "optuna-journal.log"), f"sqlite:///{cwd / 'mlflow.db'}"
            self.args = []
        else:
            url = os.environ.get("LORA_SWEEP_PG_URL")
            if not url:
                pytest.skip("LORA_SWEEP_PG_URL is not set (bash .ci/postgres.sh starts a server and prints it)")
            self.storage, self.tracking = _fresh_database(url), _fresh_database(url)
            self.args = [f"hydra.sweeper.storage={self.storage}", f"mlflow.tracking_uri={self.tracking}"]

    def ready(self) -> bool:
        return self.kind != "journal" or (self.cwd / "optuna-journal.log").exists()

    def study(self, suffix: str = "") -> optuna.Study | None:
        from sweeps.search.storage import open_storage

        if self._opened is None:  # one storage for all the polling: each RDB storage holds connections
            self._opened = open_storage(self.storage)
        storage = self._opened
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)
                 if s.study_name.endswith("--reproduce") == bool(suffix)]
        return optuna.load_study(study_name=names[0], storage=storage) if names else None

    def runs(self):
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.tracking)
        exp = client.get_experiment_by_name("lora-sweep")
        return client.search_runs([exp.experiment_id], max_results=1000)


def _kill_mid_flight(stores: Stores, args: list[str], suffix: str = "") -> list[optuna.trial.FrozenTrial]:
    """Start the sweep, SIGKILL the sweep process alone once a trial has finished and another is
    training; return the trials that were RUNNING then. Its workers must stop on their own."""
    proc = start_sweep(stores.cwd, *args)
    try:
        def mid_flight():
            study = stores.ready() and stores.study(suffix)
            if not study:
                return None
            trials = study.get_trials()
            running = [t for t in trials if t.state == TrialState.RUNNING and t.user_attrs.get("mlflow_run_id")]
            finished = [t for t in trials if t.state == TrialState.COMPLETE]
            return running if running and (finished or suffix) else None

        running = wait_for(mid_flight, 400, "a finished trial and one in flight", interval=0.3)
        os.kill(proc.pid, signal.SIGKILL)  # the sweep process only, as the OOM killer would
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    workers = {int(t.user_attrs["worker_pid"]) for t in running}

    def workers_gone():
        return not any(_alive(pid) for pid in workers)
    try:
        wait_for(workers_gone, 20, "the workers of the killed sweep to stop (no orphan keeps training)")
    finally:
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    return running


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie is gone too
        return fh.read().split(")")[-1].split()[0] != "Z"


def _assert_complete_and_closed(stores: Stores, study: optuna.Study, n: int, orphans) -> None:
    trials = study.get_trials()
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == n, [(t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in trials]
    configs = [repr(sorted({**t.params, **t.user_attrs.get("overrides", {})}.items())) for t in finished]
    assert len(set(configs)) == len(configs), "a config finished twice"
    for orphan in orphans:  # failed by its worker or by the rerun, then run again with the same config
        final = study.get_trials()[orphan.number]
        if final.state == TrialState.FAIL:
            assert "sweep process died" in final.user_attrs["fail_reason"], final.user_attrs["fail_reason"]
            again = [t for t in finished if t.user_attrs.get("requeued_from") == orphan.number
                     or (suffix_key(t) and suffix_key(t) == suffix_key(final))]
            assert again and {**again[0].params, **again[0].user_attrs.get("overrides", {})} == \
                {**final.params, **final.user_attrs.get("overrides", {})}
    runs = stores.runs()
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    by_id = {r.info.run_id: r for r in runs}
    for orphan in orphans:
        final = study.get_trials()[orphan.number]
        run = by_id[orphan.user_attrs["mlflow_run_id"]]
        expected = {TrialState.FAIL: "FAILED", TrialState.COMPLETE: "FINISHED"}[final.state]
        assert run.info.status == expected  # Optuna and MLflow agree


def suffix_key(trial) -> str | None:
    return trial.user_attrs.get("replicate_key")


@pytest.mark.parametrize("kind", ["journal", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_killed_sweep_resumes_and_runs_what_is_missing(tmp_path, tiny_bert_dir, kind):
    stores = Stores(tmp_path, kind)
    args = [*LONGER, f"model.name_or_path={tiny_bert_dir}", "hydra.sweeper.n_jobs=2", "hydra.sweeper.n_trials=4",
            "hydra.sweeper.pruner=none", *stores.args]
    orphans = _kill_mid_flight(stores, args)

    run_sweep(tmp_path, *args)
    _assert_complete_and_closed(stores, stores.study(), 4, orphans)
    parent = [r for r in stores.runs() if r.data.tags.get("sweep.role") == "parent"]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"


def test_a_sweep_killed_while_reproducing_resumes_its_replicates(tmp_path, tiny_bert_dir):
    stores = Stores(tmp_path, "journal")
    args = [*LONGER, f"model.name_or_path={tiny_bert_dir}", "hydra.sweeper.n_jobs=2", "hydra.sweeper.n_trials=2",
            "hydra.sweeper.pruner=none", "hydra.sweeper.reproduce.top_k=1",
            "hydra.sweeper.reproduce.n_seeds=2", "hydra.sweeper.reproduce.seed_kinds=[seed]",
            "hydra.sweeper.reproduce.design=one_at_a_time",
            "hydra.sweeper.reproduce.determinism_check=false"]
    orphans = _kill_mid_flight(stores, args, suffix="--reproduce")

    run_sweep(tmp_path, *args)
    repro = stores.study("--reproduce")
    _assert_complete_and_closed(stores, repro, 2, orphans)
    keys = [t.user_attrs["replicate_key"] for t in repro.get_trials(states=(TrialState.COMPLETE,))]
    assert sorted(keys) == sorted(set(keys)) and len(keys) == 2
    assert len(stores.study().get_trials(states=(TrialState.COMPLETE,))) == 2  # the search was not re-run
