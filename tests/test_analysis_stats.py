"""analysis.stats against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from analysis.stats import (bootstrap_diff, crossed_components, crossed_mean, difference_interval, expected_max,
                            expected_max_std, pareto_front, probability_of_outperforming, rank_stability,
                            seed_variance_components, summarize, variance_by_seed_kind, welch_test)


def test_expected_max_by_hand():
    # the average best over every n-subset of {0.5, 0.7, 0.9}: pairs (.5,.7) (.5,.9) (.7,.9) → (.7 + .9 + .9) / 3
    assert expected_max([0.9, 0.5, 0.7]) == pytest.approx([0.7, (0.7 + 0.9 + 0.9) / 3, 0.9])


def test_expected_max_ties_and_no_look_past_n():
    assert expected_max([1, 1, 2], n_max=2)[1] == pytest.approx((1 + 2 + 2) / 3)
    with pytest.raises(ValueError, match="cannot look past 3"):
        expected_max([0.5, 0.7, 0.9], n_max=200)


def test_expected_min_mirrors_max():
    # min of 2: pairs → (.5 + .5 + .7) / 3
    assert expected_max([0.5, 0.7, 0.9], maximize=False)[1] == pytest.approx((0.5 + 0.5 + 0.7) / 3)
    assert np.allclose(expected_max([3, 1, 2], maximize=False), -expected_max([-3, -1, -2]))


def test_expected_max_std():
    std = expected_max_std([0.5, 0.7, 0.9])
    assert std[0] == pytest.approx(np.std([0.5, 0.7, 0.9]))  # n = 1: the population std of the values
    second_moment = (0.49 + 0.81 + 0.81) / 3
    assert std[1] == pytest.approx(math.sqrt(second_moment - expected_max([0.5, 0.7, 0.9])[1] ** 2))
    assert std[2] == pytest.approx(0.0)
    with pytest.raises(ValueError):
        expected_max([])


def test_summarize_by_hand():
    s = summarize([1, 2, 3, 4])
    sd = math.sqrt(5 / 3)
    half = 3.182446305284263 * sd / 2  # t_{0.975, 3}
    assert s["n"] == 4 and s["mean"] == 2.5 and s["std"] == pytest.approx(sd)
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((2.5 - half, 2.5 + half))
    assert s["cv"] == pytest.approx(sd / 2.5) and (s["min"], s["max"]) == (1, 4)
    single = summarize([0.8])
    assert single["n"] == 1 and math.isnan(single["std"]) and math.isnan(single["ci_low"])
    flat = summarize([0.7, 0.7])  # no variation seen: no zero-width "95%" interval
    assert flat["no_variation"] and math.isnan(flat["ci_low"]) and flat["mean"] == 0.7


def test_welch_by_hand():
    a, b = [1.0, 2.0, 3.0], [2.0, 4.0, 7.0]
    va, vb = 1.0, 19 / 3                       # sample variances
    se2 = va / 3 + vb / 3
    t = (2 - 13 / 3) / math.sqrt(se2)
    df = se2**2 / ((va / 3) ** 2 / 2 + (vb / 3) ** 2 / 2)
    pooled = math.sqrt((2 * va + 2 * vb) / 4)
    r = welch_test(a, b)
    assert r["t"] == pytest.approx(t) and r["df"] == pytest.approx(df)
    assert r["p_value"] == pytest.approx(2 * st.t.sf(abs(t), df))
    assert r["cohens_d"] == pytest.approx((2 - 13 / 3) / pooled)
    assert r["hedges_g"] == pytest.approx(r["cohens_d"] * (1 - 3 / (4 * 6 - 9)))
    assert math.isnan(welch_test([1.0], [2.0, 3.0])["p_value"])


def test_bootstrap_and_probability_of_outperforming():
    a, b = [1.0, 2.0, 3.0], [2.0, 4.0, 7.0]
    # pairs (a_i > b_j): 3 > 2 once, 2 = 2 once (counts ½) → 1.5 / 9
    assert probability_of_outperforming(a, b) == pytest.approx(1.5 / 9)
    assert probability_of_outperforming(a, b, maximize=False) == pytest.approx(1 - 1.5 / 9)
    r = bootstrap_diff(a, b, n_boot=2000, seed=1)
    assert r["diff"] == pytest.approx(-7 / 3) and r["ci_low"] <= r["diff"] <= r["ci_high"]
    assert r == bootstrap_diff(a, b, n_boot=2000, seed=1)  # seeded
    assert r["ci_low"] >= min(a) - max(b) and r["ci_high"] <= max(a) - min(b)


def test_rank_stability_kendall_and_winner():
    # sweep order A > B > C; reproduced means A .85, B .86, C .70 → one discordant pair of 3: τ = 1/3
    rows = [("A", 0.9, 0.86, 1), ("A", 0.9, 0.84, 2), ("B", 0.8, 0.85, 1), ("B", 0.8, 0.87, 2),
            ("C", 0.7, 0.69, 1), ("C", 0.7, 0.71, 2)]
    df = pd.DataFrame(rows, columns=["config", "sweep_value", "value", "seed"]).assign(data_seed=0)
    r = rank_stability(df)
    assert r["kendall_tau"] == pytest.approx(1 / 3)
    assert r["sweep_winner"] == "A" and r["reproduced_winner"] == "B" and r["winner_stays"] is False
    assert r["runner_up"] == "B" and r["pairing"] == "same-seed" and r["n_pairs"] == 2
    assert r["winner_beats_runner_up"] == 0.5     # seed 1: A wins, seed 2: B wins
    unpaired = rank_stability(df.drop(columns=["seed", "data_seed"]))
    assert unpaired["pairing"] == "all-pairs" and unpaired["winner_beats_runner_up"] == pytest.approx(1 / 4)
    minimize = rank_stability(df, maximize=False)
    assert minimize["sweep_winner"] == "C" and minimize["winner_stays"] is True
    assert rank_stability(df[df["config"] == "A"])["n_configs"] == 1


def test_variance_by_seed_kind():
    frame = pd.DataFrame({
        "config": [1] * 7,
        "seed_kind": ["seed"] * 3 + ["data_seed"] * 3 + ["determinism"],
        "value": [1.0, 2.0, 3.0, 1.0, 1.1, 1.2, 5.0],
    })
    table = variance_by_seed_kind(frame)
    assert list(table["seed_kind"]) == ["seed", "data_seed"]            # determinism excluded
    assert table["var"].tolist() == pytest.approx([1.0, 0.01])
    assert table["std"].tolist() == pytest.approx([1.0, 0.1])


def _crossed(rng, var_init, var_data, n_seeds, n_configs, var_resid=0.5):
    grids = []
    for _ in range(n_configs):
        a, b = rng.normal(0, np.sqrt(var_init), n_seeds), rng.normal(0, np.sqrt(var_data), n_seeds)
        grids.append(0.8 + a[:, None] + b[None, :] + rng.normal(0, np.sqrt(var_resid), (n_seeds, n_seeds)))
    return grids


def test_crossed_components_by_hand():
    # row means ±1, column means ±0.5, no residual: MS_rows = 2·(1+1)/1 = 4 → σ²_init = 4/2; MS_cols = 1 → σ²_data = 1/2
    grid = np.array([[1.5, 0.5], [-0.5, -1.5]])
    init, data, resid = crossed_components(grid)
    assert resid == pytest.approx(0.0) and init == pytest.approx(2.0) and data == pytest.approx(0.5)
    with pytest.raises(ValueError, match="at least 2"):
        crossed_components(np.ones((1, 3)))


def test_equal_seed_variances_give_no_verdict_seeded_simulation():
    """The old 2x rule named a "dominant" seed about half the time when both contribute equally;
    the crossed estimate must say it cannot tell (>= 90% of seeds; about 99% here), small grid or large."""
    rng = np.random.default_rng(11)
    for n_seeds, n_configs in ((3, 2), (10, 4)):
        verdicts = [seed_variance_components(_crossed(rng, 1.0, 1.0, n_seeds, n_configs))["verdict"]
                    for _ in range(200)]
        assert verdicts.count("cannot tell at this n") >= 180, (n_seeds, verdicts)


def test_a_four_to_one_seed_variance_is_found_with_enough_replicates_seeded_simulation():
    """4:1 on a 10 x 10 grid of each of 4 configs: found in about 88% of seeds, never the wrong way."""
    rng = np.random.default_rng(12)
    init = [seed_variance_components(_crossed(rng, 4.0, 1.0, 10, 4))["verdict"] for _ in range(200)]
    assert init.count("init seed") >= 160 and init.count("data order") == 0
    data = [seed_variance_components(_crossed(rng, 1.0, 4.0, 10, 4))["verdict"] for _ in range(200)]
    assert data.count("data order") >= 160 and data.count("init seed") == 0
    result = seed_variance_components(_crossed(rng, 4.0, 1.0, 10, 4))
    assert list(result["table"]["source"]) == ["init seed", "data order", "interaction + residual"]
    assert result["runs"] == 400 and result["n_configs"] == 4
    assert list(result["table"]["df"]) == [36, 36, 324]  # pooled over the 4 configs


@pytest.mark.parametrize("n_seeds, n_configs", [(3, 1), (3, 2)])
def test_variance_component_intervals_cover_at_a_few_seeds_seeded_simulation(n_seeds, n_configs):
    """The 95% intervals of all three components must cover the truth >= 93% of the time at the
    grids a sweep affords (a seed bootstrap covered 67-85% for the components, 40-55% for the residual)."""
    rng = np.random.default_rng(20 + n_configs)
    truth = np.array([1.0, 0.5, 0.5])
    covered = np.zeros(3)
    for _ in range(1500):
        table = seed_variance_components(_crossed(rng, truth[0], truth[1], n_seeds, n_configs, truth[2]))["table"]
        covered += (table["ci_low"].to_numpy() <= truth) & (truth <= table["ci_high"].to_numpy())
    assert (covered / 1500 >= 0.93).all(), covered / 1500


def test_difference_interval_agrees_with_the_exact_f_test():
    """MLS (Ting et al. 1990): the lower bound of θ1 − θ2 is 0 exactly at the F test's critical
    ratio, and a lone mean square gets the exact χ² interval."""
    for df1, df2 in ((2, 4), (9, 36)):
        f_hi, f_lo = st.f.ppf(0.975, df1, df2), st.f.ppf(0.025, df1, df2)
        assert difference_interval(3.0 * f_hi, df1, 3.0, df2)[0] == pytest.approx(0.0, abs=1e-9)
        assert difference_interval(3.0 * f_lo, df1, 3.0, df2)[1] == pytest.approx(0.0, abs=1e-9)
        low, high = difference_interval(2.0, df1, 0.0, df2)
        assert (low, high) == pytest.approx((df1 * 2.0 / st.chi2.ppf(0.975, df1), df1 * 2.0 / st.chi2.ppf(0.025, df1)))


def test_crossed_mean_by_hand():
    # rows ±1, columns ±0.5, no residual: MS_rows = 4, MS_cols = 1, MS_e = 0 → Var(mean) = (4 + 1) / 4
    r = crossed_mean(np.array([[1.5, 0.5], [-0.5, -1.5]]) + 0.8, maximize=True)
    assert r["mean"] == pytest.approx(0.8) and r["se"] == pytest.approx(math.sqrt(5 / 4))
    df = 25 / (16 + 1)  # Satterthwaite: (4 + 1)² / (4²/1 + 1²/1)
    assert r["df"] == pytest.approx(df) and r["n"] == 4
    assert r["ci_high"] - 0.8 == pytest.approx(st.t.ppf(0.975, df) * math.sqrt(5 / 4))
    assert r["p_better"] == pytest.approx(st.t.sf(0.8 / math.sqrt(5 / 4), df))


def _crossed_reps(rng, configs, effects, var_init=1.0, var_data=1.0, var_resid=0.25, n_seeds=3):
    """Replicates of several configs on one shared fresh seed grid: the seed effects are shared."""
    a, b = rng.normal(0, np.sqrt(var_init), n_seeds), rng.normal(0, np.sqrt(var_data), n_seeds)
    rows = []
    for config, effect in zip(configs, effects):
        noise = rng.normal(0, np.sqrt(var_resid), (n_seeds, n_seeds))
        for i in range(n_seeds):
            for j in range(n_seeds):
                rows.append({"config": config, "sweep_value": 0.9, "seed_kind": "crossed", "seed": 10_000 + i,
                             "data_seed": 10_000 + j, "value": effect + a[i] + b[j] + noise[i, j]})
    return pd.DataFrame(rows)


def test_crossed_replicates_get_an_interval_that_covers_seeded_simulation():
    """Cells of a crossed grid share seeds: treated as 9 independent runs, the t-interval of a 3 x 3
    grid covers about 75% when the seeds dominate; the design's interval covers >= 93%."""
    from analysis.reproducibility import per_config_summary

    rng = np.random.default_rng(31)
    trials = 400
    rows = [per_config_summary(_crossed_reps(rng, [1], [0.8]), maximize=True).iloc[0] for _ in range(trials)]
    assert sum(r["ci_low"] <= 0.8 <= r["ci_high"] for r in rows) / trials >= 0.93
    assert rows[0]["n"] == 9 and 1 < rows[0]["df"] < 8


