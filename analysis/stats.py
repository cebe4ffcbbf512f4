"""Statistics for sweep reports: expected max (Dodge 2019), seed-variance summaries and tests.

Everything here is a pure function of numbers or frames so it can be checked against hand
computations; the report decides how to phrase the results.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as st
from scipy.special import gammaln

from sweeps.seed_stats import interval_text, summarize  # noqa: F401  (the report's names for them)

# kinds that sample randomness; "determinism" re-runs one seed. crossed: a cell of the
# init seed × data-order seed grid (both fresh); paired: one of S² fresh (init, data-order) seed
# pairs shared by the configs; the others: the one-at-a-time design.
SEED_KINDS = ("crossed", "paired", "seed", "data_seed", "both")


def _finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    arr = np.asarray(values, dtype=float).ravel()
    return arr[np.isfinite(arr)]


def _max_weights(values: Sequence[float], n_max: int | None, maximize: bool) -> tuple[np.ndarray, np.ndarray]:
    """Sorted values (best last) and, for n = 1..n_max, the weight of each order statistic in the
    average of the best of every n-subset of the N values: C(i−1, n−1) / C(N, n) for the i-th
    smallest. Minimisation mirrors maximisation (the best is the smallest)."""
    v = _finite(values)
    if v.size == 0:
        raise ValueError("expected max needs at least one finite value")
    n_max = v.size if n_max is None else int(n_max)
    if not 1 <= n_max <= v.size:
        raise ValueError(f"n_max: {n_max}; the estimate from {v.size} trials cannot look past {v.size} (allowed 1..{v.size})")
    sign = 1.0 if maximize else -1.0
    ordered = np.sort(sign * v)
    i = np.arange(1, v.size + 1)[None, :]
    n = np.arange(1, n_max + 1)[:, None]
    log_w = (gammaln(i) - gammaln(n) - gammaln(i - n + 1)) - (gammaln(v.size + 1) - gammaln(n + 1) - gammaln(v.size - n + 1))
    weights = np.where(i >= n, np.exp(np.where(i >= n, log_w, 0.0)), 0.0)
    return sign * ordered, weights


def expected_max(values: Sequence[float], n_max: int | None = None, maximize: bool = True) -> np.ndarray:
    """E[best of n trials], n = 1..n_max (at most N, the default), estimated without bias: the
    average over every n-subset of the N trials of its best (Dodge et al. 2021, "Expected
    validation performance and estimation of a random variable's maximum"). The plug-in estimator
    of Dodge et al. 2019 (draws with replacement from the empirical CDF) runs low: 1.66 σ at
    N = 20 for a true 1.87 σ. It answers "what would n of these trials have found?" for n ≤ N
    only; it cannot look past N. With maximize=False it is the expected minimum."""
    support, weights = _max_weights(values, n_max, maximize)
    return weights @ support


def expected_max_std(values: Sequence[float], n_max: int | None = None, maximize: bool = True) -> np.ndarray:
    """Std of the best of n trials over the n-subsets of the N trials (the band around the curve)."""
    support, weights = _max_weights(values, n_max, maximize)
    mean = weights @ support
    return np.sqrt(np.clip(weights @ support**2 - mean**2, 0.0, None))


def welch_test(a: Sequence[float], b: Sequence[float], maximize: bool | None = None,
               confidence: float = 0.95) -> dict[str, float]:
    """Welch's t-test (unequal variances) with Cohen's d and Hedges' g, for A − B.

    `p_value` is two-sided and says nothing of the direction. With `maximize` given, `p_a_better`
    is the one-sided p-value of "A is better than B" (greater when maximising, smaller when
    minimising): small only when A leads, near 1 when B does. `ci_low`/`ci_high` is the Welch
    t-interval for the difference of means, whose coverage holds at small n for normal data (a
    percentile bootstrap of 3 replicates covers far less than it claims)."""
    x, y = _finite(a), _finite(b)
    nan = float("nan")
    out = {"n_a": int(x.size), "n_b": int(y.size),
           "mean_a": float(x.mean()) if x.size else nan, "mean_b": float(y.mean()) if y.size else nan}
    out["diff"] = out["mean_a"] - out["mean_b"]
    if x.size < 2 or y.size < 2:
        return {**out, "t": nan, "df": nan, "p_value": nan, "p_a_better": nan, "ci_low": nan, "ci_high": nan,
                "cohens_d": nan, "hedges_g": nan}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # zero variance in both groups → nan, reported as such
        res = st.ttest_ind(x, y, equal_var=False)
        one_sided = nan if maximize is None else float(
            st.ttest_ind(x, y, equal_var=False, alternative="greater" if maximize else "less").pvalue)
    se = float(np.sqrt(x.var(ddof=1) / x.size + y.var(ddof=1) / y.size))
    if se > 0 and np.isfinite(res.df):
        half = float(st.t.ppf(0.5 + confidence / 2, res.df)) * se
        low, high = out["diff"] - half, out["diff"] + half
    else:
        low = high = out["diff"]
    pooled = np.sqrt(((x.size - 1) * x.var(ddof=1) + (y.size - 1) * y.var(ddof=1)) / (x.size + y.size - 2))
    if pooled > 0:
        d = out["diff"] / pooled
    else:
        d = nan if out["diff"] == 0 else float(np.sign(out["diff"]) * np.inf)
    g = d * (1.0 - 3.0 / (4.0 * (x.size + y.size) - 9.0))
    return {**out, "t": float(res.statistic), "df": float(res.df), "p_value": float(res.pvalue),
            "p_a_better": one_sided, "ci_low": float(low), "ci_high": float(high),
            "cohens_d": float(d), "hedges_g": float(g)}


def _mean_diff(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def probability_of_outperforming(a: Sequence[float], b: Sequence[float], maximize: bool = True) -> float:
    """P(a random run of A beats one of B), ties counted half (Bouthillier et al. 2021)."""
    x, y = _finite(a), _finite(b)
    if x.size == 0 or y.size == 0:
        return float("nan")
    u = st.mannwhitneyu(x, y).statistic / (x.size * y.size)  # P(A > B) + ½ P(A = B)
    return float(u if maximize else 1.0 - u)


def bootstrap_diff(a: Sequence[float], b: Sequence[float], n_boot: int = 10_000, seed: int = 0,
                   maximize: bool = True, confidence: float = 0.95) -> dict[str, float]:
    """Mean difference A − B with a BCa bootstrap CI and P(A outperforms B). At a handful of
    replicates every bootstrap interval is too narrow; the report leads with welch_test's
    t-interval and shows this one only as a distribution-free check."""
    x, y = _finite(a), _finite(b)
    nan = float("nan")
    diff = float(x.mean() - y.mean()) if x.size and y.size else nan
    low = high = nan
    if x.size >= 2 and y.size >= 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # degenerate (all-equal) samples give a zero-width CI, which is right
            res = st.bootstrap((x, y), _mean_diff, n_resamples=n_boot, confidence_level=confidence,
                               method="BCa", vectorized=True, rng=np.random.default_rng(seed))
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return {"diff": diff, "ci_low": low, "ci_high": high,
            "p_outperform": probability_of_outperforming(x, y, maximize), "n_boot": int(n_boot)}


def _better(a: float, b: float, maximize: bool) -> float:
    if a == b:
        return 0.5
    return float((a > b) == maximize)


def rank_stability(per_config_scores: pd.DataFrame, maximize: bool = True) -> dict[str, object]:
    """Does the sweep-time ranking survive re-running with new seeds?

    `per_config_scores`: long frame, one row per replicate, columns `config`, `sweep_value`
    (the score the sweep saw) and `value` (a replicate's score); optional `seed`/`data_seed`
    pair the winner's and runner-up's replicates run with the same seeds.
    """
    df = per_config_scores.dropna(subset=["value"])
    per = df.groupby("config").agg(sweep_value=("sweep_value", "first"), mean=("value", "mean"), n=("value", "size"))
    out: dict[str, object] = {"n_configs": int(len(per)), "kendall_tau": float("nan"), "kendall_p": float("nan"),
                              "sweep_winner": None, "reproduced_winner": None, "winner_stays": None,
                              "runner_up": None, "winner_beats_runner_up": float("nan"), "n_pairs": 0,
                              "pairing": None}
    if per.empty:
        return out
    order = per.sort_values("sweep_value", ascending=not maximize, kind="stable")
    out["sweep_winner"] = order.index[0]
    out["reproduced_winner"] = (per["mean"].idxmax() if maximize else per["mean"].idxmin())
    out["winner_stays"] = bool(out["sweep_winner"] == out["reproduced_winner"])
    if len(per) < 2:
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # constant input → nan tau
        tau = st.kendalltau(per["sweep_value"], per["mean"])
    out["kendall_tau"], out["kendall_p"] = float(tau.statistic), float(tau.pvalue)
    winner, runner = order.index[0], order.index[1]
    out["runner_up"] = runner
    w, r = df[df["config"] == winner], df[df["config"] == runner]
    keys = [k for k in ("seed", "data_seed") if k in df.columns]
    pairs = w.merge(r, on=keys, suffixes=("_w", "_r")) if keys else pd.DataFrame()
    if len(pairs):
        wins = [_better(a, b, maximize) for a, b in zip(pairs["value_w"], pairs["value_r"], strict=True)]
        out["pairing"] = "same-seed"
    else:
        wins = [_better(a, b, maximize) for a in w["value"] for b in r["value"]]
        out["pairing"] = "all-pairs"
    out["n_pairs"] = len(wins)
    out["winner_beats_runner_up"] = float(np.mean(wins)) if wins else float("nan")
    return out


def variance_by_seed_kind(frame: pd.DataFrame, value: str = "value", config: str = "config") -> pd.DataFrame:
    """Per config and seed kind (seed / data_seed / both): n, mean, std, variance of the metric.

    Separates init-seed noise from data-order noise (Dodge et al. 2020 found them comparable).
    """
    df = frame[frame["seed_kind"].isin(SEED_KINDS)].dropna(subset=[value])
    if df.empty:
        return pd.DataFrame(columns=[config, "seed_kind", "n", "mean", "std", "var"])
    g = df.groupby([config, "seed_kind"])[value]
    table = pd.DataFrame({"n": g.size(), "mean": g.mean(), "std": g.std(ddof=1), "var": g.var(ddof=1)}).reset_index()
    table["seed_kind"] = pd.Categorical(table["seed_kind"], categories=list(SEED_KINDS), ordered=True)
    return table.sort_values([config, "seed_kind"]).reset_index(drop=True).astype({"seed_kind": str})


def pareto_front(points: Sequence[Sequence[float]] | np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Boolean mask of non-dominated points; `directions` holds "maximize"/"minimize" per column."""
    p = np.asarray(points, dtype=float)
    if p.ndim != 2 or p.shape[1] != len(directions):
        raise ValueError("points must be (n, len(directions))")
    sign = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    q = p * sign  # everything as minimisation
    ok = np.all(np.isfinite(q), axis=1)
    mask = np.zeros(len(q), dtype=bool)
    for i in np.flatnonzero(ok):
        others = q[ok]
        dominated = np.any(np.all(others <= q[i], axis=1) & np.any(others < q[i], axis=1))
        mask[i] = not dominated
    return mask


# -- crossed seed design (Dodge et al. 2020): init seed × data-order seed --------------------------
SEED_SOURCES = ("init seed", "data order", "interaction + residual")


def grid_mean_squares(grids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ANOVA mean squares of each (..., I, J) crossed grid, one run per cell: rows (init seeds),
    columns (data-order seeds) and the residual; vectorised."""
    g = np.asarray(grids, dtype=float)
    i, j = g.shape[-2], g.shape[-1]
    rows, cols = g.mean(axis=-1), g.mean(axis=-2)
    grand = g.mean(axis=(-2, -1))
    ms_rows = j * ((rows - grand[..., None]) ** 2).sum(axis=-1) / (i - 1)
    ms_cols = i * ((cols - grand[..., None]) ** 2).sum(axis=-1) / (j - 1)
    resid = g - rows[..., :, None] - cols[..., None, :] + grand[..., None, None]
    return ms_rows, ms_cols, (resid**2).sum(axis=(-2, -1)) / ((i - 1) * (j - 1))


def crossed_components(grids: np.ndarray) -> np.ndarray:
    """Two-way random-effects variance components of crossed grids, one run per cell.

    `grids`: (..., I, J) scores, rows = init seeds, columns = data-order seeds. Method-of-moments
    (ANOVA) estimators: E[MS_rows] = σ²_e + J σ²_init, E[MS_cols] = σ²_e + I σ²_data, E[MS_e] = σ²_e,
    where σ²_e holds the seed × data interaction and run noise (one run per cell cannot separate
    them). Negative estimates are truncated at 0. Returns (..., 3): init, data order, residual.
    """
    g = np.asarray(grids, dtype=float)
    i, j = g.shape[-2], g.shape[-1]
    if i < 2 or j < 2:
        raise ValueError(f"a crossed grid needs at least 2 init and 2 data seeds, got {i} x {j}")
    ms_rows, ms_cols, ms_e = grid_mean_squares(g)
    return np.stack([np.clip((ms_rows - ms_e) / j, 0, None), np.clip((ms_cols - ms_e) / i, 0, None), ms_e], axis=-1)


def crossed_se_df(grids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Standard error and Satterthwaite df of the mean of each (..., I, J) crossed grid under the
    two-way random-effects model (components truncated at 0, as REML would refit them); vectorised.
    Intervals of a mean use it; the lead test uses `crossed_lead_se_df`."""
    g = np.asarray(grids, dtype=float)
    i, j = g.shape[-2], g.shape[-1]
    ms_r, ms_c, ms_e = grid_mean_squares(g)
    a, b = (ms_r > ms_e).astype(float), (ms_c > ms_e).astype(float)  # components estimated above 0
    v = a * ms_r + b * ms_c + (1 - a - b) * ms_e  # = J·σ̂²_init + I·σ̂²_data + σ̂²_e
    denom = a * ms_r**2 / (i - 1) + b * ms_c**2 / (j - 1) + (1 - a - b) ** 2 * ms_e**2 / ((i - 1) * (j - 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.where(denom > 0, v**2 / np.where(denom > 0, denom, 1.0), np.inf)
    return np.sqrt(np.clip(v, 0.0, None) / (i * j)), df


def crossed_lead_se_df(grids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Standard error and df of the mean of each (..., I, J) grid of per-cell differences, for the
    lead test: SE² = (MS_init + MS_data) / (IJ), vectorised so `lead_power` runs the very test.

    Why not the unbiased (MS_init + MS_data − MS_e) / (IJ)? Its Satterthwaite df collapse (a
    negative term), and truncating components at 0 (`crossed_se_df`) keeps that cost. Leaving
    −MS_e out overstates the variance by σ²_e / (IJ), never understates it, and a sum of two
    positive mean squares keeps Satterthwaite's df between min(I, J) − 1 and I + J − 2. By
    simulation (bench/lead_power.py) it is more powerful than both at every noise mix; its size is
    at most alpha (5.0-5.3% only where cells carry no residual noise at all). On a non-square grid (a run lost) df = min(I, J) − 1, Hsu's bound, which is
    conservative for any mix (Satterthwaite reached 6% there)."""
    g = np.asarray(grids, dtype=float)
    i, j = g.shape[-2], g.shape[-1]
    ms_r, ms_c, _ = grid_mean_squares(g)
    v = ms_r + ms_c
    denom = ms_r**2 / (i - 1) + ms_c**2 / (j - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.where(denom > 0, v**2 / np.where(denom > 0, denom, 1.0), np.inf)
    if i != j:
        df = np.full_like(v, float(min(i, j) - 1))
    return np.sqrt(v / (i * j)), df


def t_summary(grid: np.ndarray, se: float, df: float, confidence: float, maximize: bool | None) -> dict[str, float]:
    """Mean of a crossed grid with its t interval and p-values, from a standard error and degrees of
    freedom; no variation seen (se 0) gives no interval and no test, never a zero-width interval.
    `p_better` is one-sided in the direction `maximize` says (NaN when it is None)."""
    mean, se, df, nan = float(grid.mean()), float(se), float(df), float("nan")
    if se > 0:
        half = float(st.t.ppf(0.5 + confidence / 2, df)) * se
        t = mean / se
        p_two = float(2 * st.t.sf(abs(t), df))
        p_one = nan if maximize is None else float(st.t.sf(t, df) if maximize else st.t.cdf(t, df))
    else:
        half, t, p_two, p_one = nan, nan, nan, nan
    return {"n": int(grid.size), "shape": grid.shape, "mean": mean, "se": se, "df": df, "ci_low": mean - half,
            "ci_high": mean + half, "t": t, "p_value": p_two, "p_better": p_one}


def crossed_lead_test(grid: np.ndarray, maximize: bool, confidence: float = 0.95) -> dict[str, float]:
    """Does the first config lead? `grid`: its score minus the other's on the same (init seed,
    data seed) cells, so seed luck the two share cancels. One-sided p (`p_better`), two-sided
    p and a confidence interval of the mean difference, all from `crossed_lead_se_df`.

    Assumes the two-way random-effects model of the difference grid (normal row, column and cell
    effects); nothing about how much luck the configs share."""
    g = np.asarray(grid, dtype=float)
    i, j = g.shape
    if i < 2 or j < 2:
        raise ValueError(f"a crossed grid needs at least 2 init and 2 data seeds, got {i} x {j}")
    return t_summary(g, *crossed_lead_se_df(g), confidence, maximize)


def paired_lead_test(differences: Sequence[float], maximize: bool, confidence: float = 0.95) -> dict[str, float]:
    """Does the first config lead? `differences`: its score minus the other's on each fresh (init
    seed, data seed) pair both ran, one pair per element. The pairs share no seed with one another,
    so the differences are independent: a paired t-test (one look) on n − 1 df, with the one-sided
    p (`p_better`), the two-sided p and a t interval of the mean difference. Shared seed luck cancels
    in each difference; nothing is assumed about how much of it the configs share."""
    d = _finite(differences)
    if d.size < 2:
        raise ValueError(f"a paired test needs at least 2 seed pairs both configs ran, got {d.size}")
    return t_summary(d, float(d.std(ddof=1)) / math.sqrt(d.size), float(d.size - 1), confidence, maximize)


def lead_power(design: str, size: int, components: Sequence[float], leads: Sequence[float], alpha: float = 0.05,
               sims: int = 2000, seed: int = 0) -> list[float]:
    """How often the report's lead test (one-sided, at alpha) finds a true lead of each size in
    `leads`, for the design that was run, by simulation of that very test:

    - "crossed": both configs on one size x size seed grid; `components` = (init, data order,
      residual) variances of the winner-minus-runner-up grid; the test is `crossed_lead_test`'s.
    - "paired": both configs on `size` fresh seed pairs; `components` = (variance of one
      winner-minus-runner-up difference,); the test is `paired_lead_test`'s.
    - "welch": `size` independent replicates per config; `components` = (variance of one run,);
      the test is Welch's.

    It says what a design could have shown, beside what it did show."""
    rng = np.random.default_rng(seed)
    out = []
    for lead in leads:
        if design == "crossed":
            var_i, var_d, var_e = (max(float(c), 0.0) for c in components)
            g = (lead + np.sqrt(var_i) * rng.standard_normal((sims, size, 1))
                 + np.sqrt(var_d) * rng.standard_normal((sims, 1, size))
                 + np.sqrt(var_e) * rng.standard_normal((sims, size, size)))
            se, df = crossed_lead_se_df(g)
            with np.errstate(divide="ignore", invalid="ignore"):
                p = st.t.sf(g.mean(axis=(-2, -1)) / se, df)
        elif design == "paired":
            d = lead + np.sqrt(max(float(components[0]), 0.0)) * rng.standard_normal((sims, size))
            with np.errstate(divide="ignore", invalid="ignore"):
                p = st.t.sf(d.mean(axis=1) / (d.std(axis=1, ddof=1) / np.sqrt(size)), size - 1)
        elif design == "welch":
            sd = np.sqrt(max(float(components[0]), 0.0))
            x = lead + sd * rng.standard_normal((sims, size))
            y = sd * rng.standard_normal((sims, size))
            p = st.ttest_ind(x, y, axis=1, equal_var=False, alternative="greater").pvalue
        else:
            raise ValueError(f"design: {design!r}; allowed: crossed, paired, welch")
        out.append(float(np.mean(np.nan_to_num(p, nan=1.0) < alpha)))
    return out


def kendall_min_p(n_configs: int) -> float:
    """The smallest two-sided p Kendall's tau can reach with n configs (perfect agreement, exact
    test): 2 / n!, capped at 1. With 2, 3 or 4 configs it is 1, 0.33 and 0.083: never below 0.05."""
    return float(min(1.0, 2.0 / math.factorial(max(int(n_configs), 1))))


def crossed_mean(grid: np.ndarray, confidence: float = 0.95, maximize: bool | None = None) -> dict[str, float]:
    """Mean of one crossed grid (rows = init seeds, columns = data seeds, one run per cell) with a
    t-interval that respects the design, and, with `maximize` given, the one-sided p-value of
    "the mean is better than 0" (for a grid of paired differences: the first config leads).

    Cells that share an init seed or a data seed are correlated, so the i.i.d. standard error
    s/√(IJ) is too small. Under the two-way random-effects model Var(mean) = σ²_init/I +
    σ²_data/J + σ²_e/(IJ) = (J·σ²_init + I·σ²_data + σ²_e)/(IJ), estimated with the ANOVA
    components truncated at 0 (as in `crossed_components`); the t degrees of freedom are
    Satterthwaite's (1946) for that combination of mean squares."""
    g = np.asarray(grid, dtype=float)
    i, j = g.shape
    if i < 2 or j < 2:
        raise ValueError(f"a crossed grid needs at least 2 init and 2 data seeds, got {i} x {j}")
    return t_summary(g, *crossed_se_df(g), confidence, maximize)


def _f_inf(q: float, df: float) -> float:
    """Quantile q of F(df, ∞) = χ²(df) / df."""
    return float(st.chi2.ppf(q, df) / df)


def difference_interval(s1: float, df1: float, s2: float, df2: float, confidence: float = 0.95
                        ) -> tuple[float, float]:
    """Modified large-sample (MLS) interval for θ1 − θ2 from independent mean squares s1, s2 with
    df1·s1/θ1 ~ χ²(df1) and df2·s2/θ2 ~ χ²(df2): Ting, Burdick, Graybill, Jeyaratnam & Lu (1990),
    J. Statist. Comput. Simul. 35, 135–143; Burdick & Graybill (1992), "Confidence Intervals on
    Variance Components", §3. It is exact when either mean square carries no weight, and its lower
    (upper) bound is 0 exactly where the F test of θ1 = θ2 is on its boundary."""
    a = (1 - confidence) / 2
    g1, h1 = 1 - 1 / _f_inf(1 - a, df1), 1 / _f_inf(a, df1) - 1
    g2, h2 = 1 - 1 / _f_inf(1 - a, df2), 1 / _f_inf(a, df2) - 1
    f_hi, f_lo = st.f.ppf(1 - a, df1, df2), st.f.ppf(a, df1, df2)
    g12 = ((f_hi - 1) ** 2 - g1**2 * f_hi**2 - h2**2) / f_hi
    h12 = ((1 - f_lo) ** 2 - h1**2 * f_lo**2 - g2**2) / f_lo
    est = s1 - s2
    low = est - np.sqrt(max(g1**2 * s1**2 + h2**2 * s2**2 + g12 * s1 * s2, 0.0))
    high = est + np.sqrt(max(h1**2 * s1**2 + g2**2 * s2**2 + h12 * s1 * s2, 0.0))
    return float(low), float(high)


def seed_variance_components(grids: Sequence[np.ndarray], confidence: float = 0.95) -> dict[str, object]:
    """Init-seed, data-order and interaction + residual variance of crossed grids, pooled over
    configs, with 95% intervals and a verdict ("init seed" / "data order" / "cannot tell at this n").
    On square grids (S x S, the reproduce design) the verdict is the exact two-sided F test of
    MS_rows against MS_cols at 1 − confidence (`f_p_value`): size 5%, where the old rule (intervals
    that do not overlap) behaved like a test of size 0.5% and rarely found a real 4:1 ratio. Other
    shapes keep the interval rule. A negative raw estimate is shown as such (`raw_estimate`,
    `set_to_zero`) before it is set to 0.

    `grids`: one complete (I, J) grid of scores per config, rows = init seeds, columns = data
    seeds. The mean squares are pooled over configs (sums of squares over sums of df: the same
    components are assumed in every config). Intervals are normal-theory: MLS
    (`difference_interval`) for the init and data-order components, the exact χ² interval for the
    residual. Not a seed bootstrap: with S seeds per axis a resample has at most S distinct values
    per axis and cannot reach past the observed spread, so its intervals cover far less than they
    claim at the few seeds a sweep can afford. Normality is assumed: a diverged run widens them.
    """
    grids = [np.asarray(g, dtype=float) for g in grids if np.asarray(g).size]
    if not grids:
        raise ValueError("no crossed grid")
    ss = np.zeros(3)
    df = np.zeros(3)
    j_weight = i_weight = 0.0
    for g in grids:
        i, j = g.shape
        if i < 2 or j < 2:
            raise ValueError(f"a crossed grid needs at least 2 init and 2 data seeds, got {i} x {j}")
        rows, cols, grand = g.mean(axis=1), g.mean(axis=0), g.mean()
        resid = g - rows[:, None] - cols[None, :] + grand
        ss += [j * ((rows - grand) ** 2).sum(), i * ((cols - grand) ** 2).sum(), (resid**2).sum()]
        df += [i - 1, j - 1, (i - 1) * (j - 1)]
        j_weight += (i - 1) * j  # E[MS_rows] = σ²_e + J·σ²_init, J averaged with the rows' df as weights
        i_weight += (j - 1) * i
    ms = ss / df
    per_row, per_col = j_weight / df[0], i_weight / df[1]
    raw = np.array([(ms[0] - ms[2]) / per_row, (ms[1] - ms[2]) / per_col, ms[2]])
    estimate = np.clip(raw, 0, None)
    init = np.array(difference_interval(ms[0], df[0], ms[2], df[2], confidence)) / per_row
    data = np.array(difference_interval(ms[1], df[1], ms[2], df[2], confidence)) / per_col
    a = (1 - confidence) / 2
    resid = df[2] * ms[2] / np.array([st.chi2.ppf(1 - a, df[2]), st.chi2.ppf(a, df[2])])
    low, high = np.clip([init[0], data[0], resid[0]], 0, None), np.clip([init[1], data[1], resid[1]], 0, None)
    total = float(estimate.sum())
    table = pd.DataFrame({"source": SEED_SOURCES, "variance": estimate, "ci_low": low, "ci_high": high,
                          "share": estimate / total if total > 0 else np.full(3, np.nan),
                          "df": df.astype(int), "raw_estimate": raw, "set_to_zero": raw < 0})
    square = all(g.shape[0] == g.shape[1] for g in grids)
    f_p = float("nan")
    if square and ms[1] > 0:
        # on square grids E[MS_rows] = E[MS_cols] exactly when the init and data-order components
        # are equal, so their ratio is F(df_rows, df_cols) under that null: an exact two-sided test
        f_ratio = ms[0] / ms[1]
        f_p = float(min(1.0, 2 * min(st.f.sf(f_ratio, df[0], df[1]), st.f.cdf(f_ratio, df[0], df[1]))))
        separated = f_p < 1 - confidence
        verdict = ("init seed" if f_ratio > 1 else "data order") if separated else "cannot tell at this n"
    elif low[0] > high[1]:
        verdict = "init seed"
    elif low[1] > high[0]:
        verdict = "data order"
    else:
        verdict = "cannot tell at this n"
    return {"table": table, "verdict": verdict, "n_configs": len(grids), "f_p_value": f_p,
            "test": "F test of rows vs columns" if square else "intervals do not overlap",
            "runs": int(sum(g.size for g in grids)), "shape": [list(g.shape) for g in grids],
            "confidence": confidence}
