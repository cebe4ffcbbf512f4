"""`run_trial`: one LoRA/QLoRA fine-tune, read top to bottom.

seed -> data (cached, tokenized) -> base model (cached or loaded) -> seed again, fresh head,
LoRA -> training loop with periodic eval -> final eval -> adapter saved -> TrialResult.
The second seeding right before the head and adapter are created is what makes a warm trial
(base model reused) bitwise-identical to a cold one: nothing between it and training draws
from the global RNG.
"""

from __future__ import annotations

import resource
import time
import traceback
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from trainer.cache import WarmCache, data_key, model_key, tokenizer_key
from trainer.training.checkpoint import Checkpointer, checkpoint_step, config_digest
from trainer.config import get
from trainer.data.splits import load_raw, load_test
from trainer.devices import device_name, resolve_compute_dtype, resolve_device
from trainer.data.encode_cache import cached_encode
from trainer.data.encoding import make_collator
from trainer.evaluation.scoring import evaluate, evaluate_rows
from trainer.llm_defaults import with_llm_defaults
from trainer.training.loop import LoopPlan, autocast_for, train_loop
from trainer.models.loading import (apply_lora, is_pristine, load_base_model, load_tokenizer, mutates_base, reset_head,
                           restore_base)
from trainer.data.packing import check_block_attention, pack_features, packed_collator
from trainer.reporting import RecordingReporter, Reporter
from trainer.result import TrialResult
from trainer.seeding import seed_everything
from trainer.training.selection import EvalSelection
from trainer.settings import LoraSettings
from trainer.models.special_tokens import save_embedding_layers
from trainer.models.targets import resolve_target_modules
from trainer.validation import task_direction, validate_config
from trainer.trace import span, traced


