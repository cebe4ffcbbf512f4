"""lora.loraplus_lr_ratio (LoRA+, Hayou et al. 2024): each LoRA B matrix learns at `ratio` x the
learning rate of its A, through peft's create_loraplus_optimizer; everything that is not a
low-rank factor keeps the base rate; null and 1 are today's optimizer, bit for bit."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import compose_cfg
from sweep_helpers import only_study, run_sweep, runs
from test_checkpoint_resume import StopAfter
from test_trainer_determinism import assert_identical

from trainer import ConfigError, WarmCache, run_trial, validate_config
from trainer.errors import TrialPreempted
from trainer.training.checkpoint import checkpoint_step
from trainer.training.loop import make_optimizer

pytestmark = pytest.mark.usefixtures("torch_single_thread")

LR, WD = 2e-3, 0.01
CLASSIFY = ["quant=none", "data.demo_train_size=32", "data.demo_eval_size=16", "train.batch_size=8",
            "train.max_seq_length=32", "train.max_steps=6", "train.eval_every_steps=3", "train.log_every_steps=1",
            "train.warmup_steps=2", "train.weight_decay=0.01", "seed=3", "data_seed=4"]


def tiny_llama():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False))


def group_of(optimizer) -> dict[str, dict]:
    """Parameter name (peft's, without the wrapper prefix) -> its param group."""
    names = {id(p): n.removeprefix("base_model.model.") for n, p in optimizer.model.named_parameters()}
    return {names[id(p)]: g for g in optimizer.param_groups for p in g["params"]}


def loraplus(model, ratio: float, optim: str = "adamw_torch"):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer({"optim": optim, "learning_rate": LR, "weight_decay": WD}, params, model, ratio)
    optimizer.model = model
    seen = [p for g in optimizer.param_groups for p in g["params"]]
    assert len(seen) == len({id(p) for p in seen}) == len(params)  # every trainable parameter, once
    return optimizer


OPTIMIZERS = {"adamw_torch": "AdamW", "adamw_8bit": "AdamW8bit", "paged_adamw_8bit": "PagedAdamW8bit",
              "paged_adamw_32bit": "PagedAdamW32bit"}  # every train.optim (paged ones step on CUDA only)


@pytest.mark.parametrize("optim", OPTIMIZERS)
def test_b_learns_at_ratio_times_a_and_the_head_at_the_base_rate(tiny_bert_dir: Path, optim: str) -> None:
    from transformers import AutoModelForSequenceClassification

    from trainer.models.loading import apply_lora

    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2)
    model = apply_lora(base, {"r": 4, "lora_alpha": 8, "bias": "lora_only"}, ["query", "value"], "classification")
    groups = group_of(loraplus(model, 16, optim))
    lora_a = [n for n in groups if ".lora_A." in n]
    lora_b = [n for n in groups if ".lora_B." in n]
    head = [n for n in groups if ".modules_to_save." in n]
    assert len(lora_a) == len(lora_b) >= 2 and {n.rsplit(".", 1)[1] for n in head} == {"weight", "bias"}
    assert {groups[n]["lr"] for n in lora_a} == {LR}
    assert {groups[n]["lr"] for n in lora_b} == {16 * LR}
    assert {groups[n]["lr"] for n in head} == {LR}  # peft alone would train the head's bias at 16 x LR
    biases = [n for n in groups if n.endswith("base_layer.bias")]  # lora.bias=lora_only: not low-rank factors
    assert biases and {groups[n]["lr"] for n in biases} == {LR}
    assert {g["weight_decay"] for g in groups.values()} == {WD}  # as the plain optimizer: every parameter
    assert type(loraplus(model, 16, optim)).__name__ == OPTIMIZERS[optim]


def test_token_rows_dora_and_embedding_adapters_keep_sensible_rates() -> None:
    from peft import LoraConfig, get_peft_model

    rows = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], use_dora=True,
                                                   trainable_token_indices={"embed_tokens": [3, 4]}))
    groups = group_of(loraplus(rows, 8))
    assert {g["lr"] for n, g in groups.items() if "trainable_tokens_delta" in n} == {LR}  # trained rows: as today
    assert {g["lr"] for n, g in groups.items() if "lora_magnitude_vector" in n} == {8 * LR}  # peft: with B

    embedding = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["embed_tokens", "q_proj"]))
    groups = group_of(loraplus(embedding, 8))
    # peft's loraplus_lr_embedding, given the base rate (its default 1e-6 would freeze the adapter)
    assert {g["lr"] for n, g in groups.items() if "lora_embedding" in n} == {LR}
    assert {g["lr"] for n, g in groups.items() if "q_proj.lora_B" in n} == {8 * LR}


