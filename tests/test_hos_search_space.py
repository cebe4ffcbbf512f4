"""hydra-optuna-sweeper's other two ways of giving the space, with that plugin's meaning:
`hydra.sweeper.search_space` (the dict form, {key: {type, low, high, step, log, choices}}) and
`hydra.sweeper.custom_search_space` (a function `fn(cfg, trial)` suggesting more params); plus how
`params` from your own config combine with the `search_space` config group, and the seed leaving
the space while the race replicates it. The end-to-end sweeps are in test_hos_sweeps.py."""

from __future__ import annotations

import sys
import textwrap

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from sweep_helpers import run_sweep
from sweeps.runtime.race import seeds_as_replicates
from sweeps.search.custom_space import CustomSearchSpace, base_values, load_function, probe
from sweeps.search.space import (SearchSpaceError, base_params, dict_search_space, merged, parse_search_space,
                                 pin_plain_overrides)
from sweeps.sweeper_config import LoraOptunaSweeperConf


# -- the dict form --------------------------------------------------------------------------------
# The cases of hydra-optuna-sweeper's own test of this form (test_create_optuna_distribution_from_config,
# facebookresearch/hydra before the form was removed), with the distributions it expected.
@pytest.mark.parametrize("entry, expected", [
    ({"type": "categorical", "choices": [1, 2, 3]}, CategoricalDistribution([1, 2, 3])),
    ({"type": "int", "low": 0, "high": 10}, IntDistribution(0, 10)),
    ({"type": "int", "low": 0, "high": 10, "step": 2}, IntDistribution(0, 10, step=2)),
    ({"type": "int", "low": 0, "high": 5}, IntDistribution(0, 5)),
    ({"type": "int", "low": 1, "high": 100, "log": True}, IntDistribution(1, 100, log=True)),
    ({"type": "float", "low": 0, "high": 1}, FloatDistribution(0, 1)),
    ({"type": "float", "low": 0, "high": 10, "step": 2}, FloatDistribution(0, 10, step=2)),
    ({"type": "float", "low": 1, "high": 100, "log": True}, FloatDistribution(1, 100, log=True)),
])
def test_dict_form_builds_the_plugins_distributions(entry, expected):
    space = dict_search_space({"x": entry})
    assert space.distributions == {"x": expected}
    assert space.grammar["x"].startswith("{type: ")  # the entry as written, for the report and the dry run


@pytest.mark.parametrize("entry, message", [
    ({"type": "normal", "low": 0, "high": 1}, r"search_space\.x\.type: 'normal' is not allowed; allowed: int, float, categorical"),
    ({"type": "float", "low": 0, "high": 1, "lower": 0}, r"search_space\.x: unknown field\(s\) lower; allowed: type, choices"),
    ({"type": "float", "low": 0}, r"search_space\.x: a float entry needs low and high"),
    ({"type": "categorical"}, r"search_space\.x\.choices: a categorical entry needs a non-empty list"),
    ({"type": "float", "low": 0, "high": 1, "log": True}, r"search_space\.x: log: true needs low > 0"),
    ({"type": "int", "low": 5, "high": 1}, r"search_space\.x: needs low <= high"),
    ({"type": "float", "low": "a", "high": 1}, r"search_space\.x\.low: must be a number"),
    ("interval(0, 1)", r"search_space\.x: expected a mapping"),
])
def test_dict_form_errors_name_the_key_and_what_is_allowed(entry, message):
    with pytest.raises(SearchSpaceError, match="hydra.sweeper." + message):
        dict_search_space({"x": entry})


