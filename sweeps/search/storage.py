"""Where the Optuna study lives, and how the sweep and the analysis tools find it.

The embedded default is Optuna's journal file (`optuna-journal.log` in the directory the user ran
from): unlike SQLite it is safe for several local worker processes (append-only log under a file
lock), and optuna-dashboard reads it. Any SQLAlchemy URL (postgresql://..., mysql://...,
sqlite:///...) selects Optuna's RDB storage, the choice for sweeps spanning machines.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar
from urllib.parse import urlsplit, urlunsplit

import optuna
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat

DEFAULT_JOURNAL = "optuna-journal.log"
REPRODUCE_SUFFIX = "--reproduce"
RACE_SUFFIX = "--race"
COMPANION_SUFFIXES = (REPRODUCE_SUFFIX, RACE_SUFFIX)  # studies of re-runs beside a search study
# trial attribute of a config estimated over hydra.sweeper.max_memory_gb: stored PRUNED, never trained
MEMORY_SKIP_ATTR = "skipped_over_memory"
STORE_RETRY_S = 120.0  # default of hydra.sweeper.store_retry_s
T = TypeVar("T")
log = logging.getLogger(__name__)
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
    return absolute_sqlite(url, base)


SQLITE = "sqlite:///"


def absolute_sqlite(url: str, base: str | os.PathLike) -> str:
    """`sqlite:///relative.db` resolved against `base` (the directory the user ran from), so worker
    processes, resumes and later commands open the same file; other URLs unchanged."""
    if url.startswith(SQLITE) and not url.startswith(SQLITE + "/"):
        rel = url[len(SQLITE):]
        if rel and rel != ":memory:":
            return f"{SQLITE}{(Path(base) / rel).resolve().as_posix()}"
    return url


def sqlite_path(url: str) -> Path | None:
    """The database file of a `sqlite:///` URL (absolute after absolute_sqlite), else None."""
    return Path(url[len(SQLITE):]) if url.startswith(SQLITE) else None


def is_masked(url: str | None) -> bool:
    """A URL recorded with a secret masked (`***`, by mask_url or sweeps.tracking.redact) cannot be used to connect."""
    return bool(url) and "***" in str(url)


def journal_path(url: str) -> Path | None:
    """The journal file behind a normalised URL, or None for RDB storages."""
    if not url.startswith("journal://"):
        return None
    return Path("/" + url[len("journal://"):].lstrip("/"))


def open_storage(url: str | None, *, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 cwd: str | os.PathLike | None = None, retry_s: float | None = None) -> optuna.storages.BaseStorage:
    """Open (creating if needed) the storage named by `url` (see `storage_url`).

    `retry_s`: ride out a database blip (a restart, a dropped connection) for up to that many
    seconds, while opening and in every later call (a `RetryingStorage`), instead of failing."""
    if retry_s is not None:
        inner = retry_call(lambda: open_storage(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                                                cwd=cwd), "opening the Optuna storage", retry_s)
        return RetryingStorage(inner, retry_s)
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
        # alembic's version row written twice (PostgreSQL: UniqueViolation; SQLite: "UNIQUE constraint
        # failed"), or moved under a concurrent migration ("expected to match one row")
        if any(k in text for k in ("duplicate", "already exists", "uniqueviolation", "unique constraint failed",
                                   "database is locked", "expected to match one row")):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


# -- riding out a database blip ----------------------------------------------------------------

class StoreUnavailable(RuntimeError):
    """A store stayed unreachable for the whole retry budget (hydra.sweeper.store_retry_s)."""


_TRANSIENT_TEXT = (
    "connection refused", "could not connect", "server closed the connection", "connection reset",
    "connection timed out", "terminating connection", "connection is closed", "connection already closed",
    "the database system is starting up", "the database system is shutting down", "the database system is in recovery",
    "cannot connect now", "broken pipe", "connection aborted", "max retries exceeded", "temporarily unavailable",
    "ssl syscall error", "consuming input failed", "no connection to the server", "connection to server",
    "database is locked", "bad gateway", "service unavailable", "gateway timeout",
)


def is_transient(exc: BaseException | None) -> bool:
    """True for errors a retry can cure: a dropped or refused database connection, a restarting
    server, an MLflow server answering 5xx. Follows the cause chain (Optuna and MLflow wrap the
    driver's error), so a real bug (a bad query, a missing run) is never retried."""
    import sqlalchemy.exc

    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, optuna.exceptions.UpdateFinishedTrialError):
            return False
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return True
        if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
            return True
        if isinstance(exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
            return True
        code = getattr(exc, "error_code", None)
        if code in ("TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"):
            return True
        status = getattr(exc, "get_http_status_code", None)
        if callable(status):
            try:
                if int(status()) >= 500 and code != "INTERNAL_ERROR" or int(status()) in (502, 503, 504):
                    return True
            except (TypeError, ValueError):
                pass
        text = str(exc).lower()
        if any(marker in text for marker in _TRANSIENT_TEXT):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def retry_call(fn: Callable[[], T], what: str, budget_s: float | None = None) -> T:
    """Call `fn`, retrying transient store errors with exponential back-off and full jitter for
    up to `budget_s` seconds (default STORE_RETRY_S); then raise `StoreUnavailable`.

    The one retry policy of the sweep: the progress bar, the supervisor, the MLflow run book,
    the workers' Optuna calls and their heartbeats all come through here."""
    budget = STORE_RETRY_S if budget_s is None else float(budget_s)
    if _budget_cap:
        budget = min(budget, _budget_cap[-1])
    deadline = time.monotonic() + budget
    delay, attempt = 0.25, 0
    while True:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - only transient errors are retried, see is_transient
            if not is_transient(exc):
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise StoreUnavailable(
                    f"{what}: the store stayed unreachable for {budget:g} s (hydra.sweeper.store_retry_s); "
                    f"last error: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
                ) from exc
            attempt += 1
            if attempt == 1 or attempt % 10 == 0:
                log.warning("%s failed (%s); retrying for up to %.0f s more", what,
                            str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__, left)
            time.sleep(min(left, random.uniform(0.5, 1.0) * delay))
            delay = min(delay * 2, 5.0)


_budget_cap: list[float] = []


@contextlib.contextmanager
def retry_budget_cap(seconds: float) -> Iterator[None]:
    """Retry for at most `seconds` inside the block, whatever the callers' budgets: once the sweep
    has given up on a store, its clean-up must not wait the full budget again for every call."""
    _budget_cap.append(float(seconds))
    try:
        yield
    finally:
        _budget_cap.pop()


class Retrying:
    """Any client object whose method calls should ride out a blip (MlflowClient, a storage)."""

    def __init__(self, inner: Any, budget_s: float | None = None, what: str = "store"):
        self.inner, self.budget_s, self.what = inner, budget_s, what

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            return retry_call(lambda: attr(*args, **kwargs), f"{self.what}.{name}", self.budget_s)
        return call


class RetryingStorage(BaseStorage, BaseHeartbeat):
    """An Optuna storage whose every call retries transient errors (see `retry_call`).

    Heartbeats pass through when the wrapped storage has them (RDB), so Optuna's stale-trial
    detection keeps working; for a journal storage `get_heartbeat_interval` is None."""

    def __init__(self, inner: BaseStorage, budget_s: float | None = None):
        self.inner, self.budget_s = inner, budget_s

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        method = getattr(self.inner, name)
        return retry_call(lambda: method(*args, **kwargs), f"Optuna storage {name}", self.budget_s)

    def get_heartbeat_interval(self) -> int | None:
        if not isinstance(self.inner, BaseHeartbeat):
            return None
        return self.inner.get_heartbeat_interval()

    def get_heartbeat_stale_trial_callback(self):
        return self.inner.get_heartbeat_stale_trial_callback() if isinstance(self.inner, BaseHeartbeat) else None

    def get_failed_trial_callback(self):
        return self.get_heartbeat_stale_trial_callback()

    def __getattr__(self, name: str) -> Any:  # anything else of the wrapped storage (e.g. its engine)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def _delegate(name: str) -> Callable[..., Any]:
    def method(self: RetryingStorage, *args: Any, **kwargs: Any) -> Any:
        return self._call(name, *args, **kwargs)
    method.__name__ = name
    return method


# Every storage method (and the heartbeat ones Optuna's fail_stale_trials calls) goes through `_call`.
for _name in sorted({n for n in dir(BaseStorage) if not n.startswith("_")} | {"record_heartbeat", "_get_stale_trial_ids"}):
    setattr(RetryingStorage, _name, _delegate(_name))
RetryingStorage.__abstractmethods__ = frozenset()


def latest_study_name(storage: optuna.storages.BaseStorage) -> str:
    """The most recently started search study (reproduce and race companions excluded)."""
    summaries = [s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
                 if not s.study_name.endswith(COMPANION_SUFFIXES)]
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
