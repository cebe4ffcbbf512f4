"""lora.modules_to_save (trained in full, the cached base left pristine) and
lora.init_lora_weights=loftq (rejected where peft cannot run it, with the reason)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import compose_cfg

from trainer import ConfigError, WarmCache, preflight, run_trial, validate_config

pytestmark = pytest.mark.usefixtures("torch_single_thread")

TINY = ["task=causal_lm", "task.metric=perplexity", "data.demo_train_size=32", "data.demo_eval_size=8",
        "train.batch_size=8", "train.max_seq_length=32", "train.max_steps=3", "train.eval_every_steps=0",
        "train.log_every_steps=1"]


def cfg(path: Path, *extra: str):
    return compose_cfg([f"model.name_or_path={path}", *TINY, *extra])


def adapter(result) -> dict:
    from safetensors.torch import load_file

    return load_file(str(result.adapter_dir / "adapter_model.safetensors"))


@pytest.mark.parametrize(("module", "weight"), [("lm_head", "lm_head.weight"),
                                                ("embed_tokens", "model.embed_tokens.weight")])
def test_modules_to_save_are_trained_and_the_cached_base_stays_pristine(tiny_llama_dir: Path, tmp_path: Path,
                                                                        module: str, weight: str) -> None:
    import torch
    from safetensors.torch import load_file

    original = load_file(str(tiny_llama_dir / "model.safetensors"))[weight]
    cache = WarmCache()
    saved = cfg(tiny_llama_dir, "quant=4bit", f"lora.modules_to_save=[{module}]")
    result = run_trial(saved, cache=cache, output_dir=tmp_path / "saved")
    assert result.trainable_params == preflight(saved).trainable_params
    assert result.trainable_params - run_trial(cfg(tiny_llama_dir, "quant=4bit")).trainable_params == original.numel()
    (key,) = [k for k in adapter(result) if module in k]
    trained = adapter(result)[key]
    assert trained.shape == original.shape and not torch.equal(trained, original)

    plain = cfg(tiny_llama_dir, "quant=4bit")
    warm = run_trial(plain, cache=cache, output_dir=tmp_path / "warm")
    cold = run_trial(plain, cache=WarmCache(), output_dir=tmp_path / "cold")
    assert warm.resolved["warm_model"] and warm.history == cold.history
    ta, tb = adapter(warm), adapter(cold)
    assert all(torch.equal(t, tb[k]) for k, t in ta.items())


@pytest.mark.parametrize(("extra", "fragment"), [
    (["quant=4bit", "lora.modules_to_save=[gate_proj]"], "is quantized by bitsandbytes and cannot be trained in full"),
    (["quant=none", "lora.modules_to_save=[q_proj]", "lora.target_modules=qv"], "is (or holds) a layer of lora.target_modules"),
    (["quant=none", "lora.modules_to_save=[no_such_module]"], "'no_such_module' matches no module"),
])
def test_unusable_modules_to_save_are_rejected_in_preflight(tiny_llama_dir: Path, extra: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=r"^lora\.modules_to_save: must be ") as e:
        preflight(cfg(tiny_llama_dir, *extra))
    assert fragment in str(e.value)


def test_loftq_with_a_quantized_base_points_to_quant_none(tiny_llama_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"lora\.init_lora_weights: must be an init other than loftq with "
                                          r"quant\.mode=4bit \(loftq needs quant=none\)") as e:
        validate_config(cfg(tiny_llama_dir, "quant=4bit", "lora.init_lora_weights=loftq"))
    assert "full-precision weights" in str(e.value)


def test_loftq_on_cpu_is_rejected_with_the_reason(tiny_llama_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"lora\.init_lora_weights: must be an init other than loftq on device cpu") as e:
        preflight(cfg(tiny_llama_dir, "quant=none", "lora.init_lora_weights=loftq", "train.device=cpu"))
    assert "CUDA" in str(e.value)


@pytest.mark.parametrize(("override", "key"), [("lora.loftq_bits=3", "lora.loftq_bits"),
                                               ("lora.loftq_iter=0", "lora.loftq_iter")])
def test_loftq_settings_are_checked(tiny_llama_dir: Path, override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{key}: must be "):
        validate_config(cfg(tiny_llama_dir, "quant=none", "lora.init_lora_weights=loftq", override))


@pytest.mark.parametrize(("scaling", "factor"), [("standard", 16 / 8), ("rslora", 16 / 8 ** 0.5)])
def test_lora_scaling_sets_the_update_scale(tiny_llama_dir: Path, scaling: str, factor: float) -> None:
    import torch

    from trainer.config import get
    from trainer.models.loading import apply_lora, load_base_model, load_tokenizer
    from trainer.models.targets import resolve_target_modules

    c = cfg(tiny_llama_dir, "quant=none", "lora.r=8", "lora.lora_alpha=16", f"lora.scaling={scaling}")
    validate_config(c)
    tok = load_tokenizer(get(c, "model"))

    base = load_base_model(get(c, "model"), get(c, "quant"), "causal_lm", None, tok.pad_token_id, torch.device("cpu"), False)
    model = apply_lora(base, get(c, "lora"), resolve_target_modules(base, "qv"), "causal_lm", "fp32")
    scales = [m.scaling["default"] for m in model.modules() if isinstance(getattr(m, "scaling", None), dict)]
    assert scales and all(s == pytest.approx(factor) for s in scales)
    with pytest.raises(ConfigError, match="lora.scaling"):
        validate_config(cfg(tiny_llama_dir, "lora.scaling=sqrt"))
