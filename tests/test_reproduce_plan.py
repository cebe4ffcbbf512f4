"""Winner's curse: the reproduced mean must rest only on runs whose seeds the search did not select.

The plan (sweeps.reproduce) draws its crossed grid from seeds none of the reproduced configs ran
with; the analysis (analysis.reproducibility) leaves out determinism re-runs and any replicate that
ran on a config's own tuned seed, whatever its kind says."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import create_trial

from analysis.frames import reproduce_frame, trials_frame
from analysis.reproducibility import fresh, per_config_summary, replicates
from sweeps.reproduce import FRESH_SEED_BASE, plan_replicates

DISTS = {"train.learning_rate": FloatDistribution(1e-4, 1e-2, log=True), "seed": IntDistribution(0, 20_000)}


def _search(storage=None) -> optuna.Study:
    """Three trials; the best was tuned onto seed 10000, the first seed a naive fresh grid uses."""
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    for value, seed, lr in ((0.9, FRESH_SEED_BASE, 1e-3), (0.8, 3, 2e-3), (0.7, FRESH_SEED_BASE + 2, 3e-3)):
        study.add_trial(create_trial(params={"train.learning_rate": lr, "seed": seed}, distributions=DISTS,
                                     value=value, user_attrs={"seed": seed, "data_seed": 0}))
    return study


def test_crossed_plan_never_reuses_a_seed_the_search_selected():
    study = _search()
    plan = plan_replicates(study, top_k=2, n_seeds=2, seed_kinds=[], determinism_check=True)
    crossed = [e for e in plan if e["user_attrs"]["seed_kind"] == "crossed"]
    assert len(crossed) == 2 * 2 * 2
    tuned = {FRESH_SEED_BASE, 3, 0}  # seeds and data seeds of the two reproduced configs
    seeds = {(e["overrides"]["seed"], e["overrides"]["data_seed"]) for e in crossed}
    assert seeds == {(a, b) for a in (FRESH_SEED_BASE + 1, FRESH_SEED_BASE + 2)
                     for b in (FRESH_SEED_BASE + 1, FRESH_SEED_BASE + 2)}
    assert not {s for pair in seeds for s in pair} & tuned
    for e in crossed:  # the config itself is kept, only the seeds change
        original = study.trials[e["user_attrs"]["replicates_trial"]]
        assert e["overrides"]["train.learning_rate"] == original.params["train.learning_rate"]
    # the determinism pair is the only thing run on the winner's own seeds
    own = [e for e in plan if e["overrides"]["seed"] == FRESH_SEED_BASE]
    assert [e["user_attrs"]["seed_kind"] for e in own] == ["determinism", "determinism"]


def test_reproduced_mean_leaves_out_determinism_and_tuned_seed_runs():
    storage = optuna.storages.InMemoryStorage()
    search = _search(storage)
    repro = optuna.create_study(storage=storage, study_name="s--reproduce", direction="maximize")
    runs = [("crossed", 10_001, 10_001, 0.80), ("crossed", 10_001, 10_002, 0.82),
            ("crossed", 10_002, 10_001, 0.81), ("crossed", 10_002, 10_002, 0.83),
            ("crossed", FRESH_SEED_BASE, 10_001, 0.95),  # an older plan's cell on the winner's lucky seed
            ("determinism", FRESH_SEED_BASE, 0, 0.90), ("determinism", FRESH_SEED_BASE, 0, 0.90)]
    for kind, seed, data_seed, value in runs:
        repro.add_trial(create_trial(value=value, user_attrs={
            "replicates_trial": 0, "seed_kind": kind, "seed": seed, "data_seed": data_seed}))
    reps = replicates(trials_frame(search), reproduce_frame(storage, "s"))
    kept = fresh(reps, {"seed"})
    assert len(kept) == 4 and set(kept["seed_kind"]) == {"crossed"}
    assert FRESH_SEED_BASE not in set(kept["seed"])
    row = per_config_summary(reps, maximize=True, tuned_seeds={"seed"}).iloc[0]
    assert row["n"] == 4 and row["mean"] == pytest.approx(0.815)
    assert row["optimism"] == pytest.approx(0.9 - 0.815)
    # the trial's own seed counts as selected even where the search did not tune it
    assert len(fresh(reps, set())) == 4