def test_command_line_sweeps_add_to_the_dict_form_and_win_per_key():
    space = merged(dict_search_space({"lora.r": {"type": "categorical", "choices": [4, 8]},
                                      "train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}),
                   parse_search_space({}, ["lora.r=16,32", "lora.lora_dropout=interval(0, 0.1)"]))
    assert space.distributions == {"lora.r": CategoricalDistribution([16, 32]),
                                   "train.learning_rate": FloatDistribution(1e-4, 1e-2, log=True),
                                   "lora.lora_dropout": FloatDistribution(0.0, 0.1)}


def test_a_plain_command_line_value_of_a_searched_key_fixes_it():
    """`python sweep.py -m lora.r=8` with lora.r in the space: as in hydra-optuna-sweeper, the key
    leaves the space and every trial gets 8 (before, the sampled value silently won)."""
    space = pin_plain_overrides(parse_search_space({"lora.r": "choice(4, 8, 16)", "seed": "range(0, 4)"}),
                                ["lora.r=8", "data=demo", "train.max_steps=6"])
    assert list(space.distributions) == ["seed"] and space.fixed == {"lora.r": 8}


def test_a_plain_value_of_a_key_the_command_line_also_sweeps_is_the_base_configs():
    """`'train.batch_size=choice(2,64)' train.batch_size=64`: the sweep defines the space, the plain
    value the base config (the memory-limit tests start from a base that does not fit)."""
    sweeps = ["train.batch_size=choice(2,64)"]
    space = pin_plain_overrides(parse_search_space({}, sweeps), ["train.batch_size=64"], sweeps)
    assert space.distributions == {"train.batch_size": CategoricalDistribution([2, 64])} and not space.fixed


def test_sweeper_node_accepts_both_keys():
    """The error the issue reports (`Key 'search_space' not in 'LoraOptunaSweeperConf'`) is gone."""
    node = OmegaConf.merge(OmegaConf.structured(LoraOptunaSweeperConf), OmegaConf.create({
        "search_space": {"x": {"type": "float", "low": 0, "high": 1}}, "custom_search_space": "mod.fn"}))
    assert node.search_space.x.type == "float" and node.custom_search_space == "mod.fn"


# -- custom_search_space --------------------------------------------------------------------------
SPACES = textwrap.dedent("""
    def configure(cfg, trial):
        # conditional: dropout is searched only for the larger ranks; its ceiling comes from the config
        if trial.params["lora.r"] >= 8:
            trial.suggest_float("lora.lora_dropout", 0.0, cfg.train.max_grad_norm / 10)
        trial.suggest_categorical("+extra.tag", ["a", "b"])

    def fixed_clash(cfg, trial):
        assert trial.user_attrs["train.batch_size"] == 8  # the plugin's contract: fixed params are user attrs
        trial.suggest_categorical("train.batch_size", [8, 16])

    def broken(cfg, trial):
        raise KeyError("no such thing")
""")


@pytest.fixture
def spaces_module(tmp_path, monkeypatch):
    (tmp_path / "my_spaces.py").write_text(SPACES)
    monkeypatch.chdir(tmp_path)  # importable from the directory you run from, as the workers find it
    yield "my_spaces"
    sys.modules.pop("my_spaces", None)
    if str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))


CFG = {"train": {"max_grad_norm": 1.0}, "hydra": {"job": {"name": "x"}}}


def test_custom_function_adds_conditional_params_on_the_trial(spaces_module):
    custom = CustomSearchSpace(f"{spaces_module}.configure", CFG)
    space = parse_search_space({"lora.r": "choice(4, 16)"})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {4: set(), 16: set()}
    for _ in range(12):
        trial = study.ask()
        trial.suggest_categorical("lora.r", [4, 16])
        added = custom.apply(trial, {})
        seen[trial.params["lora.r"]].add(frozenset(added))
        assert set(added) <= set(trial.params)  # recorded on the trial (reports, export, MLflow)
        if "lora.lora_dropout" in added:
            assert 0.0 <= added["lora.lora_dropout"] <= 0.1
        study.tell(trial, 0.0)
    assert seen[4] == {frozenset({"+extra.tag"})}
    assert seen[16] == {frozenset({"lora.lora_dropout", "+extra.tag"})}
    assert isinstance(space.distributions["lora.r"], CategoricalDistribution)


