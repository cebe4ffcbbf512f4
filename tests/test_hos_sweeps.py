"""lightning-hydra-template's `configs/hparams_search/mnist_optuna.yaml`, with only its searched keys
mapped to this project's config (model.optimizer.lr -> train.learning_rate, ...), runs as a real
tiny sweep on data=demo: in its current form (`params`) and in its older one (hydra-optuna-
sweeper's dict form `search_space`, here with a `custom_search_space` function on top). Also the
seed race with the seed out of the space."""

from __future__ import annotations

import textwrap

import pytest
from optuna.trial import TrialState

from sweep_helpers import TINY, only_study, run_sweep, runs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# ashleve/lightning-hydra-template, configs/hparams_search/mnist_optuna.yaml (comments left out), with
# the five `params` keys mapped: model.optimizer.lr -> train.learning_rate, data.batch_size ->
# train.batch_size, model.net.lin{1,2,3}_size -> lora.r, lora.lora_alpha, lora.target_modules.
MNIST_OPTUNA = """\
# @package _global_

defaults:
  - override /hydra/sweeper: optuna

optimized_metric: "val/acc_best"

hydra:
  mode: "MULTIRUN"

  sweeper:
    _target_: hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper
    storage: null
    study_name: null
    n_jobs: 1
    direction: maximize
    n_trials: 20

    sampler:
      _target_: optuna.samplers.TPESampler
      seed: 1234
      n_startup_trials: 10

    params:
      train.learning_rate: interval(0.0001, 0.1)
      train.batch_size: choice(8, 16)
      lora.r: choice(4, 8, 16)
      lora.lora_alpha: choice(8, 16, 32)
      lora.target_modules: choice(qv, attn)
"""

# The same file before lightning-hydra-template moved to `params` (its commit 1bbb686, 2022): the
# dict form, same key mapping.
MNIST_OPTUNA_DICT_FORM = MNIST_OPTUNA.split("    params:")[0] + """\
    search_space:
      train.batch_size:
        type: categorical
        choices: [8, 16]
      train.learning_rate:
        type: float
        low: 0.0001
        high: 0.2
      lora.r:
        type: categorical
        choices: [4, 8, 16]
"""

SPACES = textwrap.dedent("""
    def configure(cfg, trial):
        # conditional: dropout is searched only from rank 8 up; its ceiling is read from the config
        if trial.params["lora.r"] >= 8:
            trial.suggest_float("lora.lora_dropout", 0.0, cfg.search_extra.max_dropout)
        trial.suggest_categorical("train.lr_scheduler_type", ["linear", "cosine"])
""")

MAPPED = ["train.learning_rate", "train.batch_size", "lora.r", "lora.lora_alpha", "lora.target_modules"]


def _hparams(tmp_path, text: str) -> list[str]:
    folder = tmp_path / "configs" / "hparams_search"
    folder.mkdir(parents=True)
    (folder / "mnist_optuna.yaml").write_text(text)
    return ["--config-dir", str(tmp_path / "configs"), "+hparams_search=mnist_optuna"]


def _tiny(tiny_bert_dir) -> list[str]:
    tiny = [a for a in TINY if not a.startswith("train.batch_size=")]  # searched here: a plain value would fix it
    return [*tiny, "data=demo", f"model.name_or_path={tiny_bert_dir}", "hydra.sweeper.n_jobs=1"]


