"""Hyperparameter importance with Optuna's fANOVA and PED-ANOVA evaluators.

Two evaluators because they answer different questions: fANOVA explains the variance of the
objective over the whole space; PED-ANOVA says what mattered for reaching the top quantile.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import optuna
import pandas as pd
from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial

from analysis.frames import complete, param_columns

MIN_TRIALS = 2
PED_ANOVA_QUANTILE = 0.1  # Optuna's default target quantile
PED_ANOVA_MIN_TOP = 5     # "preferable to include at least 5 trials above target_quantile" (Optuna docs)


def importance_precondition(frame: pd.DataFrame) -> str | None:
    """Why importances cannot be computed for these trials, or None when they can."""
    done = complete(frame)
    if len(done) < MIN_TRIALS:
        return f"needs at least {MIN_TRIALS} completed trials (have {len(done)})"
    varying = [c for c in param_columns(done) if done[c].astype(str).nunique(dropna=True) > 1]
    if not varying:
        return "no hyperparameter varies across the completed trials"
    return None


def _objective_target(study: optuna.Study, lower_is_better: bool) -> Callable[[FrozenTrial], float] | None:
    """Target on the first objective; None lets single-objective studies use Optuna's own handling."""
    if not len(study.directions) > 1:
        return None
    flip = lower_is_better and study.directions[0] == StudyDirection.MAXIMIZE
    return (lambda t: -t.values[0]) if flip else (lambda t: t.values[0])


def _evaluate(study: optuna.Study, evaluator: optuna.importance.BaseImportanceEvaluator,
              target: Callable[[FrozenTrial], float] | None) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental / "importances will be equal" warnings; we report instead
        result = optuna.importance.get_param_importances(study, evaluator=evaluator, target=target)
    return {k: float(v) for k, v in result.items()}


def param_importances(study: optuna.Study, frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Importance table (param, fANOVA, PED-ANOVA; normalised to sum 1) and notes on what was skipped."""
    reason = importance_precondition(frame)
    if reason is not None:
        return pd.DataFrame(columns=["param", "fANOVA", "PED-ANOVA"]), [f"Importance skipped: {reason}."]
    columns: dict[str, dict[str, float]] = {}
    notes: list[str] = []
    evaluators = {
        "fANOVA": (FanovaImportanceEvaluator(seed=0), _objective_target(study, lower_is_better=False)),
        # PED-ANOVA treats lower targets as better, so a maximised objective is negated for multi-objective.
        "PED-ANOVA": (PedAnovaImportanceEvaluator(target_quantile=PED_ANOVA_QUANTILE),
                      _objective_target(study, lower_is_better=True)),
    }
    for name, (evaluator, target) in evaluators.items():
        try:
            columns[name] = _evaluate(study, evaluator, target)
        except (RuntimeError, ValueError) as exc:  # e.g. fANOVA "zero total variance in all trees"
            notes.append(f"{name} skipped: {exc}")
            continue
        if not any(columns[name].values()):
            notes.append(f"{name}: all importances are zero (too few distinct trials for this evaluator).")
    if not columns:
        return pd.DataFrame(columns=["param", "fANOVA", "PED-ANOVA"]), notes
    top = math.ceil(PED_ANOVA_QUANTILE * len(complete(frame)))
    if "PED-ANOVA" in columns and top < PED_ANOVA_MIN_TOP:
        notes.append(f"PED-ANOVA's top-{PED_ANOVA_QUANTILE:.0%} set holds only {top} trial(s); Optuna recommends "
                     f"at least {PED_ANOVA_MIN_TOP}, so read it as indicative.")
    if "fANOVA" in columns and len(columns["fANOVA"]) < len(columns.get("PED-ANOVA", columns["fANOVA"])):
        notes.append("fANOVA only scores hyperparameters present in every completed trial.")
    table = pd.DataFrame(columns).reindex(columns=["fANOVA", "PED-ANOVA"])
    table = table.sort_values(["fANOVA", "PED-ANOVA"], ascending=False, na_position="last")
    return table.rename_axis("param").reset_index(), notes