def test_the_schedule_and_warmup_scale_every_group_alike(tiny_bert_dir: Path) -> None:
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    seen: list[list[float]] = []
    handle = register_optimizer_step_post_hook(lambda opt, a, k: seen.append([g["lr"] for g in opt.param_groups]))
    try:
        result = run_trial(compose_cfg([f"model.name_or_path={tiny_bert_dir}", *CLASSIFY,
                                        "lora.loraplus_lr_ratio=16"]))
    finally:
        handle.remove()
    assert result.resolved["loraplus_lr_ratio"] == 16 and len(seen) == 6
    lr = compose_cfg(CLASSIFY).train.learning_rate
    a, b, head = torch.tensor(seen, dtype=torch.float64).T  # the rates each step ran with: A's, B's, the head's
    # warm-up over 2 steps (0, 1/2), then linear decay to 0 over the 4 remaining
    assert a.tolist() == pytest.approx([lr * f for f in (0.0, 0.5, 1.0, 0.75, 0.5, 0.25)], rel=1e-12)
    assert b.tolist() == pytest.approx((16 * a).tolist(), rel=1e-12) and torch.equal(head, a)
    assert [h["learning_rate"] for h in result.history if h["event"] == "train"] == pytest.approx(a.tolist()[1:] + [0.0])


def _trained(tiny_bert_dir: Path, tmp_path: Path, *extra: str):
    from safetensors.torch import load_file

    result = run_trial(compose_cfg([f"model.name_or_path={tiny_bert_dir}", *CLASSIFY, *extra]),
                       cache=WarmCache(), output_dir=tmp_path)
    return result, load_file(str(result.adapter_dir / "adapter_model.safetensors"))


def test_ratio_16_changes_training_and_null_or_1_is_plain_lora(tiny_bert_dir: Path, tmp_path: Path) -> None:
    import torch

    plain, plain_w = _trained(tiny_bert_dir, tmp_path / "null")
    one, one_w = _trained(tiny_bert_dir, tmp_path / "one", "lora.loraplus_lr_ratio=1")
    plus, plus_w = _trained(tiny_bert_dir, tmp_path / "plus", "lora.loraplus_lr_ratio=16")
    assert plain.resolved["loraplus_lr_ratio"] is None and plus.resolved["loraplus_lr_ratio"] == 16
    assert_identical(plain, one)  # 1 is no LoRA+ at all: the same optimizer, bit for bit
    assert all(torch.equal(plain_w[k], one_w[k]) for k in plain_w)
    assert plus.history != plain.history and plus.metrics["eval_loss"] != plain.metrics["eval_loss"]

    def norm(weights: dict, part: str) -> float:
        return math.sqrt(sum(float(v.pow(2).sum()) for k, v in weights.items() if part in k))

    # B starts at zero: after 6 Adam steps its size follows its learning rate, A's stays put
    assert norm(plus_w, "lora_B") > 6 * norm(plain_w, "lora_B")
    assert norm(plus_w, "lora_A") == pytest.approx(norm(plain_w, "lora_A"), rel=0.1)


def test_a_stopped_loraplus_trial_resumes_bitwise(tiny_bert_dir: Path, tmp_path: Path) -> None:
    cfg = compose_cfg([f"model.name_or_path={tiny_bert_dir}", *CLASSIFY, "lora.lora_dropout=0.1",
                       "lora.loraplus_lr_ratio=16"])
    whole = run_trial(cfg, cache=WarmCache(), output_dir=tmp_path / "whole")
    ckpt = tmp_path / "ckpt"
    with pytest.raises(TrialPreempted):
        run_trial(cfg, StopAfter(4), cache=WarmCache(), output_dir=tmp_path / "first", checkpoint_dir=ckpt)
    assert checkpoint_step(ckpt) == 4
    resumed = run_trial(cfg, cache=WarmCache(), output_dir=tmp_path / "resumed", checkpoint_dir=ckpt, resume=True)
    assert resumed.resolved["resumed_from_step"] == 4
    assert_identical(whole, resumed)
    # the checkpoint holds the ratio's optimizer state: another ratio may not continue from it
    with pytest.raises(TrialPreempted):
        run_trial(cfg, StopAfter(2), cache=WarmCache(), checkpoint_dir=ckpt)
    other = compose_cfg([f"model.name_or_path={tiny_bert_dir}", *CLASSIFY, "lora.lora_dropout=0.1",
                         "lora.loraplus_lr_ratio=4"])
    with pytest.raises(ValueError, match="written for another config"):
        run_trial(other, cache=WarmCache(), checkpoint_dir=ckpt, resume=True)


