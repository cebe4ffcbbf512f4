"""The crossed and the paired lead tests' size and power against Welch on independent runs, by seeded simulation.

    python bench/lead_power.py [--sims 20000] [--report-studies 1000] [--seed 0] [--out bench/results/lead_power.md]

Two configs run on one S x S crossed grid (S init seeds x S data-order seeds, the same seed
values for both: `sweeps.reproduce`). Each run = true mean + init-seed effect + data-order effect
+ cell residual (interaction and run noise), a run's variance 1 (so a lead of 2 is 2 SD), split
as in the noise mixes below; each effect is shared by the two configs with correlation rho (the
SST-2 reproduction measured rho = 0.25: bench/results/race_vs_reproduce.md). The report tests the
winner-minus-runner-up grid, where shared luck cancels: a difference grid carries 2 (1 - rho) of
each variance. Columns, one-sided at alpha = 0.05:

- the report's test: `analysis.stats.crossed_lead_se_df` (what `crossed_lead_test` and
  `lead_significance` use); the truncated test it replaced: `analysis.stats.crossed_se_df`.
- untruncated: (MS_init + MS_data - MS_e) / (IJ) with Satterthwaite df, = REML with Kenward-Roger
  df on a balanced grid with interior estimates.
- bound: the z-test on the grid's mean with the variances known. For known variances it is the
  most powerful test of the lead on this grid (Neyman-Pearson; the grid mean is the GLS estimate
  of a balanced design), so no valid test on a crossed S x S grid can beat it.
- Welch, 2 x S^2 independent runs: the same number of runs, each with its own fresh seeds.
- paired, S^2 seed pairs: the same number of runs on S^2 fresh (init, data) pairs shared by both
  configs (the race's design, and `--design paired`), a paired t-test (scipy).
- paired, the report: that design through the product end to end: each study's replicates as the
  report reads them (seed_kind "paired"), tested by `analysis.reproducibility.lead_significance`
  (`paired_lead_test`), its power for the lead and its size with none, on `--report-studies`
  studies per cell (about 10 ms a study; fewer than --sims).
- Welch on the crossed cells: Welch's test on the 2 x S^2 cells as if independent (size only).

rho* is the sharing at which the crossed mean is as precise as the mean of S^2 independent runs:
(1 - rho)(S f + 1 - f) = 1, f = the seed axes' share of a run's variance. Below it, even the bound
cannot reach Welch's power.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.stats as st

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import md_table  # noqa: E402

from analysis.reproducibility import lead_significance  # noqa: E402
from analysis.stats import crossed_lead_se_df, crossed_se_df  # noqa: E402

ALPHA, LEAD = 0.05, 2.0
MIXES = {  # (init, data order, residual) share of one run's variance
    "SST-2 measured (0 / 0.32 / 0.68)": (0.0, 0.315, 0.685),
    "seed axes dominate (0.4 / 0.4 / 0.2)": (0.4, 0.4, 0.2),
    "residual only (0 / 0 / 1)": (0.0, 0.0, 1.0),
}
RHOS = (0.0, 0.25, 0.5, 0.75, 0.9)


def diff_grids(mix, rho, s, lead, sims, rng, shape=None):
    """(sims, I, J) winner-minus-runner-up grids under the two-way model."""
    i, j = shape or (s, s)
    f = 2 * (1 - rho)
    return (lead + np.sqrt(f * mix[0]) * rng.standard_normal((sims, i, 1))
            + np.sqrt(f * mix[1]) * rng.standard_normal((sims, 1, j))
            + np.sqrt(f * mix[2]) * rng.standard_normal((sims, i, j)))


def untruncated_se_df(grids):
    """SE² = (MS_init + MS_data - MS_e) / (IJ), unbiased, with Satterthwaite df: what REML with
    Kenward-Roger df gives on a balanced grid whose estimates are inside the parameter space
    (at the boundary REML refits without the component: the truncated test). No test where <= 0."""
    g = np.asarray(grids, dtype=float)
    i, j = g.shape[-2], g.shape[-1]
    rows, cols, mean = g.mean(axis=-1), g.mean(axis=-2), g.mean(axis=(-2, -1))
    ms_r = j * ((rows - mean[..., None]) ** 2).sum(axis=-1) / (i - 1)
    ms_c = i * ((cols - mean[..., None]) ** 2).sum(axis=-1) / (j - 1)
    ms_e = ((g - rows[..., :, None] - cols[..., None, :] + mean[..., None, None]) ** 2).sum(axis=(-2, -1)) / ((i - 1) * (j - 1))
    v = ms_r + ms_c - ms_e
    df = v**2 / (ms_r**2 / (i - 1) + ms_c**2 / (j - 1) + ms_e**2 / ((i - 1) * (j - 1)))
    return np.sqrt(np.where(v > 0, v, np.nan) / (i * j)), df


def rejects(grids, se_df) -> float:
    se, df = se_df(grids)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = st.t.sf(grids.mean(axis=(-2, -1)) / se, df)
    return float(np.mean(np.nan_to_num(p, nan=1.0) < ALPHA))


def welch_cells(mix, rho, s, sims, rng) -> float:
    """Size of Welch on the two configs' crossed cells treated as independent runs."""
    shared = [rng.standard_normal((sims, s, 1)), rng.standard_normal((sims, 1, s)), rng.standard_normal((sims, s, s))]

    def config():
        parts = [np.sqrt(rho) * c + np.sqrt(1 - rho) * rng.standard_normal(c.shape) for c in shared]
        return sum(np.sqrt(m) * p for m, p in zip(mix, parts)).reshape(sims, -1)

    p = st.ttest_ind(config(), config(), axis=1, equal_var=False, alternative="greater").pvalue
    return float(np.mean(p < ALPHA))


