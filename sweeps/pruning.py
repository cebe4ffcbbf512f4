"""Pruners that do not prune on noise: every pruner we offer waits until a trial has run a
fraction of its optimizer steps (`hydra.sweeper.prune_after`) and until some trials have finished
(`hydra.sweeper.prune_min_trials`), then asks the configured Optuna pruner.

The first checkpoints of a LoRA fine-tune rank trials only loosely (slow starters with low
learning rates or long warmups sit at chance level there), so a pruner that may act at the first
evaluation cuts the trials that would have won. Fractions of the trial are what a user can reason
about; counts of optimizer steps mean something different in every config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState


@dataclass(frozen=True)
class PruneGuard:
    prune_after: float = 0.5   # fraction of the trial's optimizer steps before it may be pruned
    min_trials: int = 4        # completed trials before any trial is pruned
    patience: int | None = None  # Optuna's PatientPruner: also require this many evals without improvement

    def check(self) -> None:
        if not 0.0 <= self.prune_after < 1.0:
            raise ValueError(f"hydra.sweeper.prune_after: must be a fraction in [0, 1), got {self.prune_after}")
        if self.min_trials < 0:
            raise ValueError(f"hydra.sweeper.prune_min_trials: must be >= 0, got {self.min_trials}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"hydra.sweeper.prune_patience: must be >= 1 or null, got {self.patience}")

    def first_step(self, total_steps: int) -> int:
        """The first optimizer step at which a trial of `total_steps` may be pruned."""
        return max(1, math.ceil(self.prune_after * total_steps))


class GuardedPruner(optuna.pruners.BasePruner):
    """`inner` with the guard's warm-up: a trial's length comes from its `total_steps` user attr
    (the worker records it when the trial starts); without it only the finished-trials rule holds."""

    def __init__(self, inner: optuna.pruners.BasePruner, guard: PruneGuard) -> None:
        self.inner, self.guard = inner, guard

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        # the inner pruner is always asked: successive halving and Hyperband record each trial's
        # value at their rungs while answering, and later trials are ranked against those records
        decision = self.inner.prune(study, trial)
        step = trial.last_step
        if step is None:
            return False
        total = trial.user_attrs.get("total_steps")
        if total and step < self.guard.first_step(int(total)):
            return False
        if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < self.guard.min_trials:
            return False
        return decision


def prune_guard(conf) -> PruneGuard:
    """The guard from the hydra.sweeper node (its keys may be absent in configs saved before them)."""
    patience = conf.get("prune_patience")
    return PruneGuard(prune_after=float(conf.get("prune_after", 0.5)), min_trials=int(conf.get("prune_min_trials", 4)),
                      patience=int(patience) if patience is not None else None)