def test_lightning_hydra_template_params_config_runs_unchanged(tmp_path, tiny_bert_dir):
    # no -m: the file's `hydra.mode: MULTIRUN` makes it a sweep, as in that template
    out = run_sweep(tmp_path, *_hparams(tmp_path, MNIST_OPTUNA), *_tiny(tiny_bert_dir), "hydra.sweeper.n_trials=2",
                    multirun=False).stdout
    assert "names hydra-optuna-sweeper's OptunaSweeper" in out
    study = only_study(tmp_path)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    # params given in a config add to the search_space group's keys (search_space=none would start empty);
    # a key in both takes the file's entry
    space = study.user_attrs["search_space"]
    assert set(MAPPED) < set(space) and space["train.learning_rate"] == "interval(0.0001, 0.1)"
    assert len(trials) == 2 and all(set(t.params) == set(space) for t in trials)
    assert study.user_attrs["sampler"] == "tpe" and study.user_attrs["sampler_kwargs"] == {"n_startup_trials": 10}
    assert study.directions[0].name == "MAXIMIZE" and trials[0].user_attrs.get("base")
    sampled = trials[1]
    assert 0.0001 <= sampled.params["train.learning_rate"] <= 0.1
    _, _, children = runs(tmp_path)
    child = next(r for r in children if r.data.tags["optuna.trial_number"] == str(sampled.number))
    assert float(child.data.params["train.learning_rate"]) == pytest.approx(sampled.params["train.learning_rate"])
    assert child.data.params["lora.target_modules"] == sampled.params["lora.target_modules"]


def test_dict_form_config_with_a_custom_search_space_runs(tmp_path, tiny_bert_dir):
    (tmp_path / "my_spaces.py").write_text(SPACES)
    out = run_sweep(tmp_path, *_hparams(tmp_path, MNIST_OPTUNA_DICT_FORM), *_tiny(tiny_bert_dir),
                    "hydra.sweeper.n_trials=3", "hydra.sweeper.pruner=none", "+search_extra.max_dropout=0.2",
                    "hydra.sweeper.custom_search_space=my_spaces.configure", multirun=False).stdout
    assert "in place of the search_space=default group's keys" in out
    study = only_study(tmp_path)
    assert study.user_attrs["custom_search_space"] == "my_spaces.configure"
    trials = sorted(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.number)
    assert len(trials) == 3
    base = trials[0]  # the base config: the function's keys at their config values too
    assert base.user_attrs.get("base") and base.params["lora.lora_dropout"] == 0.05
    assert base.params["train.lr_scheduler_type"] == "linear"
    _, parents, children = runs(tmp_path)
    assert parents[0].data.params["custom_search_space"] == "my_spaces.configure"
    by_number = {int(r.data.tags["optuna.trial_number"]): r for r in children}
    for trial in trials:
        keys = {"train.batch_size", "train.learning_rate", "lora.r", "train.lr_scheduler_type"}
        keys |= {"lora.lora_dropout"} if trial.params["lora.r"] >= 8 else set()
        assert set(trial.params) == keys  # the function's params are the trial's params
        params = by_number[trial.number].data.params  # ... and reached the trial's config (MLflow params)
        assert params["train.lr_scheduler_type"] == trial.params["train.lr_scheduler_type"]
        if "lora.lora_dropout" in trial.params:
            assert float(params["lora.lora_dropout"]) == pytest.approx(trial.params["lora.lora_dropout"])
            assert 0.0 <= trial.params["lora.lora_dropout"] <= 0.2


def test_race_keeps_the_seed_out_of_the_search(tmp_path, tiny_bert_dir):
    out = run_sweep(tmp_path, *_tiny(tiny_bert_dir), "hydra.sweeper.n_trials=3", "hydra.sweeper.pruner=none",
                    "hydra.sweeper.race.enabled=true", "hydra.sweeper.race.top_k=2",
                    "hydra.sweeper.race.max_runs=4").stdout
    assert "race on: seed left the search space" in out
    study = only_study(tmp_path)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 3 and all("seed" not in t.params and t.user_attrs["seed"] == 0 for t in trials)
    assert study.user_attrs["seed_tuned"] is False  # the report's "seed was tuned" warning stays off
    assert trials[0].user_attrs.get("base")  # the base guard: the starting config is still trial 0
    race = only_study(tmp_path, suffix="--race").get_trials(states=(TrialState.COMPLETE,))
    assert len(race) == 4 and all(t.user_attrs["replicate_seed"] != 0 for t in race)

    from analysis.report import build_report
    from sweeps.search.storage import open_storage

    storage = open_storage(str(tmp_path / "optuna-journal.log"))
    md = (build_report(storage, study.study_name, tmp_path / "report", log_to_mlflow=False) / "report.md").read_text()
    assert "seed was tuned" not in md and "seed is part of the search space" not in md
