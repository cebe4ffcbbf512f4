"""validate_config and preflight reject bad configs with the key and the allowed values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import compose_cfg

from trainer import ConfigError, PreflightReport, preflight, validate_config
from trainer.devices import cpu_flags

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_default_config_is_valid() -> None:
    validate_config(compose_cfg())


@pytest.mark.parametrize(
    ("override", "key", "fragment"),
    [
        ("lora.r=0", "lora.r", "integer > 0, got 0"),
        ("lora.r=-4", "lora.r", "integer > 0"),
        ("lora.lora_alpha=0", "lora.lora_alpha", "> 0"),
        ("lora.alpha_ratio=-1", "lora.alpha_ratio", "> 0"),
        ("lora.lora_dropout=1.0", "lora.lora_dropout", "[0, 1)"),
        ("lora.lora_dropout=-0.1", "lora.lora_dropout", "[0, 1)"),
        ("lora.bias=some", "lora.bias", "none, all, lora_only"),
        ("lora.target_modules=everything", "lora.target_modules", "qv, attn, attn_mlp, all_linear"),
        ("lora.target_modules=[]", "lora.target_modules", "non-empty list"),
        ("train.learning_rate=0", "train.learning_rate", "> 0"),
        ("train.learning_rate=-1e-3", "train.learning_rate", "> 0"),
        ("train.lr_scheduler_type=cosine_annealing", "train.lr_scheduler_type", "cosine_with_restarts"),
        ("train.lr_scheduler_type=cosine_with_min_lr", "train.scheduler_kwargs", "min_lr or min_lr_rate"),
        ("train.batch_size=0", "train.batch_size", ">= 1"),
        ("train.gradient_accumulation_steps=0", "train.gradient_accumulation_steps", ">= 1"),
        ("train.warmup_ratio=1.0", "train.warmup_ratio", "[0, 1)"),
        ("train.max_seq_length=4", "train.max_seq_length", ">= 8"),
        ("train.precision=fp8", "train.precision", "fp32, fp16, bf16"),
        ("train.precision=fp16", "train.precision", "cpu"),
        ("quant.mode=3bit", "quant.mode", "none, 4bit, 8bit"),
        ("quant.quant_type=int4", "quant.quant_type", "nf4, fp4"),
        ("quant.compute_dtype=float64", "quant.compute_dtype", "float32, bfloat16, float16"),
        ("task.type=regression", "task.type", "classification, causal_lm"),
        ("task.metric=perplexity", "task.metric", "accuracy, macro_f1, loss"),
        ("task.direction=minimize", "task.direction", "maximize"),
        ("quant=8bit,lora.use_dora=true", "lora.use_dora", "8bit on cpu"),
        ("data.source=arrow", "data.source", "demo, demo_chat, sst2, jsonl, csv, parquet, hub"),
        ("task=sft,data=demo_chat,task.train_on=prompt", "task.train_on", "assistant, last_assistant, all"),
        ("task=sft,data=demo_chat,task.metric=accuracy", "task.metric", "loss, perplexity, exact_match, token_f1"),
        ("task=sft,data=demo_chat,task.truncation=right", "task.truncation", "left_turns, drop"),
        ("task=sft,data=demo_chat,task.max_new_tokens=0", "task.max_new_tokens", ">= 1"),
        ("data=demo_chat", "data.format", "text_label for task=classification"),
        ("task=sft,data=jsonl,data.path=x,data.format=text_label", "data.format", "messages, sharegpt, alpaca"),
    ],
)
def test_config_errors_name_key_and_allowed_values(override: str, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate_config(compose_cfg(override.split(",")))
    assert err.value.key == key
    assert str(err.value).startswith(f"{key}: must be ")
    assert fragment in str(err.value)
    assert err.value.allowed


def test_lr_error_message_format() -> None:
    with pytest.raises(ConfigError, match=r"^lora\.r: must be an integer > 0, got 0$"):
        validate_config(compose_cfg(["lora.r=0"]))


def test_missing_mandatory_path_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        validate_config(compose_cfg(["data=jsonl"]))
    assert err.value.key == "data.path"


@pytest.mark.skipif(bool(cpu_flags() & {"avx512_bf16", "amx_bf16"}), reason="this CPU trains in bf16")
def test_bf16_is_rejected_on_this_cpu() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("device is CUDA")
    with pytest.raises(ConfigError) as err:
        validate_config(compose_cfg(["train.precision=bf16"]))
    assert err.value.key == "train.precision"
    assert "cpu" in str(err.value) and "fp32" in err.value.allowed


def test_alpha_ratio_wins_over_lora_alpha() -> None:
    from trainer.models.loading import lora_alpha

    assert lora_alpha({"r": 8, "lora_alpha": 16, "alpha_ratio": 4}) == 32.0
    assert lora_alpha({"r": 8, "lora_alpha": 16, "alpha_ratio": None}) == 16.0
    validate_config(compose_cfg(["lora.lora_alpha=0", "lora.alpha_ratio=2"]))  # alpha unused when ratio set


def _write_jsonl(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "validation"):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_preflight_report(tiny_bert_dir: Path) -> None:
    cfg = compose_cfg([f"model.name_or_path={tiny_bert_dir}", "lora.r=4"])
    report = preflight(cfg)
    assert isinstance(report, PreflightReport)
    assert report.model_type == "bert"
    assert report.linear_module_names == ["classifier", "dense", "key", "query", "value"]
    assert report.target_modules_by_preset["qv"] == ["query", "value"]
    assert (report.num_train, report.num_eval, report.num_labels) == (600, 300, 2)
    # qv on 2 layers of hidden 32: 2 layers * 2 modules * r(32+32) + head (32*2+2)
    assert report.trainable_params_by_preset["qv"] == 2 * 2 * 4 * 64 + 66
    assert report.trainable_params_by_preset["attn"] > report.trainable_params_by_preset["qv"]
    assert report.base_params > 0
    small = report.estimate_memory_mb(cfg)
    assert 0 < small < report.estimate_memory_mb(compose_cfg([f"model.name_or_path={tiny_bert_dir}", "train.batch_size=64"]))
    assert small < report.estimate_memory_mb(compose_cfg([f"model.name_or_path={tiny_bert_dir}", "quant=none"]))
    # what LoRA keeps for backward: the inputs of its layers (with dropout: its output and mask too)
    wide = [f"model.name_or_path={tiny_bert_dir}", "train.batch_size=64", "lora.target_modules=attn_mlp"]
    no_dropout = report.estimate_memory_mb(compose_cfg([*wide, "lora.lora_dropout=0"]))
    assert report.estimate_memory_mb(compose_cfg(wide)) > no_dropout > report.estimate_memory_mb(
        compose_cfg([f"model.name_or_path={tiny_bert_dir}", "train.batch_size=64", "lora.target_modules=qv",
                     "lora.lora_dropout=0"]))
    # CPU (process RSS): never below the model load's peak, twice the checkpoint's bytes
    tiny_batch = compose_cfg([f"model.name_or_path={tiny_bert_dir}", "train.batch_size=1", "train.max_seq_length=8"])
    assert report.estimate_memory_mb(tiny_batch, device="cpu") == pytest.approx(2 * 4 * report.base_params / 2**20)
    assert report.estimate_memory_mb(cfg, device="cpu") > report.estimate_memory_mb(cfg)


def test_preflight_unknown_target_module_lists_real_names(tiny_bert_dir: Path) -> None:
    with pytest.raises(ConfigError) as err:
        preflight(compose_cfg([f"model.name_or_path={tiny_bert_dir}", "lora.target_modules=[query,q_proj]"]))
    assert err.value.key == "lora.target_modules"
    assert "q_proj" in str(err.value) and "attention.self.value" in str(err.value)


def test_preflight_missing_columns(tiny_bert_dir: Path, tmp_path: Path) -> None:
    folder = _write_jsonl(tmp_path / "d", [{"text": "good", "label": 1}, {"text": "bad", "label": 0}])
    base = [f"model.name_or_path={tiny_bert_dir}", "data=jsonl", f"data.path={folder}"]
    with pytest.raises(ConfigError) as err:
        preflight(compose_cfg([*base, "data.text_column=sentence"]))
    assert err.value.key == "data.text_column" and "sentence" in str(err.value) and "text, label" in str(err.value)
    with pytest.raises(ConfigError) as err:
        preflight(compose_cfg([*base, "data.label_column=target"]))
    assert err.value.key == "data.label_column" and "target" in str(err.value)


def test_preflight_labels_out_of_range(tiny_bert_dir: Path, tmp_path: Path) -> None:
    rows = [{"text": "good", "label": 1}, {"text": "bad", "label": 0}, {"text": "meh", "label": 5}]
    folder = _write_jsonl(tmp_path / "d", rows)
    with pytest.raises(ConfigError) as err:
        preflight(compose_cfg([f"model.name_or_path={tiny_bert_dir}", "data=jsonl", f"data.path={folder}",
                               "data.num_labels=2"]))
    assert err.value.key == "data.label_column"
    assert err.value.value == [5] and "[0, 2)" in str(err.value)


def test_num_labels_inferred_from_training_labels(tiny_bert_dir: Path, tmp_path: Path) -> None:
    rows = [{"text": "a", "label": 0}, {"text": "b", "label": 2}, {"text": "c", "label": 1}]
    folder = _write_jsonl(tmp_path / "d", rows)
    report = preflight(compose_cfg([f"model.name_or_path={tiny_bert_dir}", "data=jsonl", f"data.path={folder}"]))
    assert report.num_labels == 3


def test_sst2_reads_the_local_folder_with_a_fixed_subset(tiny_bert_dir: Path) -> None:
    from conftest import SST2_DIR

    if not (SST2_DIR / "train.jsonl").is_file():
        pytest.skip(f"SST-2 not found at {SST2_DIR}")
    cfg = compose_cfg([f"model.name_or_path={tiny_bert_dir}", "data=sst2", f"data.path={SST2_DIR}",
                       "data.max_train_samples=50", "data.max_eval_samples=20"])
    report = preflight(cfg)
    assert (report.num_train, report.num_eval, report.num_labels) == (50, 20, 2)
