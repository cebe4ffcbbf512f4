"""The Hydra override grammar → Optuna distributions (each form), and the sweeper settings checks."""

import itertools

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from sweeps.search.samplers import SweeperConfigError, make_pruner, make_sampler, sampler_seed
from sweeps.search.space import (SearchSpaceError, base_params, override_line, parse_search_space, split_overrides,
                                 suggest)


@pytest.mark.parametrize("text, expected", [
    ("choice(4, 8, 16)", CategoricalDistribution([4, 8, 16])),
    ("choice(qv, attn, all_linear)", CategoricalDistribution(["qv", "attn", "all_linear"])),
    ("4,8,16", CategoricalDistribution([4, 8, 16])),
    ("range(0, 4)", IntDistribution(0, 3)),                 # stop is exclusive, as in Hydra
    ("range(4, 33, 4)", IntDistribution(4, 32, step=4)),
    ("range(0, 1, 0.25)", FloatDistribution(0.0, 0.75, step=0.25)),
    ("shuffle(range(1, 4))", CategoricalDistribution([1, 2, 3])),
    ("interval(0.0, 0.2)", FloatDistribution(0.0, 0.2)),
    ("interval(1, 32)", FloatDistribution(1.0, 32.0)),      # Hydra intervals are float ...
    ("int(interval(1, 32))", IntDistribution(1, 32)),       # ... unless cast
    ("tag(log, interval(1e-5, 1e-2))", FloatDistribution(1e-5, 1e-2, log=True)),
    ("tag(log, int(interval(2, 64)))", IntDistribution(2, 64, log=True)),
])
def test_each_grammar_form(text, expected):
    dist = parse_search_space({"k": text}).distributions["k"]
    if text.startswith("shuffle"):
        assert sorted(dist.choices) == sorted(expected.choices)
    else:
        assert dist == expected


def test_fixed_values_and_command_line_override_config():
    space = parse_search_space({"lora.r": "choice(4, 8)", "train.max_steps": 20}, ["lora.r=16,32", "seed=range(0,3)"])
    assert space.distributions["lora.r"] == CategoricalDistribution([16, 32])
    assert space.distributions["seed"] == IntDistribution(0, 2)
    assert space.fixed == {"train.max_steps": 20}


@pytest.mark.parametrize("text, fragment", [
    ("tag(log, interval(0, 1))", "needs low > 0"),
    ("range(3, 3)", "is empty"),
    ("choice([1,2],[3])", "scalars only"),
])
def test_bad_entries_name_the_key(text, fragment):
    with pytest.raises(SearchSpaceError, match=rf"hydra.sweeper.params.k: .*{fragment}"):
        parse_search_space({"k": text})


def test_split_overrides_keeps_plain_ones():
    sweeps, plain = split_overrides(["lora.r=4,8", "model.name_or_path=/tmp/x", "x=choice(a,b)"])
    assert sweeps == ["lora.r=4,8", "x=choice(a,b)"]
    assert plain == ["model.name_or_path=/tmp/x"]


def test_override_line_round_trips_through_hydra():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for value in ["qv", "it's/a path", 3, 1e-4, True, None]:
        assert parser.parse_override(override_line("k", value)).value() == value


def test_grid_sampler_needs_finite_values():
    space = parse_search_space({"a": "choice(1, 2)", "b": "range(0, 3)"})
    assert space.grid() == {"a": [1, 2], "b": [0, 1, 2]}
    with pytest.raises(ValueError, match="hydra.sweeper.params.c: the grid sampler needs finite values"):
        make_sampler("grid", 0, parse_search_space({"c": "interval(0, 1)"}), 1)


def _asks_of_two_workers(sampler: str, space, n: int, sampler_seed_value: int | None, **kwargs) -> list[tuple]:
    """Two workers' samplers (seeded as the workers seed them) asking in turn on one study, every
    trial still running when the other asks: what a 2-worker sweep proposes."""
    storage = optuna.storages.InMemoryStorage()
    optuna.create_study(storage=storage, study_name="s", direction="maximize")
    workers = [optuna.load_study(study_name="s", storage=storage, sampler=make_sampler(
        sampler, sampler_seed(sampler, sampler_seed_value, "s", worker_id, 0), space, 1, kwargs)) for worker_id in (0, 1)]
    asks = []
    for i in range(n):
        trial = workers[i % 2].ask()
        asks.append(tuple(suggest(trial, k, d) for k, d in space.distributions.items()))
    return asks


@pytest.mark.parametrize("seed", [0, 7, None])
def test_two_workers_of_a_grid_sweep_cover_the_grid_once(seed):
    space = parse_search_space({"lora.r": "choice(4, 8, 16)", "seed": "range(0, 3)"})
    asks = _asks_of_two_workers("grid", space, 9, seed)
    assert sorted(asks) == sorted(itertools.product([4, 8, 16], [0, 1, 2]))


def test_two_workers_of_a_scrambled_qmc_sweep_follow_one_sequence():
    space = parse_search_space({"a": "interval(0.0, 1.0)", "b": "interval(0.0, 1.0)"})
    single = optuna.create_study(sampler=make_sampler("qmc", sampler_seed("qmc", 3, "s", 0, 0), space, 1,
                                                      {"scramble": True}))
    expected = [tuple(suggest(t, k, d) for k, d in space.distributions.items())
                for t in (single.ask() for _ in range(6))]
    assert _asks_of_two_workers("qmc", space, 6, 3, scramble=True) == expected


def test_unknown_sampler_and_pruner_list_the_choices():
    space = parse_search_space({"a": "choice(1, 2)"})
    with pytest.raises(SweeperConfigError, match="hydra.sweeper.sampler: unknown sampler 'bogus'; allowed: tpe"):
        make_sampler("bogus", 0, space, 1)
    with pytest.raises(SweeperConfigError, match="hydra.sweeper.pruner: unknown pruner 'bogus'; allowed: median"):
        make_pruner("bogus")
    with pytest.raises(SweeperConfigError, match="single-objective"):
        make_sampler("cmaes", 0, space, 2)
    for name in ("tpe", "random", "grid", "cmaes", "gp", "nsgaii", "qmc"):
        assert make_sampler(name, 0, space, 1) is not None


def test_base_params_are_the_job_values_when_the_space_holds_them():
    from omegaconf import OmegaConf

    space = parse_search_space({"lora.r": "choice(4, 8, 16)", "train.learning_rate": "tag(log, interval(5e-4, 1e-2))",
                                "seed": "range(0, 4)", "lora.target_modules": "choice(qv, attn)", "flag": "choice(true, false)"})
    job = OmegaConf.create({"lora": {"r": 8, "target_modules": "qv"}, "train": {"learning_rate": 3e-3}, "seed": 0,
                            "flag": False})
    params, outside = base_params(job, space)
    assert outside == [] and params == {"lora.r": 8, "train.learning_rate": 3e-3, "seed": 0, "lora.target_modules": "qv",
                                        "flag": False}
    job.lora.r, job.train.learning_rate, job.seed, job.flag = 32, 1e-4, 7, 0
    _, outside = base_params(job, space)
    assert [o.split("=")[0] for o in outside] == ["lora.r", "train.learning_rate", "seed", "flag"]