def _peak_memory_mb(device: Any) -> float:
    """CUDA: max allocated since the trial started. CPU: the process's peak RSS (Linux KiB)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@traced("trainer.lora_removal")
def _give_back(cache: WarmCache, key: str, base: Any, peft_model: Any, lora: LoraSettings) -> None:
    """Leave the cached base exactly as loaded, or drop it from the cache."""
    try:
        if peft_model is not None:
            base = restore_base(peft_model)
        if not mutates_base(lora) and is_pristine(base):
            return
    except Exception:  # noqa: BLE001 - a base we cannot restore is simply not reused
        pass
    cache.evict("model", key)


class _AnswerEval:
    """SFT generation metrics (exact_match, token_f1) and the sample table: at the end of a
    trial, or at every eval when task.generate_every_eval is set or the objective needs them."""

    def __init__(self, model: Any, data: Any, tok: Any, task: dict[str, Any], batch_size: int, device: Any,
                 autocast: Any) -> None:
        from trainer.validation import GENERATION_METRICS

        self.enabled = task["type"] == "sft"
        self.every_eval = self.enabled and (bool(task.get("generate_every_eval")) or task["metric"] in GENERATION_METRICS)
        self.args = (model, data, tok, int(task.get("max_new_tokens", 32)), batch_size, device, autocast,
                     int(task.get("num_logged_samples", 16)))
        self.samples: list[dict[str, str]] = []
        self.rows: dict[str, list[float]] = {}  # exact_match and token_f1 of each eval row, last call

    def __call__(self) -> dict[str, float]:
        from trainer.evaluation.scoring import answer_eval

        metrics, self.samples, self.rows = answer_eval(*self.args)
        return metrics


@traced("trainer.run_trial")
def run_trial(cfg: DictConfig, reporter: Reporter | None = None, cache: WarmCache | None = None,
              output_dir: str | Path | None = None, objective: tuple[str, str] | None = None,
              objective_at: str = "last", evaluate_test: bool = False, checkpoint_dir: str | Path | None = None,
              resume: bool = False) -> TrialResult:
    """Fine-tune once with the composed job config; exceptions from `reporter` propagate.

    `checkpoint_dir` (default `output_dir/checkpoint`): where the trial's checkpoint goes (`train.checkpoint_every_steps`, and when
    the reporter asks it to stop: TrialPreempted); `resume`: continue from the checkpoint there,
    bit for bit. The checkpoint is removed once the trial has finished.

    `objective` is (eval metric, direction), by default the task's; `objective_at="best"` scores
    the trial by its best evaluation and keeps that evaluation's adapter (trainer.training.selection).
    `evaluate_test`: also score the kept model on `data.test_split` (metrics `test_*`; for seed
    replicates, never for the search)."""
    import torch

    cfg = with_llm_defaults(cfg)  # a config with `auto` keys that no pre-flight resolved (e.g. a direct call)
    lora, quant, train = validate_config(cfg)
    model_cfg, data_cfg, task = (get(cfg, k) for k in ("model", "data", "task"))
    seed, task_type = get(cfg, "seed"), task["type"]
    reporter = reporter if reporter is not None else RecordingReporter()
    cache = cache if cache is not None else WarmCache()
    device = resolve_device(train.device)
    seed_everything(seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timing: dict[str, float] = {}

    t0 = time.perf_counter()
    tok = cache.get("tokenizer", tokenizer_key(cfg), lambda: load_tokenizer(model_cfg, task))
    data = cache.get("data", data_key(cfg), lambda: cached_encode(load_raw(data_cfg, task_type), tok, data_cfg, task,
                                                                 train.max_seq_length))
    timing["tokenize_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    mkey = model_key(cfg, data.num_labels, device)
    if train.precision == "pure_bf16":
        mkey += " bf16 weights"  # not the fp32 base that the other precisions share
    warm = cache.contains("model", mkey)
    base = cache.get("model", mkey, lambda: load_base_model(model_cfg, quant, task_type, data.num_labels,
                                                            tok.pad_token_id, device, train.gradient_checkpointing,
                                                            train.precision, tokenizer=tok))
    timing["model_load_s"] = time.perf_counter() - t0
    targets = resolve_target_modules(base, lora.target_modules)
    rows, flatten = data.train.features, model_cfg.get("attn_implementation") == "flash_attention_2"
    if train.packing:  # before seeding: the check and the packing draw from local generators only
        check_block_attention(base, device, flatten)
        rows = pack_features(rows, train.max_seq_length, get(cfg, "data_seed"))

    peft_model = None
    try:
        seed_everything(seed)
        reset_head(base, task_type)
        peft_model = apply_lora(base, lora, targets, task_type, train.precision)

        collate = make_collator(tok, task_type)
        train_collate = packed_collator(tok.pad_token_id, flatten) if train.packing else collate
        autocast = autocast_for(device, train.precision)
        plan = LoopPlan.build(train, len(rows))
        answers = _AnswerEval(peft_model, data, tok, task, train.batch_size, device, autocast)

        row_sink = getattr(reporter, "eval_rows", None)

        def run_eval() -> dict[str, float]:
            metrics, rows = evaluate_rows(peft_model, data, collate, task_type, train.batch_size, device, autocast,
                                          task.get("label_scoring", "mean"))
            if answers.every_eval:
                metrics = {**metrics, **answers()}
                rows = {**rows, **answers.rows}
            if callable(row_sink):
                row_sink(rows)
            return metrics

        metric, direction = objective or ("eval_" + task["metric"], task_direction(task))
        selection = EvalSelection(metric, direction, objective_at, train.early_stopping_patience)
        if checkpoint_dir is None and output_dir is not None:
            checkpoint_dir = Path(output_dir) / "checkpoint"
        checkpoint = Checkpointer(checkpoint_dir, train.checkpoint_every_steps,
                                  config_digest(OmegaConf.to_container(cfg, resolve=True)), resume=resume)
        resumed_from = checkpoint_step(checkpoint_dir) if resume else None
        outcome = train_loop(peft_model, rows, train_collate, run_eval, train, plan, device,
                             get(cfg, "data_seed"), reporter, causal=task_type != "classification",
                             selection=selection, checkpoint=checkpoint, loraplus_lr_ratio=lora.loraplus_lr_ratio)
        scored_step = outcome.steps
        if selection.restore(peft_model):  # the adapter of the best evaluation, scored by its metrics
            outcome.final_metrics, scored_step = dict(selection.best_metrics), selection.best_step
        if answers.enabled and not answers.every_eval:  # generation metrics of the model kept
            final = answers()
            outcome.final_metrics.update(final)
            next(h for h in reversed(outcome.history) if h["event"] == "eval" and h["step"] == scored_step).update(final)
            reporter.log_metrics(final, scored_step)

        if evaluate_test and data_cfg.get("test_split"):
            held_out = cache.get("data", data_key(cfg) + " test", lambda: cached_encode(
                load_test(data_cfg, task_type), tok, data_cfg, task, train.max_seq_length))
            scores = evaluate(peft_model, held_out, collate, task_type, train.batch_size, device, autocast,
                              task.get("label_scoring", "mean"))
            if answers.enabled:
                scores.update(_AnswerEval(peft_model, held_out, tok, task, train.batch_size, device, autocast)())
            outcome.final_metrics.update({"test_" + k.removeprefix("eval_"): v for k, v in scores.items()})

        adapter_dir = None
        if output_dir is not None and train.save_adapter:
            adapter_dir = Path(output_dir) / "adapter"
            with span("trainer.save_adapter"):
                peft_model.save_pretrained(str(adapter_dir), safe_serialization=True,
                                           save_embedding_layers=save_embedding_layers(peft_model))
        trainable, total = peft_model.get_nb_trainable_parameters()
        checkpoint.remove()
    except torch.OutOfMemoryError as e:
        traceback.clear_frames(e.__traceback__)  # drop activations held by the traceback before the caller retries
        torch.cuda.empty_cache()
        raise
    finally:
        _give_back(cache, mkey, base, peft_model, lora)

    metrics = outcome.final_metrics
    return TrialResult(
        metrics=metrics,
        objective=metrics["eval_" + task["metric"]],
        trainable_params=int(trainable),
        total_params=int(total),
        steps=outcome.steps,
        train_runtime_s=outcome.train_s,
        samples_per_second=outcome.samples / outcome.train_s if outcome.train_s > 0 else 0.0,
        peak_memory_mb=_peak_memory_mb(device),
        history=outcome.history,
        adapter_dir=adapter_dir,
        samples=answers.samples,
        resolved={
            "lora_alpha": lora.alpha,
            "target_modules": targets,
            "num_labels": data.num_labels,
            "device": str(device),
            "device_name": device_name(device),
            "compute_dtype": {"4bit": resolve_compute_dtype(quant.compute_dtype, device),
                              "8bit": "int8/float16"}.get(quant.mode, "bfloat16" if train.precision == "pure_bf16"
                                                          else "float32"),
            "precision": train.precision,
            "optim": train.optim,
            "loraplus_lr_ratio": lora.loraplus_lr_ratio,
            "group_by_length": bool(train.group_by_length),
            "train_padding_fraction": outcome.padding_fraction,
            "packing": bool(train.packing),
            "train_packed_rows": len(rows) if train.packing else None,
            "objective_at": objective_at,
            "best_step": selection.best_step,
            "stopped_early_at": outcome.stopped_early_at,
            "checkpoints_written": len(checkpoint.written),
            "resumed_from_step": resumed_from,
            "effective_batch_size": plan.effective_batch_size,
            "total_steps": plan.total_steps,
            "warmup_steps": plan.warmup_steps,
            "steps_per_epoch": plan.steps_per_epoch,
            **data.stats,
            "num_train": len(data.train.features),
            "num_eval": len(data.eval.features),
            "warm_model": warm,
            **timing,
            "train_s": outcome.train_s,
            "eval_s": outcome.eval_s,
        },
    )
