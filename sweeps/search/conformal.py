"""A pruner with a stated false-kill bound (`hydra.sweeper.pruner=conformal`).

At a check of a running trial its final value is predicted from its curve so far (a saturating
power law fitted to its evals), and the prediction gets a split-conformal upper bound calibrated
on the study's own completed trials: each calibration trial is replayed through the same
predictor at every check it would have had, and scores its worst shortfall, the largest
`(final - predicted) / error_scale(f)` over those checks (f: the check's fraction of training).
With n calibration trials and target rate a, the bound at a check is `predicted + q x
error_scale(f)`, q the ceil((n+1)(1-a))-th smallest score. The trial is pruned when the bound is
below the incumbent (the best completed trial).

Why the largest shortfall over all checks, not the residual at the current step: a trial is
checked at several evals, and a per-step bound of level a would let each check kill it with
chance a (up to k x a over k checks). One score per trial covers every check at once: if the
running trial is exchangeable with the calibration trials, the chance that its final value
exceeds its bound at ANY check is at most a, so the chance that it is pruned although it would
have beaten the incumbent of that moment is at most a.

Why the calibration set is frozen (the first n trials to complete): once the pruner acts, the
trials that complete are the survivors of its own decisions, whose shortfalls are smaller than a
random trial's; calibrating on them would shrink the bound and break the guarantee. Nothing can
be pruned before those n trials completed, so none of them was ever at risk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

MIN_FIT_POINTS = 4  # evals needed to fit the three-parameter power law; fewer: the simpler model
NOISE_FLOOR = 0.05  # the part of a forecast's error that does not shrink with training (eval noise)


def error_scale(fraction: float) -> float:
    """How large a forecast's error is expected to be at this fraction of training, up to a
    constant: it shrinks with the training still to run. Shortfalls are compared in these units,
    so that a check late in training gets a margin as tight as its forecast (a fixed function of
    the check, so the guarantee is exact whatever its shape)."""
    return 1.0 - fraction + NOISE_FLOOR


def conformal_rank(n: int, false_kill: float) -> int | None:
    """ceil((n+1)(1-a)): which smallest score is the bound's margin, or None when it exceeds n
    (with n calibration trials the split-conformal quantile at level a does not exist)."""
    rank = math.ceil((n + 1) * (1 - Fraction(false_kill).limit_denominator(10**9)))
    return rank if rank <= n else None


def min_calibration_trials(false_kill: float) -> int:
    """The fewest completed trials with which the bound exists at target rate `false_kill`
    (19 at 0.05, 9 at 0.1, 1 at 0.5)."""
    n = 1
    while conformal_rank(n, false_kill) is None:
        n += 1
    return n


EXPONENTS = np.geomspace(0.05, 3.0, 60)  # the power law's c, searched on this grid


def fit_power_law(fractions: np.ndarray, values: np.ndarray) -> tuple[float, float, float]:
    """Least-squares (a, b, c) of y(t) = a - b t^-c with b >= 0 (rising to a, or flat).

    Given c the model is linear in (a, b), so each c on the grid is solved in closed form and the
    best kept (variable projection): no iterative fit to fail or to take milliseconds per check."""
    x = np.power(fractions[None, :], -EXPONENTS[:, None])  # (grid, evals)
    xc, yc = x - x.mean(axis=1, keepdims=True), values - values.mean()
    sxx, sxy, syy = (xc * xc).sum(axis=1), (xc * yc).sum(axis=1), float((yc * yc).sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        b = np.where(sxx > 0, -sxy / sxx, 0.0)
    b = np.clip(np.nan_to_num(b), 0.0, None)  # a falling curve: the flat model (b = 0)
    sse = syy + 2 * b * sxy + b * b * sxx  # residual sum of squares of yc + b xc
    best = int(np.argmin(sse))
    a = float(values.mean() + b[best] * x[best].mean())
    return a, float(b[best]), float(EXPONENTS[best])


def predict_final(fractions: np.ndarray, values: np.ndarray) -> float:
    """The final value of a curve (higher is better) from its evals at `fractions` of training
    (0 < f <= 1): the saturating power law y(t) = a - b t^-c fitted to the evals and read at
    t = 1, never below the best eval seen (the sweep scores a trial by its best eval by default)
    and never more than the rise already seen above it (a wild extrapolation from a noisy
    prefix). With fewer than MIN_FIT_POINTS evals, or a fit that is not finite, the simpler
    model: the mean of the last two evals. Any predictor keeps the guarantee (the calibration
    measures its errors); a better one gives a tighter bound."""
    seen_best, last = float(values.max()), float(values[-2:].mean())
    if len(values) < MIN_FIT_POINTS:
        return seen_best if len(values) == 1 else last
    a, b, _ = fit_power_law(fractions, values)
    end = a - b
    if not math.isfinite(end):
        return last
    rise = float(values.max() - values.min())
    return min(max(end, seen_best), seen_best + rise)


@dataclass(frozen=True)
class Curve:
    """A trial's evals as fractions of its training, oriented so that higher is better."""

    steps: np.ndarray
    fractions: np.ndarray
    values: np.ndarray

    @classmethod
    def of(cls, trial: FrozenTrial, sign: float, total_steps: float) -> "Curve":
        points = sorted((s, v) for s, v in trial.intermediate_values.items() if s > 0 and math.isfinite(v))
        steps = np.array([s for s, _ in points], dtype=float)
        return cls(steps, steps / total_steps, sign * np.array([v for _, v in points], dtype=float))

    def prefix_prediction(self, k: int) -> float:
        """The predicted final from the first k evals."""
        return predict_final(self.fractions[:k], self.values[:k])


