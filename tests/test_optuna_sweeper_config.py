"""hydra-optuna-sweeper's sampler/pruner form (`_target_` plus keyword arguments) is accepted beside
our short names, so a config written for that plugin runs unchanged."""

from __future__ import annotations

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.trial import TrialState

from sweep_helpers import TINY, only_study, run_sweep, runs
from sweeps.search.pruning import GuardedPruner, PruneGuard
from sweeps.search.samplers import SweeperConfigError, make_pruner, make_sampler, normalize_sampler_config
from sweeps.search.space import parse_search_space
from sweeps.sweeper_config import LoraOptunaSweeperConf

SPACE = parse_search_space({"x": "interval(-5.0, 5.0)", "y": "choice(-5, 0, 5)"})


def _conf(**settings):
    """The sweeper node as the sweeper holds it: our defaults with the user's settings merged in."""
    return OmegaConf.merge(OmegaConf.structured(LoraOptunaSweeperConf), OmegaConf.create(settings))


def _proposals(sampler: optuna.samplers.BaseSampler, n: int) -> list[dict]:
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: t.suggest_float("x", -5, 5) ** 2 + t.suggest_categorical("y", [-5, 0, 5]), n_trials=n)
    return [t.params for t in study.trials]


# -- unit ---------------------------------------------------------------------------------------
def test_tpe_node_becomes_short_name_seed_and_kwargs():
    conf = normalize_sampler_config(_conf(sampler={"_target_": "optuna.samplers.TPESampler", "seed": 123,
                                                   "n_startup_trials": 5}))
    assert (conf.sampler, conf.sampler_seed, dict(conf.sampler_kwargs)) == ("tpe", 123, {"n_startup_trials": 5})
    assert conf.pruner == "median"  # untouched


def test_median_pruner_node_becomes_short_name_and_kwargs_inside_the_guard():
    conf = normalize_sampler_config(_conf(pruner={"_target_": "optuna.pruners.MedianPruner", "n_warmup_steps": 3}))
    assert (conf.pruner, dict(conf.pruner_kwargs)) == ("median", {"n_warmup_steps": 3})
    pruner = make_pruner(conf.pruner, conf.pruner_kwargs, PruneGuard(prune_after=0.5, min_trials=4))
    assert isinstance(pruner, GuardedPruner)  # our guard still wraps the plugin-form pruner


@pytest.mark.parametrize("target, name", [
    ("optuna.samplers.RandomSampler", "random"), ("optuna.samplers.GridSampler", "grid"),
    ("optuna.samplers.CmaEsSampler", "cmaes"), ("optuna.samplers.GPSampler", "gp"),
    ("optuna.samplers.NSGAIISampler", "nsgaii"), ("optuna.samplers.QMCSampler", "qmc"),
])
def test_every_supported_sampler_target(target, name):
    assert normalize_sampler_config(_conf(sampler={"_target_": target})).sampler == name


@pytest.mark.parametrize("target, name", [
    ("optuna.pruners.HyperbandPruner", "hyperband"), ("optuna.pruners.SuccessiveHalvingPruner", "successive_halving"),
    ("optuna.pruners.PercentilePruner", "percentile"), ("optuna.pruners.ThresholdPruner", "threshold"),
    ("optuna.pruners.WilcoxonPruner", "wilcoxon"), ("optuna.pruners.NopPruner", "none"),
])
def test_every_supported_pruner_target(target, name):
    assert normalize_sampler_config(_conf(pruner={"_target_": target})).pruner == name


def test_plugin_grid_node_drops_hydra_partial():
    """The plugin's grid config is `{_target_: optuna.samplers.GridSampler, _partial_: true}`:
    `_partial_` is for hydra.utils.instantiate, not an argument of the sampler."""
    conf = normalize_sampler_config(_conf(sampler={"_target_": "optuna.samplers.GridSampler", "_partial_": True}))
    assert (conf.sampler, dict(conf.sampler_kwargs or {})) == ("grid", {})
    assert isinstance(make_sampler(conf.sampler, 0, parse_search_space({"y": "choice(1, 2)"}), 1,
                                   conf.sampler_kwargs), optuna.samplers.GridSampler)


