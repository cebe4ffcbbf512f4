"""The Optuna study of a sweep: naming, creation/resume, and the global trial budget.

`n_trials` counts finished trials (COMPLETE or PRUNED) across every worker and machine on the
study: a resumed or multi-machine sweep only runs what is missing. Taking the next trial happens
under a lock shared by all processes on the study (a file lock beside a journal/SQLite file, a
PostgreSQL advisory lock for RDB storages), so concurrent workers can never overshoot the budget.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import socket
import zlib
from pathlib import Path
from typing import Any, Iterator

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeps.search.storage import MEMORY_SKIP_ATTR, is_transient, journal_path, retry_call, sqlite_path

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
log = logging.getLogger(__name__)


def default_study_name(experiment_name: str, problem: dict[str, Any]) -> str:
    """Same command → same name (so rerunning resumes); another problem → another study."""
    digest = hashlib.sha256(json.dumps(problem, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{experiment_name}-{digest}"


def open_study(storage: optuna.storages.BaseStorage, name: str, directions: list[str],
               sampler: optuna.samplers.BaseSampler | None = None,
               pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    """Create the study or load it (race-safe: `load_if_exists`); refuse a direction mismatch."""
    study = optuna.create_study(storage=storage, study_name=name, directions=directions,
                                sampler=sampler, pruner=pruner, load_if_exists=True)
    have = [d.name.lower() for d in study.directions]
    if have != [d.lower() for d in directions]:
        raise ValueError(
            f"hydra.sweeper.direction: study {name!r} already exists with directions {have}, not {directions}; "
            "use another hydra.sweeper.study_name"
        )
    return study


def counted(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The trials that use the budget: configs skipped over the memory limit never trained."""
    return [t for t in trials if MEMORY_SKIP_ATTR not in t.user_attrs]


def count_finished(study: optuna.Study) -> int:
    return len(counted(study.get_trials(deepcopy=False, states=FINISHED)))


class TrialBudget:
    """Hands out trials until `n_trials` have finished, atomically across processes and machines."""

    def __init__(self, study: optuna.Study, storage_url: str, n_trials: int, retry_s: float | None = None):
        self.study = study
        self.storage_url = storage_url
        self.n_trials = n_trials
        self.retry_s = retry_s
        self._engine = None

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        path = journal_path(self.storage_url) or sqlite_path(self.storage_url)
        if path is not None:
            lock_file = path.with_name(path.name + ".budget.lock")
            with open(lock_file, "a+") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)
            return
        if self.storage_url.startswith("postgresql"):
            import sqlalchemy

            if self._engine is None:
                self._engine = sqlalchemy.create_engine(self.storage_url, poolclass=sqlalchemy.pool.NullPool)
            key = zlib.crc32(f"lora-sweep:{self.study.study_name}".encode()) & 0x7FFFFFFF

            def acquire():
                conn = self._engine.connect()
                try:
                    conn.exec_driver_sql(f"SELECT pg_advisory_lock({key})")
                except BaseException:
                    conn.close()
                    raise
                return conn

            conn = retry_call(acquire, "the trial-budget lock", self.retry_s)
            try:
                yield
            finally:
                try:
                    conn.exec_driver_sql(f"SELECT pg_advisory_unlock({key})")
                except Exception as exc:  # the server dropped the session, and the lock with it
                    if not is_transient(exc):
                        raise
                finally:
                    conn.close()
            return
        yield  # other RDBs: best effort (may overshoot by up to n_jobs - 1)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The same cross-process lock, for other one-at-a-time steps (e.g. creating the parent run)."""
        with self._lock():
            yield

    def next_trial(self, user_attrs: dict[str, Any], waiting_only: bool = False) -> optuna.Trial | None:
        """A new (or retried, WAITING) trial, or None when the budget is used up.

        `waiting_only`: replay enqueued trials only (reproduce runs), never sample new ones.
        """
        with self._lock():
            taken = len(counted(self.study.get_trials(deepcopy=False, states=FINISHED + (TrialState.RUNNING,))))
            if taken >= self.n_trials:
                return None
            if waiting_only and not self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                return None
            trial = self.study.ask()
            for key, value in user_attrs.items():
                trial.set_user_attr(key, value)
            return trial


