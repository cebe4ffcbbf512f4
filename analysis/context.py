"""Everything the report needs about one study, loaded once from the Optuna storage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
import pandas as pd

from analysis.frames import complete, reproduce_frame, reproduce_study_name, trials_frame
from analysis.reproducibility import replicates
from sweeps.search.startup import INFORMED, STUDY_ATTR as INFORMED_STUDY_ATTR, TRIAL_ATTR as STARTUP_ATTR


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
    def tuned_seeds(self) -> frozenset[str]:
        """The seeds the search selected (in its search space): a replicate that keeps one of them
        is not fresh evidence, it carries the selection's luck."""
        space = self.attrs.get("search_space") or {}
        keys = set(space) | {c[len("param."):] for c in self.frame.columns if c.startswith("param.")}
        return frozenset(k for k in ("seed", "data_seed") if k in keys)

    @property
    def points_scale(self) -> float:
        """×100 for fractional metrics (accuracy, F1) so differences read as points; else 1."""
        v = self.done["value"].to_numpy(dtype=float) if not self.done.empty else np.array([])
        return 100.0 if v.size and np.all((v >= 0) & (v <= 1)) else 1.0

    def expected_max_sample(self) -> tuple[np.ndarray, str]:
        """The trial scores the expected-max estimator (Dodge et al. 2019) may treat as i.i.d. draws
        of the search space, and a label saying which they are.

        Completed trials alone are a biased sample (the pruner removed the worst), so pruned trials
        count at their last reported value. TPE's proposals after its random start-up depend on
        earlier results, so with TPE only the start-up trials are used when there are enough of them.
        The enqueued base config (#0, `attr.base`) is left out: the user chose it, it was not drawn;
        so are the trials of an informed start-up (`attr.startup`: the prior's config at spread rates).
        """
        finished = self.frame[self.frame["state"].isin(["COMPLETE", "PRUNED"])]
        if "attr.base" in finished.columns:  # the enqueued base config is the user's pick, not a random draw
            finished = finished[finished["attr.base"].astype("boolean").fillna(False) == False]  # noqa: E712
        if f"attr.{STARTUP_ATTR}" in finished.columns:  # hydra.sweeper.startup=informed: placed, not drawn
            finished = finished[finished[f"attr.{STARTUP_ATTR}"] != INFORMED]
        values = np.where(finished["state"] == "COMPLETE", finished["value"], finished["last_intermediate"])
        ok = np.isfinite(values.astype(float))
        finished, values = finished[ok], values[ok].astype(float)
        pruned = int((finished["state"] == "PRUNED").sum())
        with_pruned = f", {pruned} pruned at their last reported value" if pruned else ""
        sampler = str(self.attrs.get("sampler") or "").lower()
        if sampler == "random":
            return values, f"all {len(values)} finished random-search trials (i.i.d. draws{with_pruned})"
        if sampler == "tpe" and INFORMED_STUDY_ATTR not in self.attrs:  # informed: TPE had no random start-up
            startup = int((self.attrs.get("sampler_kwargs") or {}).get("n_startup_trials", 10))
            first = (finished["number"] < startup).to_numpy()
            if first.sum() >= 2:
                return values[first], (f"the {int(first.sum())} finished trials of TPE's random start-up (the first "
                                       f"{startup}; later proposals depend on earlier results, so are not i.i.d.)")
        return values, (f"all {len(values)} finished trials{with_pruned}; the {sampler or 'sampler'}'s proposals "
                        "depend on earlier results, so they are not i.i.d. draws and the curve is indicative only")

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
