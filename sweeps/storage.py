"""Where the Optuna study lives, and how the sweep and the analysis tools find it.

The embedded default is Optuna's journal file (`optuna-journal.log` in the directory the user ran
from): unlike SQLite it is safe for several local worker processes (append-only log under a file
lock), and optuna-dashboard reads it. Any SQLAlchemy URL (postgresql://..., mysql://...,
sqlite:///...) selects Optuna's RDB storage, the choice for sweeps spanning machines.
"""

from __future__ import annotations

import os
import random
import time
import warnings
from pathlib import Path
from typing import Callable, TypeVar
from urllib.parse import urlsplit, urlunsplit

import optuna

DEFAULT_JOURNAL = "optuna-journal.log"
REPRODUCE_SUFFIX = "--reproduce"
T = TypeVar("T")
_JOURNAL_ENDINGS = (".log", ".journal", ".jsonl")


def storage_url(url: str | None, cwd: str | os.PathLike | None = None) -> str:
    """Normalise a user storage setting into an absolute, explicit URL.

    None → `journal:///<cwd>/optuna-journal.log`; a bare path ending in .log/.journal → journal;
    `sqlite:///relative.db` → made absolute so worker processes and resumes agree.
    """
    base = Path(cwd or os.getcwd())
    if url is None or str(url).strip() == "":
        return f"journal:///{(base / DEFAULT_JOURNAL).resolve().as_posix().lstrip('/')}"
    url = str(url)
    if url.startswith("journal://"):
        return f"journal:///{url[len('journal://'):].lstrip('/')}"
    if "://" not in url:
        if not url.endswith(_JOURNAL_ENDINGS):
            raise ValueError(
                f"hydra.sweeper.storage: {url!r} is neither a URL nor a journal file; allowed: "
                "null (embedded journal file), a path ending in .log/.journal, journal:///abs/path, "
                "sqlite:///file.db, postgresql://user:pass@host/db, mysql://..."
            )
        return f"journal:///{(base / url).resolve().as_posix().lstrip('/')}"
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        rel = url[len("sqlite:///"):]
        if rel and rel != ":memory:":
            return f"sqlite:///{(base / rel).resolve().as_posix()}"
    return url


def journal_path(url: str) -> Path | None:
    """The journal file behind a normalised URL, or None for RDB storages."""
    if not url.startswith("journal://"):
        return None
    return Path("/" + url[len("journal://"):].lstrip("/"))


def open_storage(url: str | None, *, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 cwd: str | os.PathLike | None = None) -> optuna.storages.BaseStorage:
    """Open (creating if needed) the storage named by `url` (see `storage_url`)."""
    url = storage_url(url, cwd)
    path = journal_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = optuna.storages.journal.JournalFileOpenLock(str(path))
        backend = optuna.storages.journal.JournalFileBackend(str(path), lock_obj=lock)
        return optuna.storages.JournalStorage(backend)
    engine_kwargs: dict = {}
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 300}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna; we rely on them knowingly
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        callback = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1) if heartbeat_interval else None
        return retry_first_open(lambda: optuna.storages.RDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
            heartbeat_stale_trial_callback=callback,
        ), "the Optuna storage")


def retry_first_open(open_fn: Callable[[], T], what: str, attempts: int = 6) -> T:
    """Open a database store, retrying while another process creates its schema.

    Two sweeps started at once on a fresh database both run the schema migrations; the loser
    gets a duplicate-table/-type error. Once the winner is done, opening simply works.
    """
    for attempt in range(attempts):
        try:
            return open_fn()
        except Exception as exc:  # noqa: BLE001 - only the schema race is retried
            if attempt == attempts - 1 or not _schema_race(exc):
                raise
            time.sleep(1.0 + 2.0 * random.random() * (attempt + 1))
    raise RuntimeError(f"could not open {what}")


def _schema_race(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 10:
        text = f"{type(exc).__name__} {exc}".lower()
        if any(k in text for k in ("duplicate", "already exists", "uniqueviolation", "database is locked")):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def latest_study_name(storage: optuna.storages.BaseStorage) -> str:
    """The most recently started search study (reproduce companions excluded)."""
    summaries = [s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
                 if not s.study_name.endswith(REPRODUCE_SUFFIX)]
    if not summaries:
        raise LookupError("no study in this storage; run `python sweep.py -m` first or pass --storage/--study")
    def started(s):
        return s.datetime_start.timestamp() if s.datetime_start else float("-inf")
    return max(summaries, key=started).study_name


def mask_url(url: str) -> str:
    """Hide a URL's password (postgresql://user:***@host/db) before it is printed or logged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
