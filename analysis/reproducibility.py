"""Tables about seed replicates: how much of the sweep-time result survives new seeds.

Inputs are the search trials frame and the `--reproduce` frame (analysis.frames); outputs are
frames and dicts the report renders. Determinism re-runs (same seed and data_seed) are kept out
of the reproduced means: they re-draw nothing, so they would pull the mean toward the sweep score.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.frames import complete
from analysis.stats import SEED_KINDS, bootstrap_diff, summarize, welch_test

SUMMARY_COLUMNS = ["config", "sweep_value", "n", "mean", "std", "ci_low", "ci_high", "min", "max", "cv", "optimism"]


def replicates(search: pd.DataFrame, repro: pd.DataFrame | None) -> pd.DataFrame:
    """Completed replicates, long format: config (search trial number), sweep_value, value, seeds, kind."""
    cols = ["config", "sweep_value", "value", "seed", "data_seed", "seed_kind", "number"]
    if repro is None or repro.empty:
        return pd.DataFrame(columns=cols)
    done = complete(repro).dropna(subset=["replicates_trial"])
    if done.empty:
        return pd.DataFrame(columns=cols)
    sweep = search.set_index("number")["value"] if not search.empty else pd.Series(dtype=float)
    out = pd.DataFrame({
        "config": done["replicates_trial"].astype(int),
        "value": done["value"].astype(float),
        "seed": done["seed"], "data_seed": done["data_seed"],
        "seed_kind": done["seed_kind"].fillna("unknown").astype(str),
        "number": done["number"],
    })
    out["sweep_value"] = out["config"].map(sweep).astype(float)
    return out[cols].reset_index(drop=True)


def sampled(reps: pd.DataFrame) -> pd.DataFrame:
    """Replicates that drew new randomness (seed / data_seed / both)."""
    return reps[reps["seed_kind"].isin(SEED_KINDS)]


def fresh(reps: pd.DataFrame, tuned_seeds: frozenset[str] | set[str] = frozenset()) -> pd.DataFrame:
    """Replicates that re-drew every seed the search selected: the only ones whose mean is free of
    the winner's curse. A `data_seed` replicate keeps the trial's init seed, so it is dropped when
    the search tuned `seed` (and a `seed` replicate when it tuned `data_seed`); `both` always stays."""
    kinds = set(SEED_KINDS)  # crossed and both re-draw every seed
    if "seed" in tuned_seeds:
        kinds.discard("data_seed")
    if "data_seed" in tuned_seeds:
        kinds.discard("seed")
    return reps[reps["seed_kind"].isin(kinds)]


def per_config_summary(reps: pd.DataFrame, maximize: bool, tuned_seeds: frozenset[str] | set[str] = frozenset()
                       ) -> pd.DataFrame:
    """Mean, std, 95% CI, min/max, CV per config, and `optimism` = how much better the sweep score looked.

    optimism > 0 is the winner's curse: the sweep picked a config partly for a lucky seed.
    """
    rows = []
    for config, group in fresh(reps, tuned_seeds).groupby("config"):
        s = summarize(group["value"])
        sweep_value = float(group["sweep_value"].iloc[0])
        gap = sweep_value - s["mean"] if maximize else s["mean"] - sweep_value
        rows.append({"config": int(config), "sweep_value": sweep_value, **s, "optimism": gap})
    table = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    return table.sort_values("sweep_value", ascending=not maximize, kind="stable").reset_index(drop=True)


def lead_significance(reps: pd.DataFrame, winner: int, runner_up: int, maximize: bool,
                      n_boot: int = 10_000, seed: int = 0, tuned_seeds: frozenset[str] | set[str] = frozenset()
                      ) -> dict[str, float]:
    """Welch test (one-sided in the winner's favour, and two-sided), Welch t-interval of the
    difference, effect size, bootstrap CI and P(win) for the winner's replicates vs the runner-up's.
    `leader` says who is better on the replicates: "winner", "runner-up" or "tie"."""
    data = fresh(reps, tuned_seeds)
    a = data.loc[data["config"] == winner, "value"].to_numpy(dtype=float)
    b = data.loc[data["config"] == runner_up, "value"].to_numpy(dtype=float)
    welch = welch_test(a, b, maximize=maximize)
    gain = welch["diff"] if maximize else -welch["diff"]
    welch["leader"] = "winner" if gain > 0 else "runner-up" if gain < 0 else "tie"
    boot = bootstrap_diff(a, b, n_boot=n_boot, seed=seed, maximize=maximize)
    return {**welch, "boot_ci_low": boot["ci_low"], "boot_ci_high": boot["ci_high"],
            "p_outperform": boot["p_outperform"]}


def _metric_map(row: pd.Series, value: float) -> dict[str, float]:
    metrics = {c[len("metric."):]: row[c] for c in row.index if c.startswith("metric.") and pd.notna(row[c])}
    if np.isfinite(value):
        metrics.setdefault("objective", value)
    return {k: float(v) for k, v in metrics.items()}


def determinism_of(row: pd.Series) -> str | None:
    """strict | warn_only | off as the run recorded it; studies from before the mode was recorded
    kept only whether deterministic algorithms were on, which then meant strict on CPU."""
    mode = row.get("deterministic")
    if isinstance(mode, str):
        return mode
    flag = row.get("deterministic_algorithms")
    if flag is None or (isinstance(flag, float) and np.isnan(flag)):
        return None
    return "strict" if bool(flag) else "off"


def determinism_check(search: pd.DataFrame, repro: pd.DataFrame | None) -> pd.DataFrame:
    """Each `determinism` re-run vs its original trial: identical metrics? identical adapter hash?

    The original is the reference; two re-runs of the same trial that both match it match each other.
    """
    cols = ["config", "replicate", "sweep_value", "rerun_value", "metrics_compared", "metrics_identical",
            "max_abs_metric_diff", "adapter_identical", "deterministic"]
    if repro is None or repro.empty or "seed_kind" not in repro.columns:
        return pd.DataFrame(columns=cols)
    reruns = complete(repro)
    reruns = reruns[reruns["seed_kind"] == "determinism"]
    originals = search.set_index("number") if not search.empty else pd.DataFrame()
    rows = []
    for _, rerun in reruns.iterrows():
        config = int(rerun["replicates_trial"])
        if config not in originals.index:
            continue
        orig = originals.loc[config]
        ref = _metric_map(orig, float(orig["value"]))
        new = _metric_map(rerun, float(rerun["value"]))
        shared = sorted(set(ref) & set(new))
        diffs = [abs(ref[k] - new[k]) for k in shared]
        h_ref, h_new = orig.get("adapter_sha256"), rerun.get("adapter_sha256")
        adapter = None if not (isinstance(h_ref, str) and isinstance(h_new, str)) else h_ref == h_new
        rows.append({
            "config": config, "replicate": int(rerun["number"]), "sweep_value": float(orig["value"]),
            "rerun_value": float(rerun["value"]), "metrics_compared": len(shared),
            "metrics_identical": bool(shared) and max(diffs) == 0.0,
            "max_abs_metric_diff": max(diffs) if diffs else float("nan"),
            "adapter_identical": adapter, "deterministic": determinism_of(rerun),
        })
    return pd.DataFrame(rows, columns=cols)


def environment_table(repro: pd.DataFrame | None) -> pd.DataFrame:
    """Distinct environment fingerprints (library versions, device) among replicates, with run counts."""
    if repro is None or repro.empty:
        return pd.DataFrame()
    env_cols = [c for c in repro.columns if c.startswith("env.")]
    if not env_cols:
        return pd.DataFrame()
    data = complete(repro)[env_cols].astype(str)
    table = data.groupby(env_cols, dropna=False).size().rename("runs").reset_index()
    return table.rename(columns={c: c[len("env."):] for c in env_cols})


def crossed_grids(reps: pd.DataFrame) -> dict[int, pd.DataFrame]:
    """Per config, its crossed replicates as a complete init-seed × data-seed grid (rows and
    columns with a missing cell dropped: a failed run must not bias the components)."""
    out: dict[int, pd.DataFrame] = {}
    cells = reps[reps["seed_kind"] == "crossed"]
    for config, group in cells.groupby("config"):
        grid = group.pivot_table(index="seed", columns="data_seed", values="value", aggfunc="mean")
        while grid.isna().any().any():  # drop the row or column with the most holes
            holes_r, holes_c = grid.isna().sum(axis=1), grid.isna().sum(axis=0)
            grid = grid.drop(index=holes_r.idxmax()) if holes_r.max() >= holes_c.max() else grid.drop(columns=holes_c.idxmax())
        if grid.shape[0] >= 2 and grid.shape[1] >= 2:
            out[int(config)] = grid
    return out