def test_custom_function_errors_name_the_option_and_function(spaces_module):
    with pytest.raises(SearchSpaceError, match=r"custom_search_space=my_spaces\.fixed_clash: suggested train\.batch_size, "
                                               r"which hydra\.sweeper\.params fixes"):
        probe(CustomSearchSpace(f"{spaces_module}.fixed_clash", CFG), {}, {"train.batch_size": 8})
    with pytest.raises(SearchSpaceError, match=r"custom_search_space=my_spaces\.broken: the function raised KeyError"):
        probe(CustomSearchSpace(f"{spaces_module}.broken", CFG), {}, {})
    with pytest.raises(SearchSpaceError, match=r"custom_search_space=my_spaces\.nope: cannot load a function"):
        load_function("my_spaces.nope")


def test_base_trial_takes_the_functions_keys_at_their_config_values(spaces_module):
    """The base trial stays the base config: the function's keys are enqueued at their values in
    the job config; a key the config lacks (`+extra.tag`) means the base is no trial, with why."""
    job = OmegaConf.create({"lora": {"r": 8, "lora_dropout": 0.05}, "train": {"max_grad_norm": 1.0}, "extra": {"tag": "a"}})
    space = parse_search_space({"lora.r": "choice(4, 8, 16)"})
    params, outside = base_params(job, space)
    custom = CustomSearchSpace(f"{spaces_module}.configure", CFG)
    extra, outside = base_values(custom, job, space.distributions, {}, params)
    assert (params, extra, outside) == ({"lora.r": 8}, {"lora.lora_dropout": 0.05, "+extra.tag": "a"}, [])
    del job.extra
    _, outside = base_values(custom, job, space.distributions, {}, params)
    assert len(outside) == 1 and outside[0].startswith("+extra.tag=None not in")


# -- the seed as a replicate ----------------------------------------------------------------------
def _conf(**race):
    return OmegaConf.merge(OmegaConf.structured(LoraOptunaSweeperConf), {"race": race})


def test_race_takes_the_seeds_out_of_the_space_unless_asked(capsys):
    space = parse_search_space({"lora.r": "choice(4, 8)", "seed": "range(0, 4)", "data_seed": "range(0, 2)"})
    job = OmegaConf.create({"seed": 3, "data_seed": 1})
    out = seeds_as_replicates(_conf(enabled=True), space, job)
    assert list(out.distributions) == ["lora.r"] and list(out.grammar) == ["lora.r"]
    line = capsys.readouterr().out
    assert "seed and data_seed left the search space" in line and "seed=3, data_seed=1" in line
    assert "hydra.sweeper.race.search_seeds=true" in line
    assert seeds_as_replicates(_conf(enabled=True, search_seeds=True), space, job) is space
    assert seeds_as_replicates(_conf(enabled=False), space, job) is space
    assert capsys.readouterr().out == ""


# -- through the CLI (dry runs: nothing is trained) --------------------------------------------------
def _hparams(tmp_path, name: str, body: str) -> list[str]:
    folder = tmp_path / "configs" / "hparams_search"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text("# @package _global_\n" + textwrap.dedent(body))
    return ["--config-dir", str(tmp_path / "configs"), f"+hparams_search={name}"]


def _space_keys(out: str) -> list[str]:
    table = out[out.index("search space"):out.index("first ")]
    keys = [line.split("│")[1].strip() for line in table.splitlines() if line.startswith("│")]
    return [k for k in keys if k]  # a long range wraps onto a second line with an empty key cell


DRY = ["hydra.sweeper.dry_run=true", "quant=none", "data.max_train_samples=32", "data.max_eval_samples=16"]
EXTRA_PARAMS = """
hydra:
  sweeper:
    params:
      train.weight_decay: interval(0.0, 0.1)
"""
DEFAULT_KEYS = ["lora.r", "lora.lora_dropout", "lora.target_modules", "train.learning_rate",
                "train.lr_scheduler_type", "seed"]


@pytest.mark.timeout(300)
def test_params_in_an_experiment_config_add_to_the_group_and_none_starts_empty(tmp_path, tiny_bert_dir):
    model = f"model.name_or_path={tiny_bert_dir}"
    out = run_sweep(tmp_path, *_hparams(tmp_path, "extra", EXTRA_PARAMS), model, *DRY).stdout
    assert _space_keys(out) == DEFAULT_KEYS + ["train.weight_decay"]
    out = run_sweep(tmp_path, *_hparams(tmp_path, "extra", EXTRA_PARAMS), model, "search_space=none", *DRY).stdout
    assert _space_keys(out) == ["train.weight_decay"]


