"""Winner's curse: the reproduced mean must rest only on runs whose seeds the search did not select.

The plan (sweeps.reproduce) draws its seeds (paired, the default, or crossed) from seeds none of the
reproduced configs ran with and none the seed race ran with; a study's reproduction keeps the design
it started with (old stores read as the crossed design they ran); the analysis (analysis.reproducibility) leaves out determinism re-runs and any replicate that
ran on a config's own tuned seed, whatever its kind says."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import create_trial

from analysis.frames import reproduce_frame, trials_frame
from analysis.reproducibility import fresh, per_config_summary, replicates
from sweeps.reproduce import (DEFAULT_DESIGN, FRESH_SEED_BASE, fresh_seed_values, parse_args, plan_replicates,
                               race_seed_values, recorded_design, resolve_design)
from sweeps.search.storage import RACE_SUFFIX, REPRODUCE_SUFFIX
from sweeps.search.study import top_trials
from sweeps.sweeper_config import ReproduceConf

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
    plan = plan_replicates(study, top_k=2, n_seeds=2, seed_kinds=[], determinism_check=True, design="crossed")
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


def test_paired_is_the_default_design_everywhere():
    study = _search()
    plan = plan_replicates(study, top_k=2, n_seeds=2, seed_kinds=[], determinism_check=False)
    assert {e["user_attrs"]["seed_kind"] for e in plan} == {"paired"} and len(plan) == 2 * 4
    assert DEFAULT_DESIGN == "paired" and ReproduceConf().design == "paired"
    # the CLI leaves --design unset so that a study's reproduction keeps its design; a new one gets paired
    assert parse_args(["--top-k", "2", "--n-seeds", "2"]).design is None
    assert resolve_design(parse_args(["--top-k", "2", "--n-seeds", "2"]).design or DEFAULT_DESIGN, None,
                          "s--reproduce") == "paired"
    assert resolve_design("crossed", None, "s--reproduce") == "crossed"


def _old_crossed_reproduction(storage) -> optuna.Study:
    """A reproduction written before paired became the default: crossed cells and a determinism pair,
    no design recorded anywhere but the runs' seed kinds."""
    repro = optuna.create_study(storage=storage, study_name="s" + REPRODUCE_SUFFIX, direction="maximize")
    for kind, seed, data_seed in (("crossed", 10_001, 10_001), ("crossed", 10_001, 10_002),
                                  ("determinism", FRESH_SEED_BASE, 0)):
        repro.add_trial(create_trial(value=0.8, user_attrs={"replicates_trial": 0, "seed_kind": kind, "seed": seed,
                                                            "data_seed": data_seed}))
    return repro


def test_an_old_crossed_reproduction_keeps_its_design_on_resume(capsys):
    storage = optuna.storages.InMemoryStorage()
    _search(storage)
    repro = _old_crossed_reproduction(storage)
    assert recorded_design(repro) == "crossed"
    # the sweep's config now says paired (the default): the study's reproduction still goes on crossed,
    # so its grids stay complete and its report keeps reading them as the crossed design they are
    assert resolve_design("paired", recorded_design(repro), repro.study_name) == "crossed"
    assert "goes on with the crossed design" in capsys.readouterr().out
    reps = replicates(trials_frame(optuna.load_study(study_name="s", storage=storage)), reproduce_frame(storage, "s"))
    assert set(reps["seed_kind"]) == {"crossed", "determinism"}
    fresh_repro = optuna.create_study(storage=storage, study_name="t" + REPRODUCE_SUFFIX)
    assert recorded_design(fresh_repro) is None


def test_only_a_design_named_on_the_command_line_adds_another_design_to_a_study(capsys):
    storage = optuna.storages.InMemoryStorage()
    _search(storage)
    repro = _old_crossed_reproduction(storage)
    # `lora-sweep reproduce --design paired` on it: run as asked, with a warning
    assert resolve_design("paired", recorded_design(repro), repro.study_name, explicit=True) == "paired"
    assert "already holds crossed replicates; adding paired ones as asked" in capsys.readouterr().out
    assert resolve_design("crossed", "crossed", repro.study_name, explicit=True) == "crossed"
    assert not capsys.readouterr().out


def _with_race(storage, rounds: int = 4) -> optuna.Study:
    """The search of `_search` plus its seed race as sweeps.runtime.race records it: the top 2 configs
    on seed pairs drawn by `fresh_seed_values` from the configs' own seeds alone (so they start at
    FRESH_SEED_BASE + 1, as the reproduction's used to), rounds 0-2 run, round 3 still queued."""
    study = _search(storage)
    race = optuna.create_study(storage=storage, study_name="s" + RACE_SUFFIX, direction="maximize")
    top = top_trials(study, 2)
    seeds = fresh_seed_values(top, 2 * rounds)
    for rnd in range(rounds):
        for trial in top:
            attrs = {"overrides": {**trial.params, "seed": seeds[2 * rnd], "data_seed": seeds[2 * rnd + 1]},
                     "replicates_trial": trial.number, "race_round": rnd, "seed_kind": "race",
                     "replicate_seed": seeds[2 * rnd], "replicate_data_seed": seeds[2 * rnd + 1]}
            if rnd < rounds - 1:
                race.add_trial(create_trial(value=0.8, user_attrs={**attrs, "seed": seeds[2 * rnd],
                                                                   "data_seed": seeds[2 * rnd + 1]}))
            else:
                race.enqueue_trial({}, user_attrs=attrs)
    return study


@pytest.mark.parametrize("design", ["paired", "crossed", "one_at_a_time"])
def test_reproduction_seeds_are_disjoint_from_the_race_and_the_search(design):
    """Both the race and the reproduction draw fresh seeds upward from FRESH_SEED_BASE: unless the
    reproduction leaves out the race's seeds, its runs share seeds with the race rounds that picked
    the winner and the reproduced mean carries the race's selection luck."""
    storage = optuna.storages.InMemoryStorage()
    study = _with_race(storage)
    race_seeds = race_seed_values(storage, "s")
    assert race_seeds == set(fresh_seed_values(top_trials(study, 2), 8))  # the queued round's seeds included
    search_seeds = {int(t.user_attrs[k]) for t in study.trials for k in ("seed", "data_seed")}
    kinds = ["seed", "data_seed", "both"]
    naive = plan_replicates(study, top_k=2, n_seeds=2, seed_kinds=kinds, determinism_check=True, design=design)
    plan = plan_replicates(study, top_k=2, n_seeds=2, seed_kinds=kinds, determinism_check=True, design=design,
                           avoid_seeds=race_seeds)

    def drawn(entries):  # the seeds each replicate drew fresh (one_at_a_time keeps the other one)
        kind_keys = {"seed": ("seed",), "data_seed": ("data_seed",)}
        return {e["overrides"][k] for e in entries if e["user_attrs"]["seed_kind"] != "determinism"
                for k in kind_keys.get(e["user_attrs"]["seed_kind"], ("seed", "data_seed"))}

    assert drawn(naive) & race_seeds  # without the race's seeds left out, they overlap
    assert drawn(plan) and not drawn(plan) & race_seeds and not drawn(plan) & search_seeds
    assert len(plan) == len(naive)


def test_no_race_study_means_no_seed_to_avoid():
    storage = optuna.storages.InMemoryStorage()
    _search(storage)
    assert race_seed_values(storage, "s") == set()
