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
import os
import socket
import zlib
from pathlib import Path
from typing import Any, Iterator

import optuna
from optuna.trial import TrialState

from sweeps.storage import journal_path

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


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


def count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


class TrialBudget:
    """Hands out trials until `n_trials` have finished, atomically across processes and machines."""

    def __init__(self, study: optuna.Study, storage_url: str, n_trials: int):
        self.study = study
        self.storage_url = storage_url
        self.n_trials = n_trials
        self._engine = None

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        path = journal_path(self.storage_url)
        if path is None and self.storage_url.startswith("sqlite:///"):
            path = Path(self.storage_url[len("sqlite:///"):])
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
            with self._engine.connect() as conn:
                conn.exec_driver_sql(f"SELECT pg_advisory_lock({key})")
                try:
                    yield
                finally:
                    conn.exec_driver_sql(f"SELECT pg_advisory_unlock({key})")
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
            taken = len(self.study.get_trials(deepcopy=False, states=FINISHED + (TrialState.RUNNING,)))
            if taken >= self.n_trials:
                return None
            if waiting_only and not self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                return None
            trial = self.study.ask()
            for key, value in user_attrs.items():
                trial.set_user_attr(key, value)
            return trial


def owner_attrs(worker_id: int) -> dict[str, Any]:
    """Who runs a trial: lets a later sweep on this host recognise trials orphaned by a crash."""
    return {"host": socket.gethostname(), "supervisor_pid": os.getppid(), "worker_pid": os.getpid(),
            "worker_id": worker_id}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_orphaned_trials(study: optuna.Study) -> list[int]:
    """RUNNING trials of this host whose sweep process is gone (a crash, a kill -9 of the sweep)
    become FAIL, so a rerun does not count them as in flight forever."""
    failed = []
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if attrs.get("host") == host and not _alive(int(attrs.get("supervisor_pid", -1))):
            if fail_trial(study, trial._trial_id, "orphaned: its sweep process died"):
                failed.append(trial.number)
    return failed


def fail_trial(study: optuna.Study, trial_id: int, reason: str) -> bool:
    """Mark a RUNNING trial FAIL from outside its worker (dead worker, Ctrl-C)."""
    storage = study._storage
    if storage.get_trial(trial_id).state != TrialState.RUNNING:
        return False
    storage.set_trial_user_attr(trial_id, "fail_reason", reason[:2000])
    trial = storage.get_trial(trial_id)
    study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    return True