@pytest.mark.timeout(300)
def test_dict_form_beside_your_own_params_is_ignored_with_a_warning(tmp_path, tiny_bert_dir):
    args = _hparams(tmp_path, "both", EXTRA_PARAMS + """\
    search_space:
      lora.r: {type: categorical, choices: [2, 4]}
""")
    out = run_sweep(tmp_path, *args, f"model.name_or_path={tiny_bert_dir}", *DRY).stdout
    assert "hydra.sweeper.search_space is ignored: hydra.sweeper.params is set too (train.weight_decay)" in out
    assert _space_keys(out) == DEFAULT_KEYS + ["train.weight_decay"]


@pytest.mark.timeout(300)
def test_race_dry_run_says_the_seed_left_the_space(tmp_path, tiny_bert_dir):
    out = run_sweep(tmp_path, "+preset=race", f"model.name_or_path={tiny_bert_dir}", *DRY).stdout
    assert "race on: seed left the search space; every trial runs at the base config's seed=0, data_seed=0" in out
    assert _space_keys(out) == DEFAULT_KEYS[:-1]
    out = run_sweep(tmp_path, "+preset=race", "hydra.sweeper.race.search_seeds=true",
                    f"model.name_or_path={tiny_bert_dir}", *DRY).stdout
    assert "left the search space" not in out and _space_keys(out) == DEFAULT_KEYS


@pytest.mark.timeout(300)
def test_custom_function_with_a_wrong_key_stops_before_any_trial(tmp_path, tiny_bert_dir):
    (tmp_path / "bad_spaces.py").write_text("def configure(cfg, trial):\n    trial.suggest_int('lora.rank', 1, 4)\n")
    proc = run_sweep(tmp_path, f"model.name_or_path={tiny_bert_dir}", "quant=none", "hydra.sweeper.n_trials=1",
                     "hydra.sweeper.custom_search_space=bad_spaces.configure", check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "hydra.sweeper.custom_search_space=bad_spaces.configure: the params it suggested (lora.rank)" in text
    assert not (tmp_path / "optuna-journal.log").exists() and not (tmp_path / "mlflow.db").exists()
    # a branch the first draw misses is still checked; a value the trainer refuses is named too
    (tmp_path / "bad_values.py").write_text(
        "def configure(cfg, trial):\n"
        "    if trial.params['lora.r'] == 16:\n"
        "        trial.suggest_float('lora.lora_dropout', 1.5, 2.0)\n")
    proc = run_sweep(tmp_path, f"model.name_or_path={tiny_bert_dir}", "quant=none", "hydra.sweeper.n_trials=1",
                     "search_space=none", "lora.r=4,8,16", "hydra.sweeper.custom_search_space=bad_values.configure",
                     check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "lora_dropout" in text
    assert "custom_search_space=bad_values.configure: the params it suggested (lora.lora_dropout) make an invalid config" in text
    assert not (tmp_path / "optuna-journal.log").exists()


@pytest.mark.timeout(300)
def test_dry_run_samples_show_the_functions_params(tmp_path, tiny_bert_dir):
    (tmp_path / "cond_spaces.py").write_text(
        "def configure(cfg, trial):\n"
        "    if trial.params['lora.r'] == 16:\n"
        "        trial.suggest_float('lora.lora_dropout', 0.0, 0.3)\n")
    out = run_sweep(tmp_path, f"model.name_or_path={tiny_bert_dir}", "search_space=none", "lora.r=4,16",
                    "hydra.sweeper.custom_search_space=cond_spaces.configure", *DRY).stdout
    table = out[out.index("first 5 sampled configs"):out.index("trainable parameters")]
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in table.splitlines() if line.startswith("│")]
    assert "lora.lora_dropout" in table and len(rows) == 5
    for _, r, dropout in rows:  # the conditional key is sampled exactly where its condition holds
        assert (dropout == "-") == (r == "4")
