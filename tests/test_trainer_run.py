"""End-to-end fine-tunes of tiny models: classification and causal LM, 4-bit, on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import compose_cfg

from trainer import NonFiniteLossError, RecordingReporter, TrialResult, WarmCache, preflight, run_trial

pytestmark = pytest.mark.usefixtures("torch_single_thread")

TINY = ["data.demo_train_size=48", "data.demo_eval_size=24", "train.batch_size=8", "train.max_seq_length=32",
        "train.max_steps=6", "train.eval_every_steps=3", "train.log_every_steps=2"]


def bert_cfg(path: Path, *extra: str):
    return compose_cfg([f"model.name_or_path={path}", *TINY, *extra])


def llama_cfg(path: Path, *extra: str):
    return compose_cfg([f"model.name_or_path={path}", "task=causal_lm", "task.metric=perplexity", *TINY, *extra])


class StopAt:
    """A reporter that stops the trial at its first eval, like an Optuna pruner would."""

    class Pruned(Exception):
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def report(self, step: int, metrics: dict[str, float]) -> None:
        raise self.Pruned(f"pruned at step {step}")


def test_tiny_bert_qlora_trains_and_reports(tiny_bert_dir: Path, tmp_path: Path) -> None:
    import torch
    from bitsandbytes.nn import Linear4bit

    reporter = RecordingReporter()
    cache = WarmCache()
    cfg = bert_cfg(tiny_bert_dir)
    result = run_trial(cfg, reporter, cache=cache, output_dir=tmp_path)

    assert isinstance(result, TrialResult)
    assert result.steps == 6
    assert [s for s, _ in reporter.logged] == [2, 4, 6]
    assert set(reporter.logged[0][1]) == {"train_loss", "learning_rate", "grad_norm", "epoch"}
    assert [s for s, _ in reporter.reported] == [3, 6]
    assert set(result.metrics) == {"eval_loss", "eval_accuracy", "eval_macro_f1"}
    assert result.objective == result.metrics["eval_accuracy"]
    assert result.trainable_params == preflight(cfg).trainable_params
    assert 0 < result.trainable_params < result.total_params
    assert result.resolved["target_modules"] == ["query", "value"]
    assert result.resolved["lora_alpha"] == 16.0 and result.resolved["num_labels"] == 2
    assert result.resolved["device"] == "cpu" and result.resolved["total_steps"] == 6
    assert {"model_load_s", "tokenize_s", "train_s", "eval_s"} <= set(result.resolved)
    assert result.peak_memory_mb > 0 and result.samples_per_second > 0
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()

    base = next(iter(cache._stores["model"].values()))  # the cached base: 4-bit body, full-precision head
    assert isinstance(base.bert.encoder.layer[0].attention.self.query, Linear4bit)
    assert type(base.classifier) is torch.nn.Linear and base.classifier.weight.dtype == torch.float32


def test_tiny_llama_causal_lm_qlora(tiny_llama_dir: Path) -> None:
    from transformers import AutoTokenizer

    from trainer.data.splits import load_raw
    from trainer.data.encoding import IGNORE_INDEX, encode

    cfg = llama_cfg(tiny_llama_dir, "lora.target_modules=attn_mlp")
    reporter = RecordingReporter()
    result = run_trial(cfg, reporter)
    assert set(result.metrics) == {"eval_loss", "eval_perplexity", "eval_accuracy"}
    assert result.objective == result.metrics["eval_perplexity"]
    assert 0.0 <= result.metrics["eval_accuracy"] <= 1.0
    assert reporter.reported[-1][1] == result.metrics

    # the loss only sees completion tokens: prompt (and, after collation, padding) labels are -100
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tok.pad_token = tok.eos_token
    data_cfg, task = dict(cfg.data), dict(cfg.task)
    data = encode(load_raw(data_cfg, "causal_lm"), tok, data_cfg, task, 32)
    row = data.train.features[0]
    n_prompt = sum(1 for y in row["labels"] if y == IGNORE_INDEX)
    prompt = tok(task["prompt_template"].format(text="x"))["input_ids"]
    assert n_prompt >= len(prompt) - 1 and row["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    completion = tok.decode(row["labels"][n_prompt:])
    assert completion in ("negative </s>", "positive </s>")
    assert row["input_ids"][:n_prompt] == data.train.features[0]["input_ids"][:n_prompt]
    assert data.candidates == [tok(" negative", add_special_tokens=False)["input_ids"],
                               tok(" positive", add_special_tokens=False)["input_ids"]]


def test_reporter_exception_stops_trial_and_cache_stays_usable(tiny_bert_dir: Path) -> None:
    from trainer.models.loading import is_pristine

    cache = WarmCache()
    with pytest.raises(StopAt.Pruned, match="step 3"):
        run_trial(bert_cfg(tiny_bert_dir), StopAt(), cache=cache)
    (base,) = cache._stores["model"].values()
    assert is_pristine(base)
    result = run_trial(bert_cfg(tiny_bert_dir), cache=cache)
    assert result.resolved["warm_model"] is True and result.steps == 6


def test_diverging_learning_rate_raises_non_finite_loss(tiny_bert_dir: Path) -> None:
    cache = WarmCache()
    cfg = bert_cfg(tiny_bert_dir, "train.learning_rate=1e30", "train.warmup_ratio=0", "train.max_grad_norm=0")
    with pytest.raises(NonFiniteLossError, match=r"at optimizer step \d+") as err:
        run_trial(cfg, cache=cache)
    assert err.value.step >= 1
    assert run_trial(bert_cfg(tiny_bert_dir), cache=cache).resolved["warm_model"] is True


def test_unknown_target_module_fails_before_training(tiny_bert_dir: Path) -> None:
    from trainer import ConfigError

    with pytest.raises(ConfigError, match="attention.self.query"):
        run_trial(bert_cfg(tiny_bert_dir, "lora.target_modules=[q_proj]"))


def test_every_transformers_scheduler_runs(tiny_bert_dir: Path) -> None:
    from transformers import SchedulerType

    needs = {"cosine_with_min_lr": "{min_lr_rate: 0.1}", "cosine_warmup_with_min_lr": "{min_lr_rate: 0.1}",
             "warmup_stable_decay": "{num_decay_steps: 2}"}
    cache = WarmCache()
    for scheduler in (s.value for s in SchedulerType):
        extra = [f"train.lr_scheduler_type={scheduler}", "train.max_steps=4", "train.eval_every_steps=2"]
        if scheduler in needs:
            extra.append(f"train.scheduler_kwargs={needs[scheduler]}")
        result = run_trial(bert_cfg(tiny_bert_dir, *extra), cache=cache)
        assert result.steps == 4, scheduler


def test_8bit_and_gradient_options_train_on_cpu(tiny_llama_dir: Path) -> None:
    result = run_trial(llama_cfg(tiny_llama_dir, "quant=8bit", "train.gradient_checkpointing=true",
                                 "train.gradient_accumulation_steps=2", "lora.use_rslora=true"))
    assert result.steps == 6 and result.resolved["effective_batch_size"] == 16
