"""Which evaluation of a trial counts: the last one, or the best one with its weights.

A trial whose eval metric peaks early and declines is scored by its peak when `at="best"`, and
the adapter it keeps is the one from that eval step (what HF Trainer's `load_best_model_at_end`
does), so export, chat and reproduce use exactly what was scored. `patience` stops a trial
after that many evaluations without improvement (`train.early_stopping_patience`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

OBJECTIVE_AT = ("best", "last")


@dataclass
class EvalSelection:
    """Tracks the objective over a trial's evaluations; `metric` is an eval metric name
    (`eval_accuracy`), `direction` maximize or minimize."""

    metric: str
    direction: str
    at: str = "best"
    patience: int | None = None
    best_value: float | None = None
    best_step: int | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    since_best: int = 0
    _weights: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.at not in OBJECTIVE_AT:
            raise ValueError(f"objective_at: {self.at!r}; allowed: {', '.join(OBJECTIVE_AT)}")

    def _better(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best_value is None:
            return True
        return value > self.best_value if self.direction == "maximize" else value < self.best_value

    def update(self, model: Any, step: int, metrics: dict[str, float]) -> bool:
        """Record one evaluation; True when early stopping says the trial should stop."""
        value = metrics.get(self.metric)
        if value is not None and self._better(float(value)):
            self.best_value, self.best_step, self.best_metrics = float(value), step, dict(metrics)
            self.since_best = 0
            if self.at == "best":
                self._weights = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}
        else:
            self.since_best += 1
        return self.patience is not None and self.patience > 0 and self.since_best >= self.patience

    def state(self) -> dict[str, Any]:
        """What a trial checkpoint keeps of the selection (trainer.training.checkpoint)."""
        return {"best_value": self.best_value, "best_step": self.best_step, "best_metrics": dict(self.best_metrics),
                "since_best": self.since_best, "weights": self._weights}

    def load_state(self, state: dict[str, Any]) -> None:
        self.best_value, self.best_step = state["best_value"], state["best_step"]
        self.best_metrics, self.since_best, self._weights = dict(state["best_metrics"]), state["since_best"], state["weights"]

    def restore(self, model: Any) -> bool:
        """Put the best evaluation's trainable weights back (at="best"); True when it did."""
        import torch

        if self.at != "best" or self._weights is None:
            return False
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in self._weights:
                    param.copy_(self._weights[name].to(param.device))
        return True