def test_crossed_lead_is_tested_on_paired_cells_seeded_simulation():
    """Both configs ran on the same seeds, so the seeds' effects cancel in the per-cell difference:
    a real lead half the seed spread is found in most seeds on a 5 x 5 grid (Welch on the pooled
    runs, which keeps the seed spread, in about a quarter), a worse winner never reads as leading,
    and with no difference the one-sided test keeps its 5% level."""
    from analysis.reproducibility import lead_significance

    rng = np.random.default_rng(32)

    def sims(effects, n):
        return [_crossed_reps(rng, [1, 2], effects, n_seeds=5) for _ in range(n)]

    lead = sims([0.5, 0.0], 120)
    runs = [lead_significance(reps, 1, 2, maximize=True, n_boot=100) for reps in lead]
    assert all(r["test"] == "crossed" and r["n_cells"] == 25 for r in runs)
    found = np.mean([r["p_a_better"] < 0.05 for r in runs])
    welch = np.mean([welch_test(*(g["value"] for _, g in reps.groupby("config")), maximize=True)["p_a_better"] < 0.05
                     for reps in lead])
    assert found >= 0.7 and welch < found - 0.35, (found, welch)
    worse = [lead_significance(reps, 1, 2, maximize=True, n_boot=100) for reps in sims([0.0, 0.5], 40)]
    assert all(r["p_a_better"] >= 0.05 for r in worse) and sum(r["leader"] == "runner-up" for r in worse) >= 38
    null = np.mean([lead_significance(reps, 1, 2, maximize=True, n_boot=100)["p_a_better"] < 0.05
                    for reps in sims([0.0, 0.0], 250)])
    assert null <= 0.08, null