@dataclass(frozen=True)
class Calibration:
    trials: tuple[int, ...]      # the calibration trials' numbers
    scores: tuple[float, ...]    # each one's largest scaled shortfall, (final - predicted) / error_scale, over its checks
    margin: float                # q: the bound at fraction f is predicted + q x error_scale(f)

    @property
    def n(self) -> int:
        return len(self.trials)


class ConformalPruner(optuna.pruners.BasePruner):
    """Prunes a trial when the conformal upper bound on its final value is below the incumbent.

    `false_kill` is the target rate a; `prune_after` the fraction of a trial's steps before its
    first check (checks are the evals in [prune_after, 1) of training); `calibration_trials` the
    completed trials that calibrate the bound, raised to the fewest with which it exists at a.
    A trial's length is its `total_steps` user attr (the worker records it); without it, the
    calibration trials' median last eval step."""

    def __init__(self, false_kill: float = 0.05, prune_after: float = 0.5, calibration_trials: int = 0) -> None:
        if not 0.0 < float(false_kill) <= 0.5:
            raise ValueError(f"hydra.sweeper.prune_false_kill: must be in (0, 0.5], got {false_kill}")
        self.false_kill, self.prune_after = float(false_kill), float(prune_after)
        self.n_calibration = max(int(calibration_trials), min_calibration_trials(self.false_kill))
        self.calibration: Calibration | None = None
        self.reference_steps: float | None = None  # a trial's length when it does not record one
        self._predictions: dict[tuple[int, int], float] = {}

    # -- calibration ------------------------------------------------------------------------------
    def _total_steps(self, trial: FrozenTrial) -> float:
        total = trial.user_attrs.get("total_steps")
        if total:
            return float(total)
        if self.reference_steps is None:  # no calibration yet: the trial's own last eval
            return float(max(trial.intermediate_values))
        return self.reference_steps

    def _checks(self, curve: Curve) -> list[int]:
        """Prefix lengths (number of evals) at which a trial with this curve is checked."""
        return [k + 1 for k, f in enumerate(curve.fractions) if self.prune_after <= f < 1.0]

    def calibrate(self, study: Any) -> Calibration | None:
        """The frozen calibration, formed once the first `n_calibration` trials completed."""
        if self.calibration is not None:
            return self.calibration
        done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.intermediate_values and t.value is not None]
        if len(done) < self.n_calibration:
            return None
        first = sorted(done, key=lambda t: (t.datetime_complete is None, t.datetime_complete, t.number))[:self.n_calibration]
        self.reference_steps = float(np.median([max(t.intermediate_values) for t in first]))
        sign = _sign(study)
        scores = []
        for t in first:
            curve = Curve.of(t, sign, self._total_steps(t))
            final = sign * float(t.value)
            shortfalls = [(final - curve.prefix_prediction(k)) / error_scale(curve.fractions[k - 1])
                          for k in self._checks(curve)]
            scores.append(max(shortfalls) if shortfalls else -math.inf)  # never checked: never at risk
        ordered = sorted(scores)
        rank = conformal_rank(len(ordered), self.false_kill)
        assert rank is not None  # n_calibration is at least min_calibration_trials
        self.calibration = Calibration(tuple(t.number for t in first), tuple(ordered), ordered[rank - 1])
        return self.calibration

    # -- the decision -----------------------------------------------------------------------------
    def upper_bound(self, study: Any, trial: FrozenTrial) -> float | None:
        """The conformal upper bound on the trial's final value (higher is better) at its latest
        eval, or None where it may not be checked (warm-up, its last eval, no calibration yet)."""
        step = trial.last_step
        if step is None or step <= 0:
            return None
        calibration = self.calibrate(study)
        if calibration is None or trial.number in calibration.trials or not math.isfinite(calibration.margin):
            return None  # (a margin of -inf: most calibration trials had no check, unlike this one)
        curve = Curve.of(trial, _sign(study), self._total_steps(trial))
        if len(curve.steps) == 0 or curve.steps[-1] != step or not self.prune_after <= curve.fractions[-1] < 1.0:
            return None
        key = (trial.number, int(step))
        if key not in self._predictions:
            self._predictions[key] = curve.prefix_prediction(len(curve.steps))
        return self._predictions[key] + calibration.margin * error_scale(float(curve.fractions[-1]))

    def prune(self, study: Any, trial: FrozenTrial) -> bool:
        if len(study.directions) != 1:
            return False
        bound = self.upper_bound(study, trial)
        if bound is None:
            return False
        try:
            incumbent = _sign(study) * float(study.best_value)
        except ValueError:  # nothing completed
            return False
        return bound < incumbent


def _sign(study: Any) -> float:
    return 1.0 if study.direction == StudyDirection.MAXIMIZE else -1.0
