"""What a running trial tells the process that writes its MLflow run, and the one sink that writes
it; what a worker tells the sweep process about its trials.

A sweep's workers put `(worker_id, message)` on the sweep process's queue; a single run pickles its
trial events to its writer process. Both apply trial events with `MlflowSink`. Every event is a frozen dataclass, so a renamed
field fails where the event is built, and the sink knows each event type by class: an event it
does not know, or one whose write fails, closes that trial's run FAILED with the reason and raises
`EventError`. A run is never left RUNNING behind a logged warning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable

from sweeps.search.storage import StoreUnavailable


@dataclass(frozen=True)
class RunOpened:
    """A trial starts: create its run (params from `config`, `config.yaml`), or set the run of
    the preempted attempt it continues (`reopen_run_id`) RUNNING again."""

    key: str
    run_name: str
    config: dict[str, Any]
    tags: dict[str, str]
    config_yaml: str
    reopen_run_id: str | None = None


@dataclass(frozen=True)
class MetricsLogged:
    """Training or eval metrics of one optimizer step."""

    key: str
    step: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class TagsSet:
    key: str
    tags: dict[str, str]


@dataclass(frozen=True)
class CurvesDrawn:
    """Draw the trial's loss and metric curves from `history` into `path` and log the PNG (for
    a process that should not import matplotlib itself)."""

    key: str
    history: list[dict[str, Any]]
    path: str
    title: str


@dataclass(frozen=True)
class RunClosed:
    """A trial ended: FINISHED (complete), KILLED (pruned, interrupted) or FAILED; the final
    metrics, tags, artifacts (local path, artifact folder) and tables (file name -> rows)."""

    key: str
    status: str
    metrics: dict[str, float] | None = None
    tags: dict[str, str] | None = None
    artifacts: list[tuple[str, str | None]] = field(default_factory=list)
    step: int | None = None
    tables: dict[str, list[dict[str, Any]]] | None = None


TrialEvent = RunOpened | MetricsLogged | TagsSet | CurvesDrawn | RunClosed


class TrialEnd(str, Enum):
    """How a trial ended in a worker, as the sweep process counts it."""

    COMPLETE = "COMPLETE"
    PRUNED = "PRUNED"
    PREEMPTED = "PREEMPTED"          # SIGTERM: checkpointed, a continuation is queued
    SKIPPED = "SKIPPED"              # over hydra.sweeper.max_memory_gb, never trained
    OOM_REQUEUED = "OOM_REQUEUED"    # out of memory on a shared GPU, queued again
    FAIL = "FAIL"


@dataclass(frozen=True)
class TrialStarted:
    """A worker took a trial: the sweep process remembers it, to fail and re-queue it if that
    worker dies."""

    key: str
    trial_id: int
    number: int
    params: dict[str, Any]
    user_attrs: dict[str, Any]


@dataclass(frozen=True)
class TrialFinished:
    """A worker's trial ended (told to Optuna, its run closed)."""

    key: str
    number: int
    state: TrialEnd
    value: float | None = None
    reason: str = ""


@dataclass(frozen=True)
class WorkerDone:
    """A worker left its trial loop; its exit is handled when the process is reaped."""


WorkerMessage = TrialStarted | TrialFinished | WorkerDone


class EventError(RuntimeError):
    """An event the sink does not know, or one it could not write; its run was closed FAILED."""


class MlflowSink:
    """Applies trial events to a RunBook (sweeps.tracking.runbook). `apply` returns the run id for
    `RunOpened`, else None."""

    def __init__(self, runbook: Any) -> None:
        self.runbook = runbook
        self._handlers: dict[type, Callable[[Any], str | None]] = {
            RunOpened: self._open, MetricsLogged: self._metrics, TagsSet: self._tags, CurvesDrawn: self._curves,
            RunClosed: self._close,
        }

    def apply(self, event: Any) -> str | None:
        handler = self._handlers.get(type(event))
        if handler is None:
            reason = f"unknown trial event {type(event).__name__!r}; known: {', '.join(t.__name__ for t in self._handlers)}"
            self._fail(getattr(event, "key", None), reason)
            raise EventError(reason)
        try:
            return handler(event)
        except StoreUnavailable:
            raise  # the store stayed down past store_retry_s: the caller stops the sweep
        except Exception as exc:
            from sweeps.tracking.redact import scrub_text

            reason = scrub_text(f"{type(event).__name__} could not be written: {type(exc).__name__}: {exc}")
            self._fail(event.key, reason)
            raise EventError(reason) from exc

    def _fail(self, key: str | None, reason: str) -> None:
        """Close the event's run FAILED with the reason (best effort: the store may be what failed)."""
        if key is None or key not in self.runbook.open_runs:
            return
        try:
            self.runbook.close_trial(key, "FAILED", tags={"sweep.end_reason": reason[:5000]})
        except Exception:  # noqa: BLE001 - the EventError raised next carries the reason
            pass

    def _open(self, e: RunOpened) -> str:
        return self.runbook.open_trial(e.key, e.run_name, e.config, e.tags, e.config_yaml, e.reopen_run_id)

    def _metrics(self, e: MetricsLogged) -> None:
        self.runbook.log_metrics(e.key, e.step, e.metrics)

    def _tags(self, e: TagsSet) -> None:
        self.runbook.set_trial_tags(e.key, e.tags)

    def _curves(self, e: CurvesDrawn) -> None:
        from sweeps.tracking.curves import plot_curves

        drawn = plot_curves(e.history, Path(e.path), e.title)
        run_id = self.runbook.open_runs.get(e.key)
        if drawn and run_id:
            self.runbook.client.log_artifact(run_id, str(drawn))

    def _close(self, e: RunClosed) -> None:
        self.runbook.close_trial(e.key, e.status, e.metrics, e.tags, e.artifacts, e.step, e.tables)
