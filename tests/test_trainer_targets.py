"""Target presets resolve to the real module names of each architecture family."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer import TARGET_PRESETS, ConfigError, resolve_target_modules

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def meta_model(path: Path, causal: bool = False):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        auto = AutoModelForCausalLM if causal else AutoModelForSequenceClassification
        return auto.from_config(config)


def test_presets_are_exported() -> None:
    assert TARGET_PRESETS == ("qv", "attn", "attn_mlp", "all_linear")


def test_llama_presets(tiny_llama_dir: Path) -> None:
    model = meta_model(tiny_llama_dir, causal=True)
    assert resolve_target_modules(model, "qv") == ["q_proj", "v_proj"]
    assert resolve_target_modules(model, "attn") == ["q_proj", "k_proj", "v_proj", "o_proj"]
    mlp = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert resolve_target_modules(model, "attn_mlp") == mlp
    assert resolve_target_modules(model, "all_linear") == mlp  # lm_head is never a target


def test_bert_presets_keep_attention_and_mlp_denses_apart(tiny_bert_dir: Path) -> None:
    model = meta_model(tiny_bert_dir)
    assert resolve_target_modules(model, "qv") == ["query", "value"]
    attn = resolve_target_modules(model, "attn")
    assert attn == ["query", "key", "value", "attention.output.dense"]
    names = [n for n, _ in model.named_modules()]
    hit = {n for n in names for t in attn if n == t or n.endswith("." + t)}
    assert not any(n.endswith("intermediate.dense") or n.endswith(".0.output.dense") for n in hit)
    assert set(resolve_target_modules(model, "attn_mlp")) == {"query", "key", "value", "output.dense", "intermediate.dense"}
    assert "classifier" not in resolve_target_modules(model, "all_linear")


def test_gpt2_presets(tiny_gpt2_dir: Path) -> None:
    model = meta_model(tiny_gpt2_dir, causal=True)
    assert resolve_target_modules(model, "qv") == ["c_attn"]  # fused q/k/v projection
    assert resolve_target_modules(model, "attn") == ["c_attn", "attn.c_proj"]
    assert set(resolve_target_modules(model, "attn_mlp")) == {"c_attn", "c_proj", "c_fc"}


def test_peft_applies_resolved_names_to_exactly_the_attention_layers(tiny_bert_dir: Path) -> None:
    from peft import LoraConfig, get_peft_model

    model = meta_model(tiny_bert_dir)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=resolve_target_modules(model, "attn")))
    wrapped = {n.split("encoder.layer.0.", 1)[-1] for n, m in peft_model.named_modules()
               if hasattr(m, "lora_A") and "layer.0." in n}
    assert wrapped == {"attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"}


def test_explicit_list_is_checked_against_real_names(tiny_bert_dir: Path) -> None:
    model = meta_model(tiny_bert_dir)
    assert resolve_target_modules(model, ["query", "intermediate.dense"]) == ["query", "intermediate.dense"]
    with pytest.raises(ConfigError) as err:
        resolve_target_modules(model, ["query", "q_proj"])
    assert err.value.key == "lora.target_modules"
    assert "q_proj" in str(err.value) and "attention.self.query" in str(err.value)
    with pytest.raises(ConfigError, match="head"):
        resolve_target_modules(model, ["classifier"])


def test_module_name_lists_and_generic_fallback() -> None:
    names = ["encoder.blocks.0.attn.wq", "encoder.blocks.0.attn.wv", "encoder.blocks.0.attn.proj",
             "encoder.blocks.0.ffn.fc1", "encoder.blocks.0.ffn.fc2", "score"]
    assert resolve_target_modules(names, "qv") == ["wq", "wv"]
    assert resolve_target_modules(names, "attn") == ["wq", "wv", "proj"]
    assert resolve_target_modules(names, "attn_mlp") == ["wq", "wv", "proj", "fc1", "fc2"]
    with pytest.raises(ConfigError, match="preset"):
        resolve_target_modules(["blocks.0.fc1"], "qv")
