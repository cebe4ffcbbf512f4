"""How a trial talks to whoever runs it (Optuna pruning, MLflow logging) without knowing them."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Reporter(Protocol):
    """Receives progress from a running trial.

    `report` may raise any exception (e.g. `optuna.TrialPruned`) to stop the trial; the
    trainer cleans up its warm state and lets the exception propagate unchanged. A reporter may
    also define `planned(total_steps)`, called once before the first step (a pruner that reasons
    in fractions of a trial needs its length), and `eval_rows(rows)`, called just before each
    `report` with that evaluation's score on every eval row of each metric that is a mean over
    rows ({"eval_accuracy": [1.0, 0.0, ...]}, dataset order; a paired test across trials needs them).
    """

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Training metrics every `train.log_every_steps` optimizer steps."""

    def report(self, step: int, metrics: dict[str, float]) -> None:
        """Eval metrics at every `train.eval_every_steps` optimizer step and at the end."""


class RecordingReporter:
    """Keeps every call in lists: for tests and for single runs that log afterwards."""

    def __init__(self) -> None:
        self.logged: list[tuple[int, dict[str, float]]] = []
        self.reported: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.logged.append((step, dict(metrics)))

    def report(self, step: int, metrics: dict[str, float]) -> None:
        self.reported.append((step, dict(metrics)))
