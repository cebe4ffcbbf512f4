"""train.precision=pure_bf16 (bf16 weights, adapter and compute, no autocast) and
quant.compute_dtype=auto."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import compose_cfg

from trainer import ConfigError, WarmCache, run_trial, validate_config
from trainer.devices import resolve_device, supported_precisions

pytestmark = pytest.mark.usefixtures("torch_single_thread")

TINY = ["data.demo_train_size=32", "data.demo_eval_size=8", "train.batch_size=8", "train.max_seq_length=32",
        "train.max_steps=3", "train.eval_every_steps=0", "train.log_every_steps=1"]
CPU_BF16 = "bf16" in supported_precisions(resolve_device("cpu"))
needs_bf16 = pytest.mark.skipif(not CPU_BF16, reason="this CPU has no native bf16 (avx512_bf16/amx_bf16)")


def cfg(path: Path, *extra: str):
    return compose_cfg([f"model.name_or_path={path}", *TINY, *extra])


def adapter(result) -> dict:
    from safetensors.torch import load_file

    return load_file(str(result.adapter_dir / "adapter_model.safetensors"))


@needs_bf16
@pytest.mark.parametrize("quant", ["none", "4bit"])
def test_pure_bf16_causal_lm_trains_in_bf16(tiny_llama_dir: Path, tmp_path: Path, quant: str) -> None:
    import torch

    result = run_trial(cfg(tiny_llama_dir, "task=causal_lm", "task.metric=perplexity", f"quant={quant}",
                           "quant.compute_dtype=auto", "train.precision=pure_bf16"), output_dir=tmp_path)
    losses = [h["train_loss"] for h in result.history if h["event"] == "train"]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert math.isfinite(result.metrics["eval_loss"])
    tensors = adapter(result)
    assert tensors and {t.dtype for t in tensors.values()} == {torch.bfloat16}
    assert any(t.abs().sum() > 0 for k, t in tensors.items() if "lora_B" in k)
    assert result.resolved["compute_dtype"] == "bfloat16" and result.resolved["precision"] == "pure_bf16"


@needs_bf16
def test_pure_bf16_classification_head_is_bf16_too(tiny_bert_dir: Path, tmp_path: Path) -> None:
    import torch

    result = run_trial(cfg(tiny_bert_dir, "quant=none", "train.precision=pure_bf16"), output_dir=tmp_path)
    tensors = adapter(result)
    assert any("classifier" in k for k in tensors)
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    assert 0 <= result.metrics["eval_accuracy"] <= 1


@needs_bf16
def test_pure_bf16_base_is_not_handed_to_fp32_trials(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """The bf16 base is cached apart: an fp32 trial after a pure_bf16 one on the same warm cache
    equals a cold fp32 trial bit for bit."""
    import torch

    cache = WarmCache()
    run_trial(cfg(tiny_llama_dir, "task=causal_lm", "quant=none", "train.precision=pure_bf16"), cache=cache)
    fp32 = cfg(tiny_llama_dir, "task=causal_lm", "quant=none")
    warm = run_trial(fp32, cache=cache, output_dir=tmp_path / "warm")
    cold = run_trial(fp32, cache=WarmCache(), output_dir=tmp_path / "cold")
    assert warm.history == cold.history
    ta, tb = adapter(warm), adapter(cold)
    assert all(t.dtype == torch.float32 and torch.equal(t, tb[k]) for k, t in ta.items())


def test_pure_bf16_with_a_non_bf16_4bit_compute_dtype_is_rejected(tiny_llama_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"quant\.compute_dtype: must be bfloat16 or auto with train\.precision=pure_bf16"):
        validate_config(cfg(tiny_llama_dir, "quant=4bit", "quant.compute_dtype=float32", "train.precision=pure_bf16",
                            "train.device=cpu"))


@pytest.mark.skipif(CPU_BF16, reason="this CPU has native bf16")
def test_pure_bf16_rejected_on_a_cpu_without_bf16(tiny_llama_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"train\.precision: must be one of fp32 on device cpu"):
        validate_config(cfg(tiny_llama_dir, "quant=none", "train.precision=pure_bf16", "train.device=cpu"))


def test_compute_dtype_auto_follows_the_device(tiny_bert_dir: Path) -> None:
    result = run_trial(cfg(tiny_bert_dir, "quant=4bit", "quant.compute_dtype=auto", "train.max_steps=1"))
    assert result.resolved["compute_dtype"] == ("bfloat16" if CPU_BF16 else "float32")
    assert math.isfinite(result.metrics["eval_loss"])


def test_memory_estimate_halves_weights_and_adapter_in_pure_bf16(tiny_llama_dir: Path) -> None:
    from trainer import preflight

    fp32 = cfg(tiny_llama_dir, "task=causal_lm", "quant=none")
    bf16 = cfg(tiny_llama_dir, "task=causal_lm", "quant=none", "train.precision=pure_bf16")
    report = preflight(fp32)
    assert report.estimate_memory_mb(bf16) < 0.75 * report.estimate_memory_mb(fp32)