def test_short_names_pass_through_unchanged():
    out = normalize_sampler_config(_conf(sampler="random", sampler_seed=3, sampler_kwargs={"n_startup_trials": 2},
                                         pruner="none"))
    assert (out.sampler, out.sampler_seed, dict(out.sampler_kwargs), out.pruner) == ("random", 3, {"n_startup_trials": 2}, "none")


def test_null_seed_in_node_keeps_sampler_seed():
    """The plugin's sampler configs carry `seed: null` unless set: that is no request for an unseeded sampler."""
    conf = normalize_sampler_config(_conf(sampler={"_target_": "optuna.samplers.RandomSampler", "seed": None},
                                          sampler_seed=5))
    assert (conf.sampler, conf.sampler_seed) == ("random", 5)


def test_kwargs_merge_with_sampler_kwargs_when_they_agree():
    conf = normalize_sampler_config(_conf(sampler={"_target_": "optuna.samplers.TPESampler", "n_startup_trials": 5},
                                          sampler_kwargs={"n_startup_trials": 5, "multivariate": True}))
    assert dict(conf.sampler_kwargs) == {"n_startup_trials": 5, "multivariate": True}


def test_conflicting_seed_names_both_keys():
    with pytest.raises(SweeperConfigError) as err:
        normalize_sampler_config(_conf(sampler={"_target_": "optuna.samplers.TPESampler", "seed": 123}, sampler_seed=7))
    assert "hydra.sweeper.sampler.seed" in str(err.value) and "hydra.sweeper.sampler_seed" in str(err.value)
    # the same seed in both places is no conflict
    assert normalize_sampler_config(_conf(sampler={"_target_": "optuna.samplers.TPESampler", "seed": 7},
                                          sampler_seed=7)).sampler_seed == 7


def test_conflicting_kwarg_names_the_key():
    with pytest.raises(SweeperConfigError, match=r"hydra\.sweeper\.pruner\.n_warmup_steps.*pruner_kwargs\.n_warmup_steps"):
        normalize_sampler_config(_conf(pruner={"_target_": "optuna.pruners.MedianPruner", "n_warmup_steps": 3},
                                       pruner_kwargs={"n_warmup_steps": 1}))


def test_unknown_target_lists_the_allowed_ones():
    with pytest.raises(SweeperConfigError) as err:
        normalize_sampler_config(_conf(sampler={"_target_": "optuna.samplers.MOTPESampler"}))
    text = str(err.value)
    assert "hydra.sweeper.sampler._target_" in text and "MOTPESampler" in text
    assert "optuna.samplers.TPESampler" in text and "optuna.samplers.QMCSampler" in text
    with pytest.raises(SweeperConfigError, match=r"hydra\.sweeper\.pruner\._target_.*optuna\.pruners\.MedianPruner"):
        normalize_sampler_config(_conf(pruner={"_target_": "my.Pruner"}))


def test_mapping_without_target_is_an_error():
    with pytest.raises(SweeperConfigError, match=r"hydra\.sweeper\.sampler: a mapping needs _target_"):
        normalize_sampler_config(_conf(sampler={"seed": 123}))


# -- hydra-optuna-sweeper's own documented config ----------------------------------------------
# Verbatim from facebookresearch/hydra, website/docs/plugins/optuna_sweeper.md ("Example 1:
# Single-Objective Optimization", the output of
# `python example/sphere.py hydra/sweeper=optuna --cfg hydra -p hydra.sweeper`).
PLUGIN_DOCS_SWEEPER_YAML = """\
# @package hydra.sweeper
sampler:
  _target_: optuna.samplers.TPESampler
  seed: 123
  n_startup_trials: 10
  n_ei_candidates: 24
  multivariate: false
_target_: hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper
direction: minimize
storage: null
study_name: sphere
n_trials: 20
n_jobs: 1
max_failure_rate: 0.0
params:
  x: range(-5.5,5.5,step=0.5)
  y: choice(-5,0,5)
"""

