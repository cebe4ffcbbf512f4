"""Seeds fully determine a trial on CPU, and a warm cache changes nothing (bitwise)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import compose_cfg

from trainer import TrialResult, WarmCache, run_trial, seed_everything

pytestmark = pytest.mark.usefixtures("torch_single_thread")

TINY = ["data.demo_train_size=48", "data.demo_eval_size=24", "train.batch_size=8", "train.max_seq_length=32",
        "train.max_steps=5", "train.eval_every_steps=2", "train.log_every_steps=1", "lora.lora_dropout=0.1"]


def cfg_for(path: Path, *extra: str):
    return compose_cfg([f"model.name_or_path={path}", *TINY, *extra])


def adapter_tensors(result: TrialResult) -> dict:
    from safetensors.torch import load_file

    assert result.adapter_dir is not None
    return load_file(str(result.adapter_dir / "adapter_model.safetensors"))


def assert_identical(a: TrialResult, b: TrialResult) -> None:
    import torch

    assert a.metrics == b.metrics
    assert a.history == b.history
    ta, tb = adapter_tensors(a), adapter_tensors(b)
    assert ta and ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key


class Prune(Exception):
    pass


class PruneFirst:
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def report(self, step: int, metrics: dict[str, float]) -> None:
        raise Prune


@pytest.mark.parametrize("quant", ["4bit", "none"])
def test_warm_trial_equals_cold_trial_bitwise(tiny_bert_dir: Path, tmp_path: Path, quant: str) -> None:
    cache = WarmCache()
    # different earlier trials on the same cache: another seed/lr/rank/targets, and a pruned one
    run_trial(cfg_for(tiny_bert_dir, f"quant={quant}", "seed=7", "train.learning_rate=1e-2", "lora.r=4",
                      "lora.target_modules=attn_mlp"), cache=cache)
    with pytest.raises(Prune):
        run_trial(cfg_for(tiny_bert_dir, f"quant={quant}", "seed=3"), PruneFirst(), cache=cache)

    cfg = cfg_for(tiny_bert_dir, f"quant={quant}", "seed=1", "data_seed=2")
    warm = run_trial(cfg, cache=cache, output_dir=tmp_path / "warm")
    cold = run_trial(cfg, cache=WarmCache(), output_dir=tmp_path / "cold")
    assert warm.resolved["warm_model"] and not cold.resolved["warm_model"]
    assert_identical(warm, cold)


def test_causal_lm_warm_equals_cold(tiny_llama_dir: Path, tmp_path: Path) -> None:
    cache = WarmCache()
    run_trial(cfg_for(tiny_llama_dir, "task=causal_lm", "seed=5", "lora.target_modules=all_linear"), cache=cache)
    cfg = cfg_for(tiny_llama_dir, "task=causal_lm")
    warm = run_trial(cfg, cache=cache, output_dir=tmp_path / "warm")
    cold = run_trial(cfg, output_dir=tmp_path / "cold")
    assert_identical(warm, cold)


def test_same_seed_twice_is_identical_and_seeds_matter(tiny_bert_dir: Path, tmp_path: Path) -> None:
    import torch

    first = run_trial(cfg_for(tiny_bert_dir), output_dir=tmp_path / "a")
    again = run_trial(cfg_for(tiny_bert_dir), output_dir=tmp_path / "b")
    assert_identical(first, again)
    other_seed = run_trial(cfg_for(tiny_bert_dir, "seed=1"), output_dir=tmp_path / "c")
    other_data = run_trial(cfg_for(tiny_bert_dir, "data_seed=1"), output_dir=tmp_path / "d")
    for other in (other_seed, other_data):
        tensors, ref = adapter_tensors(other), adapter_tensors(first)
        assert any(not torch.equal(tensors[k], ref[k]) for k in ref)


def test_seed_sets_lora_and_head_init(tiny_bert_dir: Path) -> None:
    """Init depends on `seed` only, drawn right before the head and adapters are created."""
    import torch

    from trainer.models.loading import apply_lora, load_base_model, reset_head, restore_base

    cfg = cfg_for(tiny_bert_dir, "quant=none")
    base = load_base_model(dict(cfg.model), dict(cfg.quant), "classification", 2, 0, torch.device("cpu"), False)

    def init(seed: int) -> dict[str, torch.Tensor]:
        seed_everything(seed)
        reset_head(base, "classification")
        model = apply_lora(base, dict(cfg.lora), ["query", "value"], "classification")
        state = {k: v.clone() for k, v in model.state_dict().items() if "lora_A" in k or "modules_to_save" in k}
        restore_base(model)
        return state

    a, b, c = init(0), init(0), init(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(not torch.equal(a[k], c[k]) for k in a if k.endswith("weight"))
