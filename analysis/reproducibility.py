"""Tables about seed replicates: how much of the sweep-time result survives new seeds.

Inputs are the search trials frame and the `--reproduce` frame (analysis.frames); outputs are
frames and dicts the report renders. Determinism re-runs (same seed and data_seed) are kept out
of the reproduced means: they re-draw nothing, so they would pull the mean toward the sweep score.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.frames import complete
from analysis.stats import (bootstrap_diff, crossed_components, crossed_lead_test, crossed_mean, lead_power,
                            paired_lead_test, probability_of_outperforming, summarize, welch_test)

SUMMARY_COLUMNS = ["config", "sweep_value", "n", "mean", "std", "ci_low", "ci_high", "df", "min", "max", "cv",
                   "optimism", "n_diverged", "no_variation"]


def _search_seed(search: pd.DataFrame, key: str) -> pd.Series:
    """Per search trial number, the `key` seed it ran with (sampled param, else the recorded attr)."""
    if search.empty:
        return pd.Series(dtype=float)
    col = pd.Series(np.nan, index=search.index)
    for name in (f"attr.{key}", f"param.{key}"):  # the sampled param wins where both exist
        if name in search.columns:
            col = pd.to_numeric(search[name], errors="coerce").where(lambda v: v.notna(), col)
    return pd.Series(col.to_numpy(), index=search["number"].to_numpy())


def replicates(search: pd.DataFrame, repro: pd.DataFrame | None) -> pd.DataFrame:
    """Completed replicates, long format: config (search trial number), sweep_value, value, seeds,
    kind, and the seeds the config ran with in the search (`sweep_seed`, `sweep_data_seed`)."""
    cols = ["config", "sweep_value", "value", "seed", "data_seed", "seed_kind", "number", "sweep_seed",
            "sweep_data_seed"]
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
    out["sweep_seed"] = out["config"].map(_search_seed(search, "seed")).astype(float)
    out["sweep_data_seed"] = out["config"].map(_search_seed(search, "data_seed")).astype(float)
    return out[cols].reset_index(drop=True)


def fresh(reps: pd.DataFrame, tuned_seeds: frozenset[str] | set[str] = frozenset()) -> pd.DataFrame:
    """Replicates that re-drew every seed of the trial they replicate: the only ones whose mean is
    free of the winner's curse. The search picked the trial with its own seed values, tuned or not
    (a lucky init seed or data order is part of why it won), so those values always count as
    selected: a `seed` replicate (which keeps the trial's data_seed) and a `data_seed` replicate
    (which keeps its init seed) never count, nor does any replicate, whatever its kind, that ran
    with the trial's own seed or data_seed (where the search recorded them). Determinism re-runs
    never count. `tuned_seeds` is kept for callers; the rule no longer depends on it."""
    keep = reps["seed_kind"].isin({"crossed", "paired", "both"})
    for key in ("seed", "data_seed"):
        own = f"sweep_{key}"
        if own in reps.columns and key in reps.columns:
            same = pd.to_numeric(reps[key], errors="coerce") == pd.to_numeric(reps[own], errors="coerce")
            keep &= ~same
    return reps[keep]


def per_config_summary(reps: pd.DataFrame, maximize: bool, tuned_seeds: frozenset[str] | set[str] = frozenset()
                       ) -> pd.DataFrame:
    """Mean, std, 95% CI (with its df), min/max, CV per config, and `optimism` = how much better
    the sweep score looked. A config replicated on a crossed seed grid gets the design's interval
    (`crossed_mean`: its cells share seeds, so they are not independent); others a t-interval on
    n − 1 df (`paired` replicates too: each ran on its own fresh seed pair, so they are independent).

    optimism > 0 is the winner's curse: the sweep picked a config partly for a lucky seed.
    """
    kept = fresh(reps, tuned_seeds)
    grids = crossed_grids(kept)
    rows = []
    for config, group in kept.groupby("config"):
        grid = grids.get(int(config))
        if grid is not None and (group["seed_kind"] == "crossed").all():
            s = summarize(grid.to_numpy().ravel())
            c = crossed_mean(grid.to_numpy())
            if not s["no_variation"]:
                s.update(ci_low=c["ci_low"], ci_high=c["ci_high"])
            s["df"] = c["df"]
        else:
            s = summarize(group["value"])
            s["df"] = s["n"] - 1 if s["n"] > 1 else float("nan")
        sweep_value = float(group["sweep_value"].iloc[0])
        gap = sweep_value - s["mean"] if maximize else s["mean"] - sweep_value
        rows.append({"config": int(config), "sweep_value": sweep_value, **s, "optimism": gap})
    table = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    return table.sort_values("sweep_value", ascending=not maximize, kind="stable").reset_index(drop=True)


def lead_significance(reps: pd.DataFrame, winner: int, runner_up: int, maximize: bool,
                      n_boot: int = 10_000, seed: int = 0, tuned_seeds: frozenset[str] | set[str] = frozenset()
                      ) -> dict[str, float]:
    """Is the winner better than the runner-up on fresh replicates? One-sided test in the winner's
    favour (`p_a_better`) and two-sided (`p_value`), a 95% interval of the difference, effect
    sizes and P(win). `leader` says who is better on the replicates: "winner", "runner-up" or "tie".

    `test` says which: "crossed" when both configs ran on the same seed grid: the per-cell
    differences form a crossed grid of their own (shared seeds cancel), tested with
    `crossed_lead_test`; "paired" when both ran on the same fresh seed pairs (the paired design):
    a paired t-test on the per-pair differences (`paired_lead_test`); else "welch" (independent
    replicates) with a BCa bootstrap CI beside it. `n_cells`: the cells or pairs both ran."""
    data = fresh(reps, tuned_seeds)
    a = data.loc[data["config"] == winner, "value"].to_numpy(dtype=float)
    b = data.loc[data["config"] == runner_up, "value"].to_numpy(dtype=float)
    out = {**welch_test(a, b, maximize=maximize), "test": "welch", "n_cells": 0}
    grids = crossed_grids(data)
    gw, gr = grids.get(int(winner)), grids.get(int(runner_up))
    if gw is not None and gr is not None:
        rows, cols = gw.index.intersection(gr.index), gw.columns.intersection(gr.columns)
        if len(rows) >= 2 and len(cols) >= 2:
            c = crossed_lead_test(gw.loc[rows, cols].to_numpy() - gr.loc[rows, cols].to_numpy(), maximize=maximize)
            out.update(test="crossed", n_cells=c["n"], diff=c["mean"], t=c["t"], df=c["df"], p_value=c["p_value"],
                       p_a_better=c["p_better"], ci_low=c["ci_low"], ci_high=c["ci_high"],
                       boot_ci_low=float("nan"), boot_ci_high=float("nan"))
    pairs = paired_differences(data, winner, runner_up) if out["test"] == "welch" else np.empty(0)
    if pairs.size >= 2:
        c = paired_lead_test(pairs, maximize=maximize)
        out.update(test="paired", n_cells=c["n"], diff=c["mean"], t=c["t"], df=c["df"], p_value=c["p_value"],
                   p_a_better=c["p_better"], ci_low=c["ci_low"], ci_high=c["ci_high"],
                   boot_ci_low=float("nan"), boot_ci_high=float("nan"))
    out.update(_design_power(a, b, gw, gr, out, pairs))
    gain = out["diff"] if maximize else -out["diff"]
    out["leader"] = "winner" if gain > 0 else "runner-up" if gain < 0 else "tie"
    if out["test"] == "welch":  # resampling cells as if independent would be wrong on a crossed grid
        boot = bootstrap_diff(a, b, n_boot=n_boot, seed=seed, maximize=maximize)
        out.update(boot_ci_low=boot["ci_low"], boot_ci_high=boot["ci_high"])
    if out["test"] == "paired":  # independent runs within a config: d and g mean what they say
        d = pairs * (1 if maximize else -1)
        return {**out, "p_outperform": float(np.mean((d > 0) + 0.5 * (d == 0))), "p_outperform_pairing": "same seeds"}
    if out["test"] == "crossed":  # the same seed pair for both: the share of cells the winner wins
        d = (gw.loc[rows, cols].to_numpy() - gr.loc[rows, cols].to_numpy()) * (1 if maximize else -1)
        return {**out, "p_outperform": float(np.mean((d > 0) + 0.5 * (d == 0))), "p_outperform_pairing": "same seeds",
                "cohens_d": float("nan"), "hedges_g": float("nan")}  # cells are not independent runs
    return {**out, "p_outperform": probability_of_outperforming(a, b, maximize),
            "p_outperform_pairing": "independent seeds"}


def paired_differences(reps: pd.DataFrame, winner: int, runner_up: int) -> np.ndarray:
    """The winner's score minus the runner-up's on each `paired` seed pair (seed, data_seed) both
    ran, in seed order; a pair either one lacks (a failed run) is left out of both."""
    if not {"seed", "data_seed"} <= set(reps.columns):
        return np.empty(0)
    cells = reps[reps["seed_kind"] == "paired"]
    by_pair = cells.groupby(["config", "seed", "data_seed"])["value"].mean()
    if by_pair.empty or not {int(winner), int(runner_up)} <= set(by_pair.index.get_level_values(0).astype(int)):
        return np.empty(0)
    w, r = by_pair.xs(winner, level="config"), by_pair.xs(runner_up, level="config")
    both = w.index.intersection(r.index).sort_values()
    return (w.loc[both] - r.loc[both]).to_numpy(dtype=float)


def _design_power(a: np.ndarray, b: np.ndarray, gw: pd.DataFrame | None, gr: pd.DataFrame | None,
                  test: dict, pairs: np.ndarray) -> dict[str, float]:
    """The power of the design that was run for a lead of 1 and 2 SD (SD: one run's spread, the
    two configs' replicate variances averaged), simulated with the report's own test at the
    variances this study estimated: what the data could have shown, printed beside the verdict.
    `design_size`: the grid's side (crossed), the seed pairs (paired) or the runs per config.
    A crossed grid also gets `paired_power_*`: the paired design on as many runs (S² fresh seed
    pairs), at the variance one pair's difference would have under the grid's components."""
    nan = float("nan")
    var = np.nanmean([np.var(x, ddof=1) if x.size > 1 else nan for x in (a, b)]) if a.size > 1 or b.size > 1 else nan
    out = {"run_sd": float(np.sqrt(var)) if np.isfinite(var) else nan, "power_1sd": nan, "power_2sd": nan,
           "design_size": 0, "paired_power_1sd": nan, "paired_power_2sd": nan}
    if not np.isfinite(var) or var <= 0:
        return out
    sd = float(np.sqrt(var))
    if test["test"] == "crossed" and gw is not None and gr is not None:
        rows, cols = gw.index.intersection(gr.index), gw.columns.intersection(gr.columns)
        comps = crossed_components(gw.loc[rows, cols].to_numpy() - gr.loc[rows, cols].to_numpy())
        size = min(len(rows), len(cols))
        power = lead_power("crossed", size, comps, [sd, 2 * sd])
        out["paired_power_1sd"], out["paired_power_2sd"] = lead_power("paired", size * size, [float(comps.sum())],
                                                                      [sd, 2 * sd])
    elif test["test"] == "paired":
        size, var_diff = int(pairs.size), float(np.var(pairs, ddof=1))
        if not var_diff > 0:  # identical differences: the test itself has no standard error
            return {**out, "design_size": size}
        power = lead_power("paired", size, [var_diff], [sd, 2 * sd])
    else:
        size = int(min(a.size, b.size))
        power = lead_power("welch", size, [var], [sd, 2 * sd])
    return {**out, "power_1sd": power[0], "power_2sd": power[1], "design_size": size}


def _metric_map(row: pd.Series, value: float) -> dict[str, float]:
    metrics = {c[len("metric."):]: row[c] for c in row.index if c.startswith("metric.") and pd.notna(row[c])}
    if np.isfinite(value):
        metrics.setdefault("objective", value)
    return {k: float(v) for k, v in metrics.items()}


def determinism_of(row: pd.Series) -> str | None:
    """strict | warn_only | off as the run recorded it. Studies from before the mode was recorded
    kept only the boolean `deterministic_algorithms`, which was true on CUDA too, where torch only
    warned: the run's environment (`env.cuda`, "none" where CUDA was unavailable) tells which."""
    mode = row.get("deterministic")
    if isinstance(mode, str):
        return mode
    flag = row.get("deterministic_algorithms")
    if flag is None or (isinstance(flag, float) and np.isnan(flag)):
        return None
    if not bool(flag):
        return "off"
    cuda = row.get("env.cuda")
    if not isinstance(cuda, str):
        return "on (strict on CPU, warn_only on CUDA; device not recorded)"
    return "strict" if cuda == "none" else "warn_only"


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
        grid = group.groupby(["seed", "data_seed"])["value"].mean().unstack("data_seed")
        while grid.isna().any().any():  # drop the row or column with the most holes
            holes_r, holes_c = grid.isna().sum(axis=1), grid.isna().sum(axis=0)
            grid = grid.drop(index=holes_r.idxmax()) if holes_r.max() >= holes_c.max() else grid.drop(columns=holes_c.idxmax())
        if grid.shape[0] >= 2 and grid.shape[1] >= 2:
            out[int(config)] = grid
    return out


def held_out(repro: pd.DataFrame | None, reps: pd.DataFrame, metric: str,
             tuned_seeds: frozenset[str] | set[str] = frozenset()) -> pd.DataFrame:
    """Per replicated config, over its fresh-seed replicates: the validation mean beside the mean
    and 95% interval of the same metric on data.test_split (`test_<name>`), so the optimism of
    selecting on validation shows. A config replicated on a crossed seed grid gets the design's
    interval (`crossed_mean`: cells that share a seed are not independent runs, and treating them
    as such covered 77-79%); others, `paired` replicates included (each on its own fresh seed
    pair, so independent runs), the t-interval of `summarize` on n − 1 df. `n` beside every interval.
    Empty when no replicate was scored on a test split."""
    column = "metric.test_" + metric.removeprefix("eval_")
    cols = ["config", "n", "validation_mean", "test_mean", "test_ci_low", "test_ci_high", "test_df", "no_variation"]
    if repro is None or repro.empty or column not in repro.columns or reps.empty:
        return pd.DataFrame(columns=cols)
    kept = fresh(reps, tuned_seeds).merge(repro[["number", column]], on="number", how="left")
    scored = kept.dropna(subset=[column])
    grids = crossed_grids(scored.assign(value=scored[column].astype(float)))
    rows = []
    for config, group in scored.groupby("config"):
        s = summarize(group[column].astype(float))
        df = s["n"] - 1 if s["n"] > 1 else float("nan")
        grid = grids.get(int(config))
        if grid is not None and (group["seed_kind"] == "crossed").all() and s["std"] > 0:
            c = crossed_mean(grid.to_numpy())
            s.update(n=c["n"], mean=c["mean"], ci_low=c["ci_low"], ci_high=c["ci_high"])
            df = c["df"]
        rows.append({"config": int(config), "n": s["n"], "validation_mean": float(group["value"].mean()),
                     "test_mean": s["mean"], "test_ci_low": s["ci_low"], "test_ci_high": s["ci_high"],
                     "test_df": df, "no_variation": bool(s["no_variation"])})
    return pd.DataFrame(rows, columns=cols)
