"""Statistics on seed replicates that both the sweep's runtime (the seed race) and the report
(analysis/) need: the interval of one config's mean and the race's sequential elimination test.

It sits below both so that the runtime never imports analysis/ (a layer above it); analysis.stats
re-exports `summarize`. Everything is a pure function of numbers, checked by seeded simulation in
tests/test_race_stats.py and tests/test_stats_simulations.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as st

SCALES = ("auto", "linear", "logit")


def interval_scale(values: np.ndarray, scale: str = "auto") -> str:
    """"logit" for a metric bounded in [0, 1] (accuracy, F1, a rate), else "linear". Near a ceiling
    the spread of an accuracy is skewed, and a symmetric t-interval under-covers (0.90-0.92 at a
    mean of 0.985 and an SD of 1.2 points): on the logit scale it does not reach past 1 and covers."""
    if scale not in SCALES:
        raise ValueError(f"scale: {scale!r}; allowed: {', '.join(SCALES)}")
    if scale != "auto":
        return scale
    return "logit" if values.size and bool(np.all((values >= 0) & (values <= 1))) else "linear"


def summarize(values: Sequence[float], confidence: float = 0.95, scale: str = "auto") -> dict[str, float]:
    """Mean ± std (ddof=1) with a t-interval for the mean: the honest way to report seeds.

    Accuracy-like values (all in [0, 1]; `scale`) get the interval on the logit scale (delta
    method: logit(mean) ± t·s / (√n·mean·(1 − mean)), mapped back), which covers near 0 or 1 where
    the plain t-interval does not. Non-finite values (a diverged run: NaN/inf loss) are counted in
    `n_diverged` and kept out of every other number. With no variation among n >= 2 finite values
    there is no interval (NaN, `no_variation` true): "no variation seen in n runs", never a
    zero-width "95%" interval.
    """
    raw = np.asarray(values, dtype=float).ravel()
    v = raw[np.isfinite(raw)]
    n, nan = int(v.size), float("nan")
    out = {"n": n, "n_diverged": int(raw.size - n), "mean": nan, "std": nan, "ci_low": nan, "ci_high": nan,
           "min": nan, "max": nan, "cv": nan, "no_variation": False, "scale": interval_scale(v, scale)}
    if n == 0:
        return out
    mean = float(v.mean())
    std = float(v.std(ddof=1)) if n > 1 else nan
    out.update(mean=mean, std=std, min=float(v.min()), max=float(v.max()),
               cv=std / abs(mean) if n > 1 and mean != 0 else nan)
    if n > 1 and std > 0:
        t = float(st.t.ppf(0.5 + confidence / 2, n - 1))
        se = std / math.sqrt(n)
        if out["scale"] == "logit" and 0 < mean < 1:
            centre, half = math.log(mean / (1 - mean)), t * se / (mean * (1 - mean))
            out.update(ci_low=1 / (1 + math.exp(-(centre - half))), ci_high=1 / (1 + math.exp(-(centre + half))))
        else:
            out.update(scale="linear", ci_low=mean - t * se, ci_high=mean + t * se)
    elif n > 1:
        out["no_variation"] = True
    return out


def interval_text(s: dict, digits: int = 4) -> str:
    """One interval as the report and the console print it, n always beside it."""
    n = int(s.get("n", 0))
    if n == 0:
        return "no finite value"
    diverged = f"; {int(s['n_diverged'])} diverged, left out" if s.get("n_diverged") else ""
    if s.get("no_variation"):
        return f"{s['mean']:.{digits}f} (no variation seen in {n} runs{diverged})"
    if n == 1 or not np.isfinite(s.get("ci_low", np.nan)):
        return f"{s['mean']:.{digits}f} (n={n}, no interval{diverged})"
    return f"{s['mean']:.{digits}f} [{s['ci_low']:.{digits}f}, {s['ci_high']:.{digits}f}] (n={n}{diverged})"


# -- the seed race ---------------------------------------------------------------------------------
FIRST_TESTED_ROUND = 3  # with 2 pairs a pooled test has too few df to drop anything at the levels a race uses


def race_looks(rounds: int) -> int:
    """Looks a race of `rounds` rounds tests at: rounds 3..rounds. Alpha is spent over these only."""
    return max(int(rounds) - FIRST_TESTED_ROUND + 1, 0)


def pooled_residual(matrix: np.ndarray) -> tuple[float, int]:
    """Residual mean square and df of the additive config x round model on a (rounds, configs)
    matrix: y = config mean + round (seed pair) effect + error. Every config's difference from
    every other then has variance 2·σ²/n, estimated from all survivors at once, so three pairs of
    three configs carry 4 df instead of the 2 of one paired t-test."""
    y = np.asarray(matrix, dtype=float)
    n, k = y.shape
    resid = y - y.mean(axis=0, keepdims=True) - y.mean(axis=1, keepdims=True) + y.mean()
    df = (n - 1) * (k - 1)
    return (float((resid**2).sum() / df) if df else float("nan")), df


def race_eliminations(scores: dict[int, Sequence[float]], maximize: bool, alpha: float, looks: int) -> set[int]:
    """Configs a seed race may drop at this look: `scores[c][i]` is config c's score on the i-th
    seed pair, shared by all (so the round effect cancels). Nothing before 3 pairs. Each rival is
    tested one-sided against the leader (the best mean) with the variance pooled over all
    survivors (`pooled_residual`), and the rivals are stepped down by Holm at alpha / looks, where
    `looks` is the number of looks the race tests at (`race_looks`). A config as good as the best
    is dropped only if some other config beats it at that level at some look, so over the whole
    race each config tied for best is dropped with probability at most about alpha (the union over
    rivals and looks; tests/test_race_stats.py measures it on discrete accuracies)."""
    if len(scores) < 2:
        return set()
    n = min(len(v) for v in scores.values())
    if n < FIRST_TESTED_ROUND:
        return set()
    configs = list(scores)
    sign = 1.0 if maximize else -1.0
    y = sign * np.array([np.asarray(scores[c][:n], dtype=float) for c in configs]).T  # (rounds, configs)
    ms, df = pooled_residual(y)
    means = y.mean(axis=0)
    lead = int(np.argmax(means))
    gaps = {configs[j]: float(means[lead] - means[j]) for j in range(len(configs)) if j != lead}
    if not ms > 1e-12 * float(np.mean(y**2)):  # no residual noise (float dust aside): a gap has no price
        return set()
    se = math.sqrt(2 * ms / n)
    p = {c: float(st.t.sf(gap / se, df)) for c, gap in gaps.items()}
    level = alpha / max(int(looks), 1)
    dropped: set[int] = set()
    for step, config in enumerate(sorted(p, key=p.get)):  # Holm: alpha/m, alpha/(m-1), ...
        if p[config] > level / (len(p) - step):
            break
        dropped.add(config)
    return dropped
