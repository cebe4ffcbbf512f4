"""analysis.stats against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from analysis.stats import (bootstrap_diff, dominant_seed_kind, expected_max, expected_max_std, pareto_front,
                            probability_of_outperforming, rank_stability, summarize, variance_by_seed_kind,
                            welch_test)


def test_expected_max_by_hand():
    # F̂ = 1/3, 2/3, 1 → weights for n: F^n − F(prev)^n
    got = expected_max([0.9, 0.5, 0.7])
    assert got == pytest.approx([0.7, (1 / 9) * 0.5 + (3 / 9) * 0.7 + (5 / 9) * 0.9,
                                 (1 / 27) * 0.5 + (7 / 27) * 0.7 + (19 / 27) * 0.9])


def test_expected_max_ties_and_longer_budget():
    # [1, 1, 2]: F̂(1) = 2/3, F̂(2) = 1 → P(max of 2 = 1) = 4/9, P(= 2) = 5/9
    assert expected_max([1, 1, 2], n_max=2)[1] == pytest.approx(4 / 9 + 2 * 5 / 9)
    long = expected_max([0.5, 0.7, 0.9], n_max=200)
    assert long.shape == (200,) and np.all(np.diff(long) >= -1e-12) and long[-1] == pytest.approx(0.9)


def test_expected_min_mirrors_max():
    # min of 2: P(0.9) = 1/9, P(0.7) = 3/9, P(0.5) = 5/9
    assert expected_max([0.5, 0.7, 0.9], maximize=False)[1] == pytest.approx((0.9 + 3 * 0.7 + 5 * 0.5) / 9)
    assert np.allclose(expected_max([3, 1, 2], maximize=False), -expected_max([-3, -1, -2]))


def test_expected_max_std():
    std = expected_max_std([0.5, 0.7, 0.9])
    assert std[0] == pytest.approx(np.std([0.5, 0.7, 0.9]))  # n = 1: the population std of the values
    second_moment = (1 / 9) * 0.25 + (3 / 9) * 0.49 + (5 / 9) * 0.81
    assert std[1] == pytest.approx(math.sqrt(second_moment - expected_max([0.5, 0.7, 0.9])[1] ** 2))
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
    assert summarize([0.7, 0.7])["ci_low"] == 0.7


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


def test_variance_by_seed_kind_and_dominance():
    frame = pd.DataFrame({
        "config": [1] * 7,
        "seed_kind": ["seed"] * 3 + ["data_seed"] * 3 + ["determinism"],
        "value": [1.0, 2.0, 3.0, 1.0, 1.1, 1.2, 5.0],
    })
    table = variance_by_seed_kind(frame)
    assert list(table["seed_kind"]) == ["seed", "data_seed"]            # determinism excluded
    assert table["var"].tolist() == pytest.approx([1.0, 0.01])
    assert table["std"].tolist() == pytest.approx([1.0, 0.1])
    assert dominant_seed_kind(table)["dominant"] == "seed"
    close = table.assign(var=[1.0, 0.8])
    assert dominant_seed_kind(close)["dominant"] == "comparable"
    assert dominant_seed_kind(table[table["seed_kind"] == "seed"])["dominant"] is None


def test_pareto_front():
    pts = [(0.9, 100), (0.8, 50), (0.85, 200), (0.7, 50), (0.9, 100), (np.nan, 10)]
    assert pareto_front(pts, ["maximize", "minimize"]).tolist() == [True, True, False, False, True, False]
    assert pareto_front([(1, 1), (2, 2)], ["minimize", "minimize"]).tolist() == [True, False]
    with pytest.raises(ValueError):
        pareto_front([(1, 2)], ["maximize"])