def paired_replicates(mix, rho, s, lead, rng) -> pd.DataFrame:
    """One study of the paired design as the report reads it: two configs on the same S^2 fresh
    seed pairs, a run = mean + init + data-order + residual, each shared by the configs with
    correlation rho (fresh in every pair, so the mix only sets one run's variance, 1)."""
    n = s * s
    shared = rng.standard_normal((3, n))
    rows = []
    for config, mean in ((1, lead), (2, 0.0)):
        parts = np.sqrt(rho) * shared + np.sqrt(1 - rho) * rng.standard_normal((3, n))
        values = mean + np.sqrt(np.asarray(mix)) @ parts
        rows.append(pd.DataFrame({"config": config, "sweep_value": mean, "value": values.ravel(),
                                  "seed": 10_000 + np.arange(n), "data_seed": 10_000 + n + np.arange(n),
                                  "seed_kind": "paired", "number": (config - 1) * n + np.arange(n),
                                  "sweep_seed": 0.0, "sweep_data_seed": 1.0}))
    return pd.concat(rows, ignore_index=True)


def paired_report(mix, rho, s, lead, studies, rng) -> float:
    """How often the report's lead test (`lead_significance`) calls the winner's lead significant."""
    return float(np.mean([lead_significance(paired_replicates(mix, rho, s, lead, rng), 1, 2, maximize=True,
                                            n_boot=10)["p_a_better"] < ALPHA for _ in range(studies)]))


