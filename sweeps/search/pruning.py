"""Pruners that do not prune on noise: every pruner we offer waits until a trial has run a
fraction of its optimizer steps (`hydra.sweeper.prune_after`) and until some trials have finished
(`hydra.sweeper.prune_min_trials`), then asks the configured Optuna pruner.

The first checkpoints of a LoRA fine-tune rank trials only loosely (slow starters with low
learning rates or long warmups sit at chance level there), so a pruner that may act at the first
evaluation cuts the trials that would have won. Fractions of the trial are what a user can reason
about; counts of optimizer steps mean something different in every config.

`RowWilcoxonPruner` tests instead of ranking: it pairs a trial's score on every eval row with
the best trial's on the same rows and prunes only when Optuna's Wilcoxon signed-rank test says
the trial is worse. `ConformalPruner` (sweeps.search.conformal) forecasts the trial's final value
and prunes when a calibrated upper bound on it is below the best trial, at a stated false-kill rate.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

# objectives that are a mean over eval rows, so a trial has a score on each row to pair
ROW_MEAN_OBJECTIVES = ("eval_accuracy", "eval_loss", "eval_exact_match", "eval_token_f1")
ROW_SCORES_PREFIX = "eval_rows@"  # user attr `eval_rows@<step>`: the objective on each eval row at that step


@dataclass(frozen=True)
class PruneGuard:
    prune_after: float = 0.5   # fraction of the trial's optimizer steps before it may be pruned
    min_trials: int = 4        # completed trials before any trial is pruned
    patience: int | None = None  # Optuna's PatientPruner: also require this many evals without improvement
    false_kill: float = 0.05   # the conformal pruner's target false-kill rate (sweeps.search.conformal)

    def check(self) -> None:
        if not 0.0 <= self.prune_after < 1.0:
            raise ValueError(f"hydra.sweeper.prune_after: must be a fraction in [0, 1), got {self.prune_after}")
        if self.min_trials < 0:
            raise ValueError(f"hydra.sweeper.prune_min_trials: must be >= 0, got {self.min_trials}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"hydra.sweeper.prune_patience: must be >= 1 or null, got {self.patience}")
        if not 0.0 < self.false_kill <= 0.5:
            raise ValueError(f"hydra.sweeper.prune_false_kill: must be a rate in (0, 0.5], got {self.false_kill}")

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
                      patience=int(patience) if patience is not None else None,
                      false_kill=float(conf.get("prune_false_kill", 0.05)))


def row_scores_key(step: int) -> str:
    """The trial user attr that holds the objective's score on each eval row at `step`."""
    return f"{ROW_SCORES_PREFIX}{int(step)}"


def row_scores_up_to(trial: FrozenTrial, step: int) -> list[float] | None:
    """The trial's row scores at its latest evaluation at or before `step` (None: none yet)."""
    steps = [int(k[len(ROW_SCORES_PREFIX):]) for k in trial.user_attrs if k.startswith(ROW_SCORES_PREFIX)]
    before = [s for s in steps if s <= step]
    return trial.user_attrs[row_scores_key(max(before))] if before else None


@dataclass(frozen=True)
class _RowsStudy:
    """The two things Optuna's WilcoxonPruner reads of a study, with the best trial's eval rows
    as its steps."""

    best_trial: FrozenTrial
    direction: StudyDirection


def _rows_as_steps(trial: FrozenTrial, rows: list[float]) -> FrozenTrial:
    view = copy.copy(trial)
    view.intermediate_values = dict(enumerate(float(v) for v in rows))
    return view


class RowWilcoxonPruner(optuna.pruners.BasePruner):
    """Optuna's WilcoxonPruner over eval rows (`hydra.sweeper.pruner=wilcoxon`).

    At a checkpoint the trial's objective on every eval row (`eval_rows@<step>`, written by the
    worker) is paired with the study's best trial's on the same rows at the same point of its
    curve (its latest evaluation at or before the step). The trial is pruned when the one-sided
    signed-rank test says it is worse at `p_threshold`. A median pruner compares one number per
    trial, so a trial level with the best can fall under the median by the luck of one eval;
    here hundreds of paired rows must agree. The test runs once per checkpoint, so over k
    checkpoints a trial as good as the best is pruned with probability up to k x p_threshold;
    the default (0.05, Optuna's is 0.1) keeps that small at the few checkpoints past
    `prune_after`."""

    def __init__(self, p_threshold: float = 0.05, n_startup_steps: int = 2) -> None:
        with warnings.catch_warnings():  # Optuna marks the class experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.test = optuna.pruners.WilcoxonPruner(p_threshold=p_threshold, n_startup_steps=n_startup_steps)

    def prune(self, study: Any, trial: FrozenTrial) -> bool:
        step = trial.last_step
        mine = trial.user_attrs.get(row_scores_key(step)) if step is not None else None
        if not mine:
            return False
        try:
            best = study.best_trial
        except ValueError:  # nothing finished yet
            return False
        if best.number == trial.number:
            return False
        theirs = row_scores_up_to(best, step)
        if theirs is None or len(theirs) != len(mine):
            return False
        return self.test.prune(_RowsStudy(_rows_as_steps(best, theirs), study.direction), _rows_as_steps(trial, mine))