def process_started(pid: int) -> float | None:
    """When process `pid` started (epoch seconds), or None when there is no such process.
    Recorded beside a pid, it tells a live owner from a new process that reuses a dead one's pid."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        return 0.0  # alive, start time unknown


def process_alive(pid: int, started: float | None = None) -> bool:
    """`pid` runs and, when `started` is given, is the same process that started then."""
    now = process_started(pid)
    if now is None:
        return False
    return started is None or now == 0.0 or abs(now - float(started)) < 1.0


def owner_attrs(worker_id: int, sweep_pid: int | None = None, sweep_started: float | None = None) -> dict[str, Any]:
    """Who runs a trial: the host, the sweep process (pid and start time: the pid alone may be
    reused after a reboot or a long time) and the worker. A later sweep on this host uses them to
    recognise trials whose owner is gone (`fail_orphaned_trials`)."""
    sweep_pid = os.getppid() if sweep_pid is None else sweep_pid
    if sweep_started is None:
        sweep_started = process_started(sweep_pid)
    return {"host": socket.gethostname(), "supervisor_pid": sweep_pid, "supervisor_started": sweep_started,
            "worker_pid": os.getpid(), "worker_started": process_started(os.getpid()), "worker_id": worker_id}


def owner_gone(attrs: dict[str, Any]) -> bool:
    """True when a trial's sweep process is known to be gone: it ran on this host and that pid is
    dead or now belongs to another process. Trials of other hosts are never judged here (RDB
    storages have heartbeats for them: Optuna's stale-trial check)."""
    if attrs.get("host") != socket.gethostname() or "supervisor_pid" not in attrs:
        return False
    return not process_alive(int(attrs["supervisor_pid"]), attrs.get("supervisor_started"))


RETRY_OWNER_KEYS = ("host", "supervisor_pid", "supervisor_started", "worker_pid", "worker_started", "worker_id",
                    "retry_of", "retry_count", "requeued_from", "mlflow_run_id", "fail_reason", "orphaned")


def requeue(study: optuna.Study, failed: optuna.trial.FrozenTrial, max_retry: int) -> bool:
    """Enqueue the params of a failed trial again (same config, `retry_of` the original trial),
    unless it has been retried `max_retry` times already. Used for trials whose worker died and
    for trials orphaned by a dead sweep process."""
    retries = int(failed.user_attrs.get("retry_count", 0))
    if retries >= max_retry:
        return False
    attrs = {k: v for k, v in failed.user_attrs.items() if k not in RETRY_OWNER_KEYS}
    attrs.update(retry_of=int(failed.user_attrs.get("retry_of", failed.number)), retry_count=retries + 1,
                 requeued_from=failed.number)
    study.enqueue_trial(failed.params, user_attrs=attrs)
    return True


OOM_REQUEUE_LIMIT = 2  # a config that runs out of memory this often on a shared GPU fails like any other


def requeue_after_oom(study: optuna.Study, failed: optuna.trial.FrozenTrial) -> bool:
    """Enqueue again a trial that ran out of GPU memory on a device shared with other workers
    (its neighbours may have grown): same params, a fresh start in its own folder, `oom_requeued_from`
    linking it. False once the config has been queued `OOM_REQUEUE_LIMIT` times."""
    count = int(failed.user_attrs.get("oom_requeues", 0))
    if count >= OOM_REQUEUE_LIMIT:
        return False
    dropped = RETRY_OWNER_KEYS + ("checkpoint_dir", "oom_retry", "resumes_trial", "resume_run_id")
    attrs = {k: v for k, v in failed.user_attrs.items() if k not in dropped}
    attrs.update(oom_requeued_from=failed.number, oom_requeues=count + 1)
    study.enqueue_trial(failed.params, user_attrs=attrs)
    return True


CONTINUATION_DROPPED_KEYS = RETRY_OWNER_KEYS + ("preempted_at_step", "resumed_from_step", "total_steps")


def enqueue_continuation(study: optuna.Study, preempted: optuna.trial.FrozenTrial) -> None:
    """Queue the continuation of a trial preempted after a checkpoint: the same params (and
    seeds), `resumes_trial` linking it to the attempt, the same checkpoint folder, and the MLflow
    run to reopen (`resume_run_id`), so the config keeps one run and gets one finished trial."""
    attrs = {k: v for k, v in preempted.user_attrs.items() if k not in CONTINUATION_DROPPED_KEYS}
    run_id = preempted.user_attrs.get("mlflow_run_id") or preempted.user_attrs.get("resume_run_id")
    attrs.update(resumes_trial=preempted.number, resume_run_id=run_id)
    study.enqueue_trial(preempted.params, user_attrs=attrs)


def fail_orphaned_trials(study: optuna.Study, max_retry: int | None = None) -> list[int]:
    """Resume after the sweep process itself died (kill -9, OOM killer, reboot): its RUNNING
    trials on this host become FAIL, so they no longer count as in flight, and with `max_retry`
    they are re-enqueued with the same params, as the trials of a dead worker are. Trials its
    workers failed themselves when they saw the sweep process die (`orphaned`) are re-enqueued
    too. Idempotent: a trial already re-enqueued (`requeued_from`) is not enqueued again.
    Call it under the study's budget lock when other sweeps may resume the same study."""
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if owner_gone(attrs):
            reason = (f"orphaned: the sweep process died (pid {attrs.get('supervisor_pid')} on {attrs.get('host')}) "
                      "while the trial ran")
            try:
                optuna.trial.Trial(study, trial_id(trial)).set_user_attr("orphaned", True)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
            if fail_trial(study, trial_id(trial), reason):
                failed.append(trial.number)
    if max_retry is not None:
        trials = study.get_trials(deepcopy=False)
        done = {t.user_attrs.get("requeued_from") for t in trials}
        for trial in trials:
            if trial.state == TrialState.FAIL and trial.user_attrs.get("orphaned") and trial.number not in done:
                requeue(study, trial, max_retry)
    return failed


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage behind a study. Optuna keeps it private (`_storage`); this is the one place we
    reach for it, so an Optuna change breaks here and nowhere else."""
    return study._storage


def trial_id(trial: optuna.trial.Trial | optuna.trial.FrozenTrial) -> int:
    """A trial's id in its storage (Optuna's private `_trial_id`; read here only, as above)."""
    return trial._trial_id


def fail_trial(study: optuna.Study, trial_id: int, reason: str) -> bool:
    """Mark a RUNNING trial FAIL from outside its worker (dead worker, Ctrl-C); the reason is
    stored with secrets masked."""
    from sweeps.tracking.redact import scrub_text

    reason = scrub_text(reason)
    storage = storage_of(study)
    if storage.get_trial(trial_id).state != TrialState.RUNNING:
        return False
    storage.set_trial_user_attr(trial_id, "fail_reason", reason[:2000])
    trial = storage.get_trial(trial_id)
    study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    return True


def top_trials(study: optuna.Study, k: int | None = None) -> list[FrozenTrial]:
    """The complete trials, best first by the first objective (all of them when k is None)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    reverse = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    return sorted(complete, key=lambda t: t.values[0], reverse=reverse)[:k]


def trial_folder(trial_root: str | Path, kind: str, number: int) -> Path:
    """Where a trial keeps its outputs (adapter, curves, checkpoint): `<trial_root>/<kind>_<number>`,
    kind trial, race or reproduce."""
    return Path(trial_root) / f"{kind}_{int(number):04d}"