def test_pareto_front():
    pts = [(0.9, 100), (0.8, 50), (0.85, 200), (0.7, 50), (0.9, 100), (np.nan, 10)]
    assert pareto_front(pts, ["maximize", "minimize"]).tolist() == [True, True, False, False, True, False]
    assert pareto_front([(1, 1), (2, 2)], ["minimize", "minimize"]).tolist() == [True, False]
    with pytest.raises(ValueError):
        pareto_front([(1, 2)], ["maximize"])


def test_one_sided_lead_has_a_sign_seeded_simulation():
    """A winner that is worse on replicates must never read as a significant lead: the old
    two-sided p did exactly that whenever the runner-up was clearly better."""
    rng = np.random.default_rng(7)
    false_leads = sum(welch_test(rng.normal(0.80, 0.01, 5), rng.normal(0.85, 0.01, 5), maximize=True)["p_a_better"] < 0.05
                      for _ in range(500))
    assert false_leads == 0
    real_leads = sum(welch_test(rng.normal(0.85, 0.01, 5), rng.normal(0.80, 0.01, 5), maximize=True)["p_a_better"] < 0.05
                     for _ in range(500))
    assert real_leads >= 490
    # minimisation (a loss): lower is better
    assert welch_test([1.0, 1.1, 0.9], [2.0, 2.1, 1.9], maximize=False)["p_a_better"] < 0.05
    # under the null the one-sided test rejects at its nominal level
    null = np.mean([welch_test(rng.normal(0, 1, 9), rng.normal(0, 1, 9), maximize=True)["p_a_better"] < 0.05
                    for _ in range(2000)])
    assert 0.03 <= null <= 0.07


