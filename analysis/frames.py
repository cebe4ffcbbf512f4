"""Flat pandas frames from Optuna studies and MLflow runs: the single input format of the analysis.

Column conventions: `param.<key>` for sampled hyperparameters, `metric.<name>` for the final eval
metrics a trial stored in its `metrics` user attr, `env.<key>` for a replicate's environment.
`value` is always the objective (the first value of a multi-objective study).
"""

from __future__ import annotations

from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial

from sweeps.search.storage import MEMORY_SKIP_ATTR, REPRODUCE_SUFFIX

# User attrs promoted to their own columns (the rest go to `attr.<key>` when scalar).
TRIAL_ATTRS = ("mlflow_run_id", "trainable_params", "total_params", "train_runtime_s", "fail_reason",
               "retry_of", "adapter_sha256")
REPLICATE_ATTRS = ("replicates_trial", "seed", "data_seed", "seed_kind", "mlflow_run_id", "adapter_sha256",
                   "deterministic", "deterministic_algorithms")


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _trial_row(trial: FrozenTrial, promoted: tuple[str, ...]) -> dict[str, Any]:
    values = trial.values or []
    row: dict[str, Any] = {
        "number": trial.number,
        "state": "SKIPPED" if MEMORY_SKIP_ATTR in trial.user_attrs else trial.state.name,  # over max_memory_gb
        "value": values[0] if values else float("nan"),
        "datetime_start": trial.datetime_start,
        "datetime_complete": trial.datetime_complete,
        "duration_s": trial.duration.total_seconds() if trial.duration is not None else float("nan"),
        "n_intermediate": len(trial.intermediate_values),
        "last_step": max(trial.intermediate_values) if trial.intermediate_values else None,
        "last_intermediate": (trial.intermediate_values[max(trial.intermediate_values)]
                              if trial.intermediate_values else float("nan")),
    }
    for i, v in enumerate(values[1:], start=1):
        row[f"value_{i}"] = v
    for key, v in trial.params.items():
        row[f"param.{key}"] = v
    attrs = trial.user_attrs
    for key in promoted:
        row[key] = attrs.get(key)
    for name, v in (attrs.get("metrics") or {}).items():
        row[f"metric.{name}"] = v
    for key, v in (attrs.get("environment") or {}).items():
        row[f"env.{key}"] = v
    for key, v in attrs.items():
        if key not in promoted and key not in ("metrics", "environment") and _scalar(v):
            row[f"attr.{key}"] = v
    return row


def _frame(trials: list[FrozenTrial], promoted: tuple[str, ...]) -> pd.DataFrame:
    base = ["number", "state", "value", "duration_s", *promoted]
    if not trials:
        return pd.DataFrame(columns=base)
    return pd.DataFrame([_trial_row(t, promoted) for t in trials]).sort_values("number").reset_index(drop=True)


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per search trial (every state): number, state, value(s), params, attrs, metrics."""
    return _frame(study.get_trials(deepcopy=False), TRIAL_ATTRS)


def param_columns(frame: pd.DataFrame) -> list[str]:
    """The `param.<key>` columns, in frame order."""
    return [c for c in frame.columns if c.startswith("param.")]


def complete(frame: pd.DataFrame) -> pd.DataFrame:
    """Completed trials with a finite objective: the population every statistic is computed on."""
    if frame.empty:
        return frame
    done = frame[(frame["state"] == "COMPLETE")]
    return done[pd.to_numeric(done["value"], errors="coerce").notna()]


def reproduce_study_name(study_name: str) -> str:
    """Name of the companion study holding seed replicates of `study_name`."""
    return study_name + REPRODUCE_SUFFIX


def reproduce_frame(storage: optuna.storages.BaseStorage, study_name: str) -> pd.DataFrame | None:
    """One row per replicate in `<study_name>--reproduce`, or None when that study does not exist.

    Columns: number, state, value, replicates_trial, seed, data_seed, seed_kind, mlflow_run_id,
    adapter_sha256, deterministic (strict | warn_only | off; older studies: the boolean
    deterministic_algorithms), metric.*, env.*.
    """
    name = reproduce_study_name(study_name)
    if name not in optuna.get_all_study_names(storage):
        return None
    study = optuna.load_study(study_name=name, storage=storage)
    return _frame(study.get_trials(deepcopy=False), REPLICATE_ATTRS)


def mlflow_runs_frame(tracking_uri: str, experiment_names: list[str], study_name: str | None = None,
                      parent_run_id: str | None = None) -> pd.DataFrame:
    """MLflow runs of a sweep via `mlflow.search_runs` (children of the parent and/or tagged with the study).

    Restores the process-wide tracking URI afterwards so callers (the sweep) are unaffected.
    """
    import mlflow  # heavy; only needed when MLflow runs are wanted

    clauses = []
    if study_name is not None:
        escaped = study_name.replace("'", "\\'")
        clauses.append(f"tags.`optuna.study_name` = '{escaped}'")
    if parent_run_id is not None:
        clauses.append(f"tags.`mlflow.parentRunId` = '{parent_run_id}'")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        runs = mlflow.search_runs(experiment_names=experiment_names, filter_string=" and ".join(clauses),
                                  output_format="pandas")
    finally:
        mlflow.set_tracking_uri(previous)
    if "tags.optuna.trial_number" in runs.columns:
        runs["trial_number"] = pd.to_numeric(runs["tags.optuna.trial_number"], errors="coerce")
    return runs