# Verbatim from hydra-optuna-sweeper 1.3.0 (PyPI), hydra_plugins/hydra_optuna_sweeper/config.py:
# the `hydra/sweeper/sampler: tpe` node (TPESamplerConfig) as OmegaConf.to_yaml writes it.
PLUGIN_TPE_SAMPLER_YAML = """\
_target_: optuna.samplers.TPESampler
seed: null
consider_prior: true
prior_weight: 1.0
consider_magic_clip: true
consider_endpoints: false
n_startup_trials: 10
n_ei_candidates: 24
multivariate: false
warn_independent_sampling: true
"""


def test_plugin_documented_sweeper_config_builds_a_tpe_sampler(tmp_path):
    path = tmp_path / "sweeper.yaml"
    path.write_text(PLUGIN_DOCS_SWEEPER_YAML)
    plugin_node = OmegaConf.load(path)
    del plugin_node["_target_"]  # the plugin's class; ours comes from hydra/sweeper=lora_optuna
    conf = normalize_sampler_config(OmegaConf.merge(OmegaConf.structured(LoraOptunaSweeperConf), plugin_node))
    assert (conf.sampler, conf.sampler_seed) == ("tpe", 123)
    assert dict(conf.sampler_kwargs) == {"n_startup_trials": 10, "n_ei_candidates": 24, "multivariate": False}

    sampler = make_sampler(conf.sampler, conf.sampler_seed, SPACE, 1, conf.sampler_kwargs)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    reference = optuna.samplers.TPESampler(seed=123, n_startup_trials=10, n_ei_candidates=24, multivariate=False)
    assert _proposals(sampler, 12) == _proposals(reference, 12)  # same seed and arguments, past the startup trials


@pytest.mark.filterwarnings("ignore:`.*` has been deprecated:FutureWarning")  # the plugin passes consider_prior & co.
def test_plugin_tpe_sampler_node_builds_a_tpe_sampler(tmp_path):
    (tmp_path / "tpe.yaml").write_text(PLUGIN_TPE_SAMPLER_YAML)
    conf = normalize_sampler_config(_conf(sampler=OmegaConf.load(tmp_path / "tpe.yaml"), sampler_seed=11))
    assert (conf.sampler, conf.sampler_seed) == ("tpe", 11)  # `seed: null` leaves our seed in place
    sampler = make_sampler(conf.sampler, conf.sampler_seed, SPACE, 1, conf.sampler_kwargs)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    reference = optuna.samplers.TPESampler(seed=11, n_startup_trials=10, n_ei_candidates=24)
    assert _proposals(sampler, 3) == _proposals(reference, 3)


# -- end to end ---------------------------------------------------------------------------------
@pytest.mark.timeout(900)
def test_cli_sweep_with_target_sampler_and_pruner(tmp_path, tiny_bert_dir):
    run_sweep(tmp_path, *TINY, f"model.name_or_path={tiny_bert_dir}", "hydra.sweeper.n_trials=2",
              "hydra.sweeper.n_jobs=1",
              "hydra.sweeper.sampler={_target_: optuna.samplers.RandomSampler, seed: 7}",
              "hydra.sweeper.pruner={_target_: optuna.pruners.MedianPruner, n_warmup_steps: 2}")
    study = only_study(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert study.user_attrs["sampler"] == "random" and study.user_attrs["sampler_kwargs"] == {}
    _, parents, _ = runs(tmp_path)
    assert parents[0].data.tags["sweep.sampler"] == "random" and parents[0].data.tags["sweep.pruner"] == "median"
    assert parents[0].info.status == "FINISHED"


def test_cli_unknown_target_rejected_before_any_trial(tmp_path, tiny_bert_dir):
    proc = run_sweep(tmp_path, *TINY, f"model.name_or_path={tiny_bert_dir}", "hydra.sweeper.n_trials=1",
                     "hydra.sweeper.sampler={_target_: optuna.samplers.MOTPESampler}", check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "hydra.sweeper.sampler._target_" in text and "optuna.samplers.TPESampler" in text
    assert not (tmp_path / "optuna-journal.log").exists()
