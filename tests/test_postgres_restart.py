"""A database blip in the middle of a real 2-worker sweep on PostgreSQL, and a worker whose trial is
taken away by another process.

The restart test runs its own PostgreSQL server (the binaries `.ci/postgres.sh` installed, a
throwaway data directory, a free port): stopping the shared server would break whatever else is
using it at the time (other test sessions on a shared machine), and a private one is always
started again or removed at the end, whatever happens in the test.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from sweep_helpers import TINY, start_sweep, wait_for

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]

LONGER = [o for o in TINY if not o.startswith(("train.max_steps", "train.eval_every_steps"))] + [
    "train.max_steps=120", "train.eval_every_steps=40", "data.max_train_samples=96"]


class PrivatePostgres:
    """A PostgreSQL server of our own: initdb into a temp dir, pg_ctl start/stop/restart."""

    def __init__(self):
        versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
        pg_ctl = versions[-1] if versions else shutil.which("pg_ctl")
        if not pg_ctl:
            pytest.skip("no pg_ctl found (bash .ci/postgres.sh installs PostgreSQL)")
        self.bin = Path(pg_ctl).parent
        self.as_postgres = os.geteuid() == 0  # initdb refuses root: run the server as postgres
        if self.as_postgres:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root without a postgres user to own the test server")
        self.dir = Path(tempfile.mkdtemp(prefix="lora-sweep-pg-"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        if self.as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run("initdb", "-D", f"{self.dir}/data", "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bin / tool), *args]
        if self.as_postgres:
            cmd = ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(f"'{a}'" for a in cmd)]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120, stdin=subprocess.DEVNULL)

    def pg_ctl(self, action: str) -> None:
        self._run("pg_ctl", "-D", f"{self.dir}/data", "-l", f"{self.dir}/log", "-w", "-m", "fast", "-o",
                  f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1", action)

    def database(self, name: str) -> str:
        import sqlalchemy

        engine = sqlalchemy.create_engine(self.url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
        engine.dispose()
        return self.url.rsplit("/", 1)[0] + "/" + name

    def remove(self) -> None:
        try:
            self.pg_ctl("stop")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_postgres():
    if not os.environ.get("LORA_SWEEP_PG_URL"):
        pytest.skip("LORA_SWEEP_PG_URL is not set (bash .ci/postgres.sh installs and starts PostgreSQL)")
    server = PrivatePostgres()
    try:
        server.pg_ctl("start")
        yield server
    finally:
        server.remove()


def _sweep_through(cwd: Path, args: list[str], outage) -> str:
    """Start a sweep, run `outage(proc)` beside it, wait for the sweep: its log, once it exited 0
    (it is killed, never left running, whatever fails)."""
    proc = start_sweep(cwd, *args)
    try:
        outage(proc)
        code = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    log = (cwd / "sweep.log").read_text()
    assert code == 0, log[-4000:]
    return log


@pytest.mark.postgres
def test_a_two_worker_sweep_survives_a_postgres_restart(tmp_path, tiny_bert_dir, private_postgres):
    """Optuna study and MLflow runs both on the server; it goes down for 5 s while both workers
    train. The sweep rides it out: n_trials finished, nothing failed, no config run twice,
    no MLflow run left RUNNING."""
    storage, tracking = private_postgres.database("optuna"), private_postgres.database("mlflow")
    args = [*LONGER, f"model.name_or_path={tiny_bert_dir}", "hydra.sweeper.n_jobs=2", "hydra.sweeper.n_trials=4",
            "hydra.sweeper.pruner=none", f"hydra.sweeper.storage={storage}", f"mlflow.tracking_uri={tracking}",
            "hydra.sweeper.study_name=blip"]
    def both_training():
        try:
            trials = optuna.load_study(study_name="blip", storage=storage).get_trials()
        except Exception:  # noqa: BLE001 - not created yet
            return False
        return sum(t.state == TrialState.RUNNING and bool(t.intermediate_values) for t in trials) >= 1

    def outage(proc):  # noqa: ARG001
        wait_for(both_training, 400, "a trial in flight")
        private_postgres.pg_ctl("stop")
        time.sleep(5)
        private_postgres.pg_ctl("start")

    log = _sweep_through(tmp_path, args, outage)
    trials = optuna.load_study(study_name="blip", storage=storage).get_trials()
    finished = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(finished) == 4, [(t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in trials]
    failed = [(t.number, t.user_attrs.get("fail_reason")) for t in trials if t.state == TrialState.FAIL]
    assert not failed, f"the blip failed a trial: {failed}\n{log[-3000:]}"
    configs = [repr(sorted(t.params.items())) for t in finished]
    assert len(set(configs)) == 4, "a config ran twice"

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking)
    runs = client.search_runs([client.get_experiment_by_name("lora-sweep").experiment_id], max_results=100)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert [r.info.run_name for r in runs if r.info.status != "FINISHED"] == []
    assert sorted(r.info.run_id for r in children) == sorted(t.user_attrs["mlflow_run_id"] for t in finished)
    assert "retrying" in log  # it did see the outage


@pytest.mark.postgres
def test_a_sweep_started_while_the_database_is_down_waits_for_it(tmp_path, tiny_bert_dir, private_postgres):
    """Both stores are opened during the outage (the server comes back only once the sweep has said it is
    retrying): opening rides out the blip as every later call does, and the sweep finishes normally."""
    storage, tracking = private_postgres.database("optuna"), private_postgres.database("mlflow")
    private_postgres.pg_ctl("stop")
    args = [*TINY, f"model.name_or_path={tiny_bert_dir}", "hydra.sweeper.n_jobs=1", "hydra.sweeper.n_trials=2",
            f"hydra.sweeper.storage={storage}", f"mlflow.tracking_uri={tracking}", "hydra.sweeper.study_name=down"]
    def comes_back(proc):  # a sweep that fails at once shows its log instead of a timeout
        wait_for(lambda: "retrying" in (tmp_path / "sweep.log").read_text() or proc.poll() is not None, 300,
                 "the sweep retrying its store")
        private_postgres.pg_ctl("start")

    log = _sweep_through(tmp_path, args, comes_back)
    assert "opening the Optuna storage failed" in log or "opening the MLflow store failed" in log, log[-3000:]
    trials = optuna.load_study(study_name="down", storage=storage).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking)
    runs = client.search_runs([client.get_experiment_by_name("lora-sweep").experiment_id], max_results=100)
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}


def test_a_worker_whose_trial_was_taken_away_stops_it_and_records_nothing_twice(tmp_path, tiny_bert_dir):
    """RDB storage with heartbeats: another machine fails a trial as stale (a long stall) and
    re-queues it. Its worker must stop training it within seconds, tell Optuna nothing (the
    trial stays the FAIL the other process wrote) and close its MLflow run once, FAILED."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    args = [*LONGER, f"model.name_or_path={tiny_bert_dir}", "hydra.sweeper.n_jobs=1", "hydra.sweeper.n_trials=2",
            "hydra.sweeper.pruner=none", f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=taken",
            "hydra.sweeper.heartbeat_interval=1", "train.max_steps=400", "train.eval_every_steps=20"]
    proc = start_sweep(tmp_path, *args)
    try:
        def in_flight():
            if not (tmp_path / "optuna.db").exists():
                return None
            import sqlalchemy

            try:
                study = optuna.load_study(study_name="taken", storage=storage)
            except (KeyError, sqlalchemy.exc.SQLAlchemyError):  # the sweep is still creating the schema
                return None
            running = [t for t in study.get_trials() if t.state == TrialState.RUNNING and t.intermediate_values]
            return (study, running[0]) if running else None
        study, victim = wait_for(in_flight, 400, "a trial in flight")
        # What fail_stale_trials + RetryHeartbeatStaleTrialCallback do on the other machine.
        optuna.trial.Trial(study, victim._trial_id).set_user_attr("fail_reason", "stale: no heartbeat")
        study.tell(victim.number, state=TrialState.FAIL)
        study.enqueue_trial(victim.params, user_attrs={"retry_of": victim.number})
        taken_at = time.time()
        code = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    log = (tmp_path / "sweep.log").read_text()
    assert code == 0, log[-4000:]
    trials = optuna.load_study(study_name="taken", storage=storage).get_trials()
    taken = trials[victim.number]
    assert taken.state == TrialState.FAIL and taken.user_attrs["fail_reason"] == "stale: no heartbeat"
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == 2

    from sweep_helpers import runs

    client, _, children = runs(tmp_path)
    (run,) = [r for r in children if r.data.tags.get("optuna.trial_number") == str(victim.number)]
    assert run.info.status == "FAILED" and "taken away" in run.data.tags["error"]
    assert run.info.end_time / 1000 - taken_at < 15, "the worker trained on after its trial was taken away"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert max(steps) < 400
    assert [r.info.run_name for r in children if r.info.status == "RUNNING"] == []
