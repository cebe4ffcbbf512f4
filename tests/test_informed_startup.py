"""hydra.sweeper.startup=informed: the first n trials train the prior's config with the learning rate
spread evenly (in log) over the space's range, enqueued once per study (never again on a resume nor
by a second worker), then the sampler takes over with them as its history."""

from __future__ import annotations

import math

import optuna
import pytest

from sweep_helpers import TINY, only_study, run_sweep
from sweeps.search.space import parse_search_space
from sweeps.search.startup import (LR_KEY, STUDY_ATTR, TRIAL_ATTR, default_startup_trials, enqueue_informed_startup,
                                   informed_startup_params, startup_trials)

pytestmark = pytest.mark.timeout(600)

SPACE = parse_search_space({  # search_space=llm's shape, resolved for a prior of 1e-3 (hidden 2048)
    "lora.r": "choice(16, 8, 32, 64)", "lora.lora_dropout": "interval(0.0, 0.1)",
    "lora.target_modules": "choice(all_linear, attn)", LR_KEY: "tag(log, lr_prior, interval(0.25, 4))",
    "train.warmup_ratio": "interval(0.02, 0.1)", "seed": "range(0, 4)"}).resolve_prior([1e-3])
CENTRE = {"lora.r": 16, "lora.lora_dropout": 0.05, "lora.target_modules": "all_linear", "train.warmup_ratio": 0.06,
          "seed": 0}


def log_steps(rates: list[float]) -> list[float]:
    ordered = sorted(rates)
    return [math.log(b / a) for a, b in zip(ordered, ordered[1:])]


def test_the_startup_trials_spread_the_learning_rate_evenly_at_the_priors_config():
    params = informed_startup_params(SPACE, 10)
    assert len(params) == 10
    assert all({k: v for k, v in p.items() if k != LR_KEY} == CENTRE for p in params)
    rates = [p[LR_KEY] for p in params]
    steps = log_steps(rates)
    assert steps == pytest.approx([math.log(16) / 10] * 9, rel=0.02)  # even in log: 10 bins of 1e-3/4 .. 1e-3*4
    assert 2.5e-4 < min(rates) and max(rates) < 4e-3  # bin middles: neither end of the range
    assert min(rates) == pytest.approx(2.5e-4 * 16 ** 0.05, rel=0.01)
    first = sorted(rates[:3])  # the first few (what several workers start at once) cover the range
    assert (first[0], first[-1]) == (min(rates), max(rates))
    assert list(params[0]) == list(SPACE.distributions)  # the space's key order


def test_the_base_config_is_one_of_the_startup_trials():
    on_line = {**CENTRE, LR_KEY: 1e-3}  # task=sft's base: the prior's config at the prior's rate
    rates = [p[LR_KEY] for p in informed_startup_params(SPACE, 10, on_line)]
    assert len(rates) == 9 and 1e-3 not in rates
    full = [p[LR_KEY] for p in informed_startup_params(SPACE, 10)]
    nearest = min(full, key=lambda r: abs(math.log(r / 1e-3)))
    assert sorted(rates) == sorted(r for r in full if r != nearest)  # the base takes the nearest point's place
    elsewhere = {**CENTRE, "lora.target_modules": "attn", LR_KEY: 5e-4}  # a user's config off the line
    rates = [p[LR_KEY] for p in informed_startup_params(SPACE, 10, elsewhere)]
    assert len(rates) == 9 and log_steps(rates) == pytest.approx([math.log(16) / 9] * 8, rel=0.02)


def test_a_choice_of_rates_is_spread_through_its_values():
    space = parse_search_space({LR_KEY: "choice(1e-4, 3e-4, 1e-3, 3e-3, 1e-2)", "lora.r": "choice(8, 16)"})
    assert sorted(p[LR_KEY] for p in informed_startup_params(space, 3)) == [1e-4, 1e-3, 1e-2]


def test_without_a_learning_rate_dimension_it_says_so_and_falls_back_to_random():
    space = parse_search_space({"lora.r": "choice(8, 16)"})
    with pytest.raises(ValueError, match="startup=informed: the search space has no train.learning_rate dimension"):
        informed_startup_params(space, 5)
    study = optuna.create_study()
    params, message = enqueue_informed_startup(study, space, 5)
    assert params == [] and "random start-up runs instead" in message and not study.trials
    assert STUDY_ATTR not in study.user_attrs