def test_lead_significance_says_when_the_runner_up_is_better():
    from analysis.reproducibility import lead_significance

    reps = pd.DataFrame({"config": [1] * 4 + [2] * 4, "seed_kind": ["both"] * 8,
                         "value": [0.80, 0.81, 0.79, 0.80, 0.86, 0.85, 0.87, 0.86]})
    sig = lead_significance(reps, winner=1, runner_up=2, maximize=True)
    assert sig["leader"] == "runner-up" and sig["p_a_better"] > 0.95 and sig["p_value"] < 0.05


@pytest.mark.parametrize("n", [3, 9])
def test_intervals_cover_the_truth_at_small_n_seeded_simulation(n):
    """95% intervals must cover at least 93% of the time for normal data: the t-interval for one
    config's mean, and the Welch t-interval for a difference of two."""
    rng = np.random.default_rng(n)
    trials = 2000
    covered = sum(s["ci_low"] <= 0.8 <= s["ci_high"] for s in (summarize(rng.normal(0.8, 0.02, n)) for _ in range(trials)))
    assert covered / trials >= 0.93
    covered = 0
    for _ in range(trials):
        r = welch_test(rng.normal(0.80, 0.02, n), rng.normal(0.78, 0.04, n), maximize=True)
        covered += r["ci_low"] <= 0.02 <= r["ci_high"]
    assert covered / trials >= 0.93
