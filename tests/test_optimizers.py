"""train.optim: torch AdamW or bitsandbytes' 8-bit/paged AdamW; what a device cannot run is
rejected before any trial, naming train.optim and what the device allows."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import compose_cfg
from sweep_helpers import TINY as SWEEP_TINY
from sweep_helpers import run_sweep

from trainer import ConfigError, preflight, run_trial, validate_config

pytestmark = pytest.mark.usefixtures("torch_single_thread")

# r=128 on hidden 32: LoRA A has 4096 elements, the size from which bitsandbytes keeps 8-bit state
TINY = ["task=causal_lm", "task.metric=perplexity", "data.demo_train_size=32", "data.demo_eval_size=8",
        "train.batch_size=8", "train.max_seq_length=32", "train.max_steps=3", "train.eval_every_steps=0",
        "train.log_every_steps=1", "lora.r=128", "lora.lora_alpha=128"]


class OptimizerTap:
    """Records the optimizer class and its state dtypes after each step (torch's global hook)."""

    def __enter__(self) -> list[tuple[str, set]]:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.seen: list[tuple[str, set]] = []
        self.handle = register_optimizer_step_post_hook(lambda opt, args, kwargs: self.seen.append(
            (type(opt).__module__ + "." + type(opt).__name__,
             {str(v.dtype) for s in opt.state.values() for v in s.values() if hasattr(v, "dtype") and v.dim() > 0})))
        return self.seen

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


def run_with(path: Path, tmp_path: Path, *extra: str):
    with OptimizerTap() as seen:
        result = run_trial(compose_cfg([f"model.name_or_path={path}", *TINY, *extra]), output_dir=tmp_path)
    return result, seen


def adapter(result) -> dict:
    from safetensors.torch import load_file

    return load_file(str(result.adapter_dir / "adapter_model.safetensors"))


def test_adamw_8bit_trains_with_8bit_state(tiny_llama_dir: Path, tmp_path: Path) -> None:
    import math

    import torch

    ref, ref_seen = run_with(tiny_llama_dir, tmp_path / "torch")
    result, seen = run_with(tiny_llama_dir, tmp_path / "8bit", "train.optim=adamw_8bit")
    assert {name for name, _ in ref_seen} == {"torch.optim.adamw.AdamW"}
    assert {name for name, _ in seen} == {"bitsandbytes.optim.adamw.AdamW8bit"}
    assert "torch.uint8" in seen[-1][1]  # quantized first and second moments
    assert result.resolved["optim"] == "adamw_8bit" and result.steps == 3
    assert all(math.isfinite(v) for v in result.metrics.values())
    a, b = adapter(ref), adapter(result)
    lora_b = [k for k in a if "lora_B" in k]
    assert lora_b and all(b[k].abs().sum() > 0 for k in lora_b)  # it trained
    assert any(not torch.equal(a[k], b[k]) for k in lora_b)  # and not with torch's AdamW


def test_adamw_8bit_is_deterministic(tiny_llama_dir: Path, tmp_path: Path) -> None:
    import torch

    first, seen = run_with(tiny_llama_dir, tmp_path / "a", "train.optim=adamw_8bit")
    second, _ = run_with(tiny_llama_dir, tmp_path / "b", "train.optim=adamw_8bit")
    assert seen and all(name.endswith("AdamW8bit") for name, _ in seen)
    assert first.history == second.history
    ta, tb = adapter(first), adapter(second)
    assert all(torch.equal(ta[k], tb[k]) for k in ta)


@pytest.mark.parametrize("optim", ["paged_adamw_8bit", "paged_adamw_32bit"])
def test_paged_optimizers_rejected_on_cpu(tiny_llama_dir: Path, optim: str) -> None:
    cfg = compose_cfg([f"model.name_or_path={tiny_llama_dir}", *TINY, f"train.optim={optim}", "train.device=cpu"])
    for check in (validate_config, preflight):
        with pytest.raises(ConfigError, match=r"train\.optim: must be one of adamw_torch, adamw_8bit on device cpu") as e:
            check(cfg)
        assert "CUDA" in str(e.value)


def test_unknown_optimizer_lists_the_choices(tiny_llama_dir: Path) -> None:
    cfg = compose_cfg([f"model.name_or_path={tiny_llama_dir}", *TINY, "train.optim=sgd"])
    with pytest.raises(ConfigError, match="train.optim: must be one of adamw_torch, adamw_8bit, paged_adamw_8bit, "
                                          "paged_adamw_32bit, got 'sgd'"):
        validate_config(cfg)


@pytest.mark.timeout(600)
def test_sweeping_an_optimizer_the_device_lacks_fails_before_any_trial(tmp_path: Path, tiny_bert_dir: Path) -> None:
    proc = run_sweep(tmp_path, *SWEEP_TINY, f"model.name_or_path={tiny_bert_dir}", "train.device=cpu",
                     "train.optim=adamw_torch,adamw_8bit,paged_adamw_8bit", check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "train.optim" in text and "paged_adamw_8bit" in text and "adamw_torch, adamw_8bit" in text
    assert not (tmp_path / "optuna-journal.log").exists()


def test_memory_estimate_counts_8bit_optimizer_state(tiny_llama_dir: Path) -> None:
    """8-bit moments take 2 bytes per trainable parameter instead of 8: the pre-flight estimate
    (dry run, worker planning) shrinks by exactly that."""
    torch_cfg = compose_cfg([f"model.name_or_path={tiny_llama_dir}", *TINY])
    bnb_cfg = compose_cfg([f"model.name_or_path={tiny_llama_dir}", *TINY, "train.optim=adamw_8bit"])
    report = preflight(torch_cfg)
    saved = report.estimate_memory_mb(torch_cfg) - report.estimate_memory_mb(bnb_cfg)
    assert saved == pytest.approx(report.trainable_params * 6 / 2**20)
