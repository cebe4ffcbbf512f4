"""Everything the report needs about one study, loaded once from the Optuna storage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
import pandas as pd

from analysis.frames import complete, reproduce_frame, reproduce_study_name, trials_frame
from analysis.reproducibility import replicates


@dataclass
class ReportData:
    """A study, its trials/replicates as frames, and the attrs that steer the wording."""

    study: optuna.Study
    attrs: dict[str, Any]
    frame: pd.DataFrame            # all search trials
    done: pd.DataFrame             # completed search trials with a finite objective
    repro: pd.DataFrame | None     # the --reproduce study's trials, None when that study is absent
    reps: pd.DataFrame             # completed replicates, long format (analysis.reproducibility.replicates)

    @property
    def name(self) -> str:
        return self.study.study_name

    @property
    def metric(self) -> str:
        return str(self.attrs.get("objective_metric") or "objective")

    @property
    def directions(self) -> list[str]:
        return [d.name.lower() for d in self.study.directions]

    @property
    def maximize(self) -> bool:
        return self.directions[0] == "maximize"

    @property
    def reproduce_name(self) -> str:
        return reproduce_study_name(self.name)

    @property
    def seed_tuned(self) -> bool:
        """The study says so, or (older studies) a seed column was sampled."""
        if "seed_tuned" in self.attrs:
            return bool(self.attrs["seed_tuned"])
        return any(c in self.frame.columns for c in ("param.seed", "param.data_seed"))

    @property
    def points_scale(self) -> float:
        """×100 for fractional metrics (accuracy, F1) so differences read as points; else 1."""
        v = self.done["value"].to_numpy(dtype=float) if not self.done.empty else np.array([])
        return 100.0 if v.size and np.all((v >= 0) & (v <= 1)) else 1.0

    def best(self) -> pd.Series | None:
        """Best completed trial by the (first) objective; ties go to the earliest trial."""
        if self.done.empty:
            return None
        order = self.done.sort_values(["value", "number"], ascending=[not self.maximize, True])
        return order.iloc[0]


def load_report_data(storage: optuna.storages.BaseStorage, study_name: str) -> ReportData:
    """Load the search study, its trials frame and (if present) its reproduce companion."""
    study = optuna.load_study(study_name=study_name, storage=storage)
    frame = trials_frame(study)
    repro = reproduce_frame(storage, study_name)
    return ReportData(study=study, attrs=dict(study.user_attrs), frame=frame, done=complete(frame),
                      repro=repro, reps=replicates(frame, repro))