def row(name, mix, s, rho, sims, rng, studies) -> list:
    n = s * s
    f_seed = mix[0] + mix[1]
    var_mean = 2 * (1 - rho) * (f_seed / s + mix[2] / n)
    bound = float(st.norm.sf(st.norm.isf(ALPHA) - LEAD / np.sqrt(var_mean)))
    welch = st.ttest_ind(LEAD + rng.standard_normal((sims, n)), rng.standard_normal((sims, n)), axis=1,
                         equal_var=False, alternative="greater").pvalue
    paired = st.ttest_1samp(LEAD + np.sqrt(2 * (1 - rho)) * rng.standard_normal((sims, n)), 0, axis=1,
                            alternative="greater").pvalue
    null, alt = diff_grids(mix, rho, s, 0.0, sims, rng), diff_grids(mix, rho, s, LEAD, sims, rng)
    rho_star = max(0.0, 1 - 1 / (s * f_seed + 1 - f_seed))
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    return [name, f"{s} x {s}", rho, f"{rho_star:.2f}", pct(rejects(null, crossed_lead_se_df)),
            pct(rejects(alt, crossed_lead_se_df)), pct(rejects(alt, crossed_se_df)),
            pct(rejects(alt, untruncated_se_df)), pct(bound),
            pct(np.mean(welch < ALPHA)), pct(np.mean(paired < ALPHA)),
            pct(paired_report(mix, rho, s, LEAD, studies, rng)), pct(paired_report(mix, rho, s, 0.0, studies, rng)),
            pct(welch_cells(mix, rho, s, sims, rng))]


def worst_size(shape, sims, rng) -> list:
    """The report's test's largest rejection rate with no lead over noise mixes (rho only scales
    the grid), then that mix re-run on 5x fresh studies: the max of 33 noisy rates reads high."""
    worst = (0.0, (0.0, 0.0, 1.0))
    for w_row in np.linspace(0, 1, 11):
        for w_e in (0.0, 0.25, 0.5):
            mix = ((1 - w_e) * w_row, (1 - w_e) * (1 - w_row), w_e)
            worst = max(worst, (rejects(diff_grids(mix, 0.0, 0, 0.0, sims, rng, shape), crossed_lead_se_df), mix))
    again = np.mean([rejects(diff_grids(worst[1], 0.0, 0, 0.0, sims, rng, shape), crossed_lead_se_df) for _ in range(5)])
    return [f"{shape[0]} x {shape[1]}", f"{100 * worst[0]:.1f}%", " / ".join(f"{w:.2f}" for w in worst[1]),
            f"{100 * again:.2f}%"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=20_000)
    parser.add_argument("--report-studies", type=int, default=1000,
                        help="studies per cell run through the report's own lead test (about 10 ms each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the tables here (markdown)")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    rows = [row(name, mix, s, rho, args.sims, rng, args.report_studies)
            for name, mix in MIXES.items() for s in (2, 3) for rho in RHOS]
    header = ["noise mix (init / data / residual)", "grid", "rho", "rho*", "size, report's test",
              "power 2 SD, report's test", "power, old truncated test",
              "power, untruncated SE (KR)", "bound (known variances)",
              "Welch, 2 x S^2 independent runs", "paired, S^2 shared seed pairs",
              f"paired, the report: power 2 SD ({args.report_studies} studies)",
              f"paired, the report: size ({args.report_studies} studies)", "size, Welch on the crossed cells"]
    sizes = [worst_size(shape, args.sims, rng) for shape in ((2, 2), (3, 3), (4, 4), (5, 5), (2, 3), (3, 5))]
    text = (f"{args.sims} simulated studies per cell ({args.report_studies} for the two columns through the report's "
            f"`lead_significance`), seed {args.seed}, alpha {ALPHA}, lead {LEAD} SD of one run.\n\n"
            + md_table(header, rows)
            + "\n\nThe report's test with no lead, its largest rejection rate over 33 noise mixes"
              " (init share 0-1 in tenths, residual 0 / 0.25 / 0.5; non-square grids use df = min(I, J) - 1):\n\n"
            + md_table(["grid", "worst size", "at mix (init / data / residual)", f"that mix again, {5 * args.sims} fresh studies"], sizes) + "\n")
    print(text)
    if args.out:
        args.out.write_text("# The lead test's size and power: the crossed grid, the paired design, Welch\n\n"
                            "`python bench/lead_power.py --out "
                            f"{args.out}`\n\n" + text)


if __name__ == "__main__":
    main()