def test_enqueued_once_per_study_never_on_a_resume_nor_into_a_started_study(tmp_path):
    from sweeps.search.storage import open_storage

    storage = open_storage(f"journal:///{tmp_path / 'journal.log'}")
    study = optuna.create_study(storage=storage, study_name="s")
    study.enqueue_trial({**CENTRE, LR_KEY: 1e-3}, user_attrs={"base": True})
    params, message = enqueue_informed_startup(study, SPACE, 10, {**CENTRE, LR_KEY: 1e-3})
    assert len(params) == 9 and "9 trial(s) + the base config" in message
    again = optuna.load_study(study_name="s", storage=open_storage(f"journal:///{tmp_path / 'journal.log'}"))
    assert enqueue_informed_startup(again, SPACE, 10)[0] == []  # a resume, another machine
    assert len(again.trials) == 10 and again.user_attrs[STUDY_ATTR] == 9
    assert sum(t.user_attrs.get(TRIAL_ATTR) == "informed" for t in again.trials) == 9

    started = optuna.create_study()
    started.add_trial(optuna.trial.create_trial(params={"lora.r": 8}, distributions={
        "lora.r": SPACE.distributions["lora.r"]}, value=0.5))
    params, message = enqueue_informed_startup(started, SPACE, 10)
    assert params == [] and "already has 1 trial(s)" in message


def test_the_startup_length_is_the_samplers():
    assert default_startup_trials() == optuna.samplers.TPESampler()._n_startup_trials
    assert startup_trials({"n_startup_trials": 4}) == 4 and startup_trials(None) == default_startup_trials()


def test_tpe_takes_over_with_the_startup_trials_as_history():
    """A replay in an in-memory study, as the benchmark drives it: the informed trials run first,
    then TPE proposes from them. Seeded simulation (20 sampler seeds, an objective peaking at 2e-3,
    2x off the prior): TPE's next proposals crowd the best rate far more than random draws after
    the same history, so the informed trials are its history, not a detour."""
    from sweeps.search.space import suggest

    def objective(rate):
        return -(math.log10(rate / 2e-3)) ** 2

    n = default_startup_trials()

    def proposals(sampler) -> list[float]:
        study = optuna.create_study(direction="maximize", sampler=sampler)
        enqueue_informed_startup(study, SPACE, n)
        rates = []
        for _ in range(n + 8):
            trial = study.ask()
            params = {k: suggest(trial, k, d) for k, d in SPACE.distributions.items()}
            study.tell(trial, objective(params[LR_KEY]))
            rates.append(params[LR_KEY])
        assert sorted(rates[:n]) == sorted(p[LR_KEY] for p in informed_startup_params(SPACE, n))
        return rates[n:]

    def median_miss(rates):
        return sorted(abs(math.log10(r / 2e-3)) for r in rates)[len(rates) // 2]

    tpe = [r for seed in range(20) for r in proposals(optuna.samplers.TPESampler(seed=seed, constant_liar=True))]
    rnd = [r for seed in range(20) for r in proposals(optuna.samplers.RandomSampler(seed=seed))]
    assert median_miss(tpe) < 0.6 * median_miss(rnd)  # 0.13 vs 0.32 decades


def test_the_report_does_not_take_informed_trials_for_random_draws():
    """The expected-max curve (analysis) assumes i.i.d. draws: the informed trials were placed, and
    TPE then had no random start-up to take instead."""
    import numpy as np
    import pandas as pd

    from analysis.context import ReportData

    frame = pd.DataFrame({"number": range(8), "state": ["COMPLETE"] * 8, "value": [0.5 + 0.01 * i for i in range(8)],
                          "last_intermediate": [np.nan] * 8, f"attr.{TRIAL_ATTR}": ["informed"] * 4 + [None] * 4})
    data = ReportData(study=None, attrs={"sampler": "tpe", STUDY_ATTR: 4}, frame=frame,
                      done=frame, repro=None, reps=pd.DataFrame())
    values, label = data.expected_max_sample()
    assert list(values) == pytest.approx([0.54, 0.55, 0.56, 0.57]) and "not i.i.d." in label
    assert "random start-up" not in label


@pytest.mark.slow
def test_a_sweep_with_two_workers_enqueues_once_and_a_resume_adds_none(tmp_path, tiny_bert_dir):
    common = (*TINY, f"model.name_or_path={tiny_bert_dir}", "hydra.sweeper.startup=informed", "hydra.sweeper.n_jobs=2",
              "hydra.sweeper.pruner=none", "hydra.sweeper.sampler_kwargs={n_startup_trials: 4}")
    proc = run_sweep(tmp_path, *common, "hydra.sweeper.n_trials=4")
    assert "informed start-up: 3 trial(s) + the base config" in proc.stdout, proc.stdout[-3000:]
    proc = run_sweep(tmp_path, *common, "hydra.sweeper.n_trials=6")
    assert "informed start-up: already enqueued (3 trials)" in proc.stdout, proc.stdout[-3000:]
    trials = only_study(tmp_path).get_trials()
    assert len(trials) == 6 and sum(bool(t.user_attrs.get("base")) for t in trials) == 1
    informed = [t for t in trials if t.user_attrs.get(TRIAL_ATTR) == "informed"]
    assert len(informed) == 3 and all(t.state == optuna.trial.TrialState.COMPLETE for t in informed)
    assert {t.params["lora.target_modules"] for t in informed} == {"all_linear"}  # the prior's pick, not the base's qv
    steps = log_steps([t.params[LR_KEY] for t in informed])
    assert steps == pytest.approx([math.log(16) / 3] * 2, rel=0.02)  # 3 bins over 1/4x .. 4x the prior