@pytest.mark.parametrize("value", [0, -16, "sixteen", True, float("nan"), float("inf"), [16]])
def test_bad_ratios_are_refused_naming_the_field(value) -> None:
    cfg = compose_cfg(["quant=none"])
    cfg.lora.loraplus_lr_ratio = value
    with pytest.raises(ConfigError, match=r"lora\.loraplus_lr_ratio.*null \(off\) or a number > 0"):
        validate_config(cfg)


@pytest.mark.parametrize("value, expected", [(None, None), (1, 1), (16, 16), (0.5, 0.5), (2.5e1, 25.0)])
def test_good_ratios_pass_as_given(value, expected) -> None:
    cfg = compose_cfg(["quant=none", f"lora.loraplus_lr_ratio={'null' if value is None else value}"])
    assert validate_config(cfg).lora.loraplus_lr_ratio == expected


def test_a_config_saved_before_the_key_trains_plain_lora() -> None:
    cfg = compose_cfg(["quant=none"])
    del cfg.lora["loraplus_lr_ratio"]
    assert validate_config(cfg).lora.loraplus_lr_ratio is None


@pytest.mark.parametrize("text, bad", [("choice(1, 4, 16)", None),
                                       ("tag(log, interval(1, 32))", None), ("interval(0, 16)", 0),
                                       ("choice(1, sixteen)", "sixteen")])
def test_every_value_a_search_space_can_give_is_checked_before_the_sweep(text: str, bad) -> None:
    from sweeps.preflight import config_variants
    from sweeps.search.space import parse_search_space

    refused = []
    for key, value in config_variants(parse_search_space({"lora.loraplus_lr_ratio": text})):
        cfg = compose_cfg(["quant=none"])
        cfg.lora.loraplus_lr_ratio = value
        try:
            assert validate_config(cfg).lora.loraplus_lr_ratio == value
        except ConfigError as exc:
            assert "lora.loraplus_lr_ratio" in str(exc)
            refused.append(value)
    assert refused == ([] if bad is None else [bad])


@pytest.mark.slow
def test_a_bad_ratio_in_the_search_space_stops_the_sweep_before_any_trial(tiny_bert_dir: Path, tmp_path: Path) -> None:
    proc = run_sweep(tmp_path, f"model.name_or_path={tiny_bert_dir}", "quant=none", "search_space=none",
                     "lora.loraplus_lr_ratio=choice(0, 16)",
                     "hydra.sweeper.n_trials=2", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "lora.loraplus_lr_ratio" in out, out[-3000:]
    assert not (tmp_path / "mlflow.db").exists() or not runs(tmp_path)[2]


@pytest.mark.slow
def test_a_sweep_searches_the_ratio_and_logs_it(tiny_bert_dir: Path, tmp_path: Path) -> None:
    run_sweep(tmp_path, f"model.name_or_path={tiny_bert_dir}", "quant=none", "data=demo", "data.demo_train_size=32",
              "data.demo_eval_size=16", "train.batch_size=8", "train.max_seq_length=32", "train.max_steps=4",
              "train.eval_every_steps=2", "search_space=none", "lora.loraplus_lr_ratio=choice(1, 16)",
              "hydra.sweeper.sampler=grid", "hydra.sweeper.include_base=false", "hydra.sweeper.n_trials=2")
    trials = only_study(tmp_path).get_trials()
    assert sorted(t.params["lora.loraplus_lr_ratio"] for t in trials) == [1, 16]
    assert all(math.isfinite(t.value) for t in trials)
    _, _, children = runs(tmp_path)
    logged = sorted(c.data.params["lora.loraplus_lr_ratio"] for c in children)
    assert logged == ["1", "16"], logged


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU (paged optimizers)")
@pytest.mark.parametrize("optim", ["paged_adamw_8bit", "paged_adamw_32bit"])
def test_paged_optimizers_train_with_loraplus_on_cuda(tiny_bert_dir: Path, optim: str) -> None:
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    seen: list[tuple[str, list[float]]] = []
    handle = register_optimizer_step_post_hook(
        lambda opt, a, k: seen.append((type(opt).__name__, [g["lr"] for g in opt.param_groups])))
    try:
        result = run_trial(compose_cfg([f"model.name_or_path={tiny_bert_dir}", *CLASSIFY, "train.device=cuda",
                                        f"train.optim={optim}", "lora.loraplus_lr_ratio=16"]))
    finally:
        handle.remove()
    assert {name for name, _ in seen} == {OPTIMIZERS[optim]} and len(seen) == 6
    a, b, _ = torch.tensor([lrs for _, lrs in seen], dtype=torch.float64).T
    assert b.tolist() == pytest.approx((16 * a).tolist(), rel=1e-12)
    assert all(math.isfinite(v) for v in result.metrics.values())
