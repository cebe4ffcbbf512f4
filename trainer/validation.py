"""Static config checks: everything that can be rejected without a model or data.

Cheap enough to run on every search-space point before a sweep starts; each error names the
dotted key, the value and the allowed values (see ConfigError).
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig

from trainer.config import get
from trainer.errors import ConfigError
from trainer.targets import TARGET_PRESETS
from trainer.trace import traced

TASK_METRICS: dict[str, dict[str, str]] = {  # metric -> optimisation direction
    "classification": {"accuracy": "maximize", "macro_f1": "maximize", "loss": "minimize"},
    "causal_lm": {"loss": "minimize", "perplexity": "minimize", "accuracy": "maximize"},
    "sft": {"loss": "minimize", "perplexity": "minimize", "exact_match": "maximize", "token_f1": "maximize"},
}
DATA_SOURCES = ("demo", "demo_chat", "sst2", "jsonl", "csv", "parquet", "hub")
GENERATION_METRICS = ("exact_match", "token_f1")
QUANT_MODES = ("none", "4bit", "8bit")
QUANT_TYPES = ("nf4", "fp4")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16", "auto")
LORA_BIAS = ("none", "all", "lora_only")
# schedulers that cannot run without one of these train.scheduler_kwargs
SCHEDULER_NEEDS: dict[str, tuple[str, ...]] = {
    "cosine_with_min_lr": ("min_lr", "min_lr_rate"),
    "cosine_warmup_with_min_lr": ("min_lr", "min_lr_rate"),
    "warmup_stable_decay": ("num_decay_steps",),
}
# init_lora_weights values that need nothing beyond the model and lora.* (eva/corda need extra configs)
LORA_INITS = ("true", "false", "gaussian", "orthogonal", "pissa", "pissa_niter_<n>", "olora", "loftq")
LOFTQ_BITS = (4, 8)  # what peft's loftq_init quantises to


def task_direction(task: dict[str, Any]) -> str:
    """task.direction, or the direction its metric is optimised in."""
    return task.get("direction") or TASK_METRICS[task["type"]][task["metric"]]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _require(ok: bool, key: str, value: Any, allowed: str, detail: str | None = None) -> None:
    if not ok:
        raise ConfigError(key, value, allowed, detail)


def _one_of(cfg: DictConfig, key: str, allowed: Sequence[str]) -> str:
    value = get(cfg, key)
    _require(value in allowed, key, value, f"one of {', '.join(allowed)}")
    return value


def _int_at_least(cfg: DictConfig, key: str, low: int, optional: bool = False) -> None:
    value = get(cfg, key)
    if optional and value is None:
        return
    what = f"an integer >= {low}" + (" or null" if optional else "")
    _require(_is_int(value) and value >= low, key, value, what)


def _check_lora(cfg: DictConfig) -> None:
    r = get(cfg, "lora.r")
    _require(_is_int(r) and r > 0, "lora.r", r, "an integer > 0")
    ratio = get(cfg, "lora.alpha_ratio")
    if ratio is not None:
        _require(_is_num(ratio) and ratio > 0, "lora.alpha_ratio", ratio, "a number > 0 or null")
    else:
        alpha = get(cfg, "lora.lora_alpha")
        _require(_is_num(alpha) and alpha > 0, "lora.lora_alpha", alpha, "a number > 0")
    dropout = get(cfg, "lora.lora_dropout")
    _require(_is_num(dropout) and 0 <= dropout < 1, "lora.lora_dropout", dropout, "a number in [0, 1)")
    _one_of(cfg, "lora.bias", LORA_BIAS)
    targets = get(cfg, "lora.target_modules")
    allowed = f"a preset ({', '.join(TARGET_PRESETS)}) or a non-empty list of module names"
    if isinstance(targets, str):
        _require(targets in TARGET_PRESETS, "lora.target_modules", targets, allowed)
    else:
        _require(
            isinstance(targets, list) and bool(targets) and all(isinstance(t, str) and t for t in targets),
            "lora.target_modules", targets, allowed,
        )
    scaling = get(cfg, "lora.scaling", "standard")
    _require(scaling in ("standard", "rslora"), "lora.scaling", scaling, "standard (alpha / r) or rslora (alpha / sqrt(r))")
    for flag in ("lora.use_rslora", "lora.use_dora"):
        value = get(cfg, flag, False)
        _require(isinstance(value, bool), flag, value, "true or false")
    init = get(cfg, "lora.init_lora_weights", True)
    _require(
        isinstance(init, bool) or (isinstance(init, str) and (init in LORA_INITS or re.fullmatch(r"pissa_niter_\d+", init))),
        "lora.init_lora_weights", init, f"one of {', '.join(LORA_INITS)}",
    )
    if init == "loftq":
        bits = get(cfg, "lora.loftq_bits", 4)
        _require(_is_int(bits) and bits in LOFTQ_BITS, "lora.loftq_bits", bits, "4 or 8")
        _int_at_least(cfg, "lora.loftq_iter", 1)
    saved = get(cfg, "lora.modules_to_save")
    _require(saved is None or (isinstance(saved, list) and all(isinstance(m, str) and m for m in saved)),
             "lora.modules_to_save", saved, "null or a list of module names (e.g. [lm_head] or [embed_tokens])")


def _check_train(cfg: DictConfig) -> None:
    from transformers import SchedulerType

    lr = get(cfg, "train.learning_rate")
    _require(_is_num(lr) and lr > 0, "train.learning_rate", lr, "a number > 0")
    scheduler = _one_of(cfg, "train.lr_scheduler_type", [s.value for s in SchedulerType])
    kwargs = get(cfg, "train.scheduler_kwargs", {})
    _require(kwargs is None or isinstance(kwargs, Mapping), "train.scheduler_kwargs", kwargs, "a mapping")
    needs = SCHEDULER_NEEDS.get(scheduler, ())
    _require(not needs or any(k in (kwargs or {}) for k in needs), "train.scheduler_kwargs", kwargs,
             f"a mapping with {' or '.join(needs)} for lr_scheduler_type={scheduler}")
    _int_at_least(cfg, "train.batch_size", 1)
    _int_at_least(cfg, "train.gradient_accumulation_steps", 1)
    ratio = get(cfg, "train.warmup_ratio", 0.0)
    _require(_is_num(ratio) and 0 <= ratio < 1, "train.warmup_ratio", ratio, "a number in [0, 1)")
    _int_at_least(cfg, "train.warmup_steps", 0)
    max_steps = get(cfg, "train.max_steps", -1)
    _require(_is_int(max_steps), "train.max_steps", max_steps, "an integer (> 0 overrides num_epochs)")
    if max_steps <= 0:
        epochs = get(cfg, "train.num_epochs")
        _require(_is_int(epochs) and epochs >= 1, "train.num_epochs", epochs, "an integer >= 1 (or max_steps > 0)")
    for key in ("train.weight_decay", "train.max_grad_norm"):
        value = get(cfg, key, 0.0)
        _require(_is_num(value) and value >= 0, key, value, "a number >= 0 (max_grad_norm 0 = no clipping)")
    _int_at_least(cfg, "train.max_seq_length", 8)
    _int_at_least(cfg, "train.eval_every_steps", 0)
    _int_at_least(cfg, "train.log_every_steps", 0)
    _int_at_least(cfg, "train.early_stopping_patience", 1, optional=True)
    every = get(cfg, "train.checkpoint_every_steps", "auto")
    _require(every == "auto" or (_is_int(every) and every >= 0), "train.checkpoint_every_steps", every,
             "an integer >= 0 (0: only when the trial is asked to stop) or auto (long trials only)")
    for flag in ("train.gradient_checkpointing", "train.save_adapter", "train.group_by_length"):
        value = get(cfg, flag, False)
        _require(isinstance(value, bool), flag, value, "true or false")
    _check_precision(cfg)
    _check_optim(cfg)


def _check_optim(cfg: DictConfig) -> None:
    from trainer.devices import OPTIMIZERS, device_name, resolve_device, supported_optimizers

    optim = get(cfg, "train.optim", "adamw_torch")  # configs saved before the key existed
    _require(optim in OPTIMIZERS, "train.optim", optim, f"one of {', '.join(OPTIMIZERS)}")
    device = resolve_device(get(cfg, "train.device", "auto"))
    ok = supported_optimizers(device)
    if optim not in ok:  # the device's name only in the error: asking for it costs a CUDA probe
        raise ConfigError("train.optim", optim, f"one of {', '.join(ok)} on device {device} [{device_name(device)}]",
                          "paged optimizers page GPU optimizer state to host memory and need CUDA")
    if optim != "adamw_torch" and importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("train.optim", optim, "adamw_torch (bitsandbytes is not installed)")


def _check_precision(cfg: DictConfig) -> None:
    from trainer.devices import PRECISIONS, device_name, resolve_device, supported_precisions

    precision = _one_of(cfg, "train.precision", PRECISIONS)
    device = resolve_device(get(cfg, "train.device", "auto"))
    ok = supported_precisions(device)
    if precision not in ok:
        raise ConfigError("train.precision", precision, f"one of {', '.join(ok)} on device {device} [{device_name(device)}]",
                          "fp16 needs CUDA; bf16 and pure_bf16 need a bf16-capable GPU or a CPU with avx512_bf16/amx_bf16")
    compute = get(cfg, "quant.compute_dtype", "float32")
    if precision == "pure_bf16" and get(cfg, "quant.mode") == "4bit" and compute not in ("bfloat16", "auto"):
        raise ConfigError("quant.compute_dtype", compute, "bfloat16 or auto with train.precision=pure_bf16",
                          "pure_bf16 computes everything in bf16, the 4-bit matmuls included")


def _check_quant(cfg: DictConfig) -> None:
    from trainer.devices import resolve_device

    mode = _one_of(cfg, "quant.mode", QUANT_MODES)
    if mode == "8bit" and get(cfg, "lora.use_dora", False) and resolve_device(get(cfg, "train.device", "auto")).type == "cpu":
        # peft 0.21 DoRA on bitsandbytes 0.50 int8 layers loses the int8 weight state (CB) on CPU
        raise ConfigError("lora.use_dora", True, "false with quant.mode=8bit on cpu",
                          "DoRA + bitsandbytes int8 fails on CPU; use quant=4bit or none")
    if mode == "4bit":
        _one_of(cfg, "quant.quant_type", QUANT_TYPES)
        _one_of(cfg, "quant.compute_dtype", COMPUTE_DTYPES)
        value = get(cfg, "quant.double_quant", False)
        _require(isinstance(value, bool), "quant.double_quant", value, "true or false")


def _check_loftq(cfg: DictConfig) -> None:
    from trainer.devices import resolve_device

    if get(cfg, "lora.init_lora_weights", True) != "loftq":
        return
    mode = get(cfg, "quant.mode")
    if mode != "none":
        raise ConfigError("lora.init_lora_weights", "loftq",
                          f"an init other than loftq with quant.mode={mode} (loftq needs quant=none)",
                          "peft initialises LoftQ from the full-precision weights: it quantises them itself to "
                          "lora.loftq_bits, keeps the dequantised base and fits LoRA to the quantisation error")
    device = resolve_device(get(cfg, "train.device", "auto"))
    if device.type == "cpu":
        raise ConfigError("lora.init_lora_weights", "loftq", "an init other than loftq on device cpu",
                          "peft's LoftQ initialisation quantises on CUDA (or XPU) only")


def _check_task(cfg: DictConfig) -> None:
    task = _one_of(cfg, "task.type", tuple(TASK_METRICS))
    metric = _one_of(cfg, "task.metric", tuple(TASK_METRICS[task]))
    direction = get(cfg, "task.direction")
    if direction is not None:
        want = TASK_METRICS[task][metric]
        _require(direction == want, "task.direction", direction, f"{want} for task.metric={metric}")
    if task == "sft":
        _check_sft(cfg)
    elif task == "causal_lm":
        template = get(cfg, "task.prompt_template")
        _require(isinstance(template, str) and "{text}" in template, "task.prompt_template", template,
                 "a string containing {text}")
        if metric == "accuracy":
            label = get(cfg, "data.label_column")
            _require(label is not None, "data.label_column", label, "a column name when task.metric=accuracy")
        scoring = get(cfg, "task.label_scoring", "mean")
        _require(scoring in ("mean", "sum"), "task.label_scoring", scoring,
                 "mean (log-probability per verbaliser token) or sum")
    else:
        label = get(cfg, "data.label_column")
        _require(isinstance(label, str), "data.label_column", label, "a column name for classification")


def _check_sft(cfg: DictConfig) -> None:
    from trainer.chat_templates import TRAIN_ON, TRUNCATION

    _one_of(cfg, "task.train_on", TRAIN_ON)
    _one_of(cfg, "task.truncation", TRUNCATION)
    _int_at_least(cfg, "task.max_new_tokens", 1)
    _int_at_least(cfg, "task.num_logged_samples", 0)
    template = get(cfg, "task.chat_template")
    _require(template is None or (isinstance(template, str) and bool(template)), "task.chat_template", template,
             "null (the tokenizer's own), a named template or a Jinja string")
    every = get(cfg, "task.generate_every_eval", False)
    _require(isinstance(every, bool), "task.generate_every_eval", every, "true or false")


def _check_format(cfg: DictConfig, task: str) -> str:
    from trainer.conversations import CHAT_FORMATS, FORMATS, resolve_format

    fmt = get(cfg, "data.format")
    _require(fmt is None or fmt in FORMATS, "data.format", fmt, f"null or one of {', '.join(FORMATS)}")
    allowed = (*CHAT_FORMATS, "prompt_completion") if task == "sft" else ("text_label", "prompt_completion")
    if task == "classification":
        allowed = ("text_label",)
    _require(fmt is None or fmt in allowed, "data.format", fmt, f"one of {', '.join(allowed)} for task={task}",
             "chat formats need task=sft" if fmt in CHAT_FORMATS else None)
    resolved = resolve_format(get(cfg, "data") or {}, task)
    if get(cfg, "data.source") == "demo_chat":
        _require(task == "sft", "task", task, "sft for data=demo_chat (a chat data set)")
        _require(resolved == "messages", "data.format", fmt, "messages (or null) for data=demo_chat")
    return resolved


def _check_data(cfg: DictConfig) -> None:
    source = _one_of(cfg, "data.source", DATA_SOURCES)
    fmt = _check_format(cfg, _one_of(cfg, "task.type", tuple(TASK_METRICS)))
    if source in ("jsonl", "csv", "parquet"):
        path = get(cfg, "data.path")
        _require(isinstance(path, str) and bool(path), "data.path", path,
                 f"a folder with {{train,validation}}.{source} files")
    if source == "hub":
        hub_id = get(cfg, "data.hub_id")
        _require(isinstance(hub_id, str) and bool(hub_id), "data.hub_id", hub_id, "a hub dataset id")
    if source in ("demo", "demo_chat"):
        _int_at_least(cfg, "data.demo_train_size", 2)
        _int_at_least(cfg, "data.demo_eval_size", 2)
    if fmt in ("text_label", "prompt_completion"):
        text = get(cfg, "data.text_column")
        _require(isinstance(text, str) and bool(text), "data.text_column", text, "a column name")
    if fmt == "prompt_completion":
        completion = get(cfg, "data.completion_column")
        _require(isinstance(completion, str) and bool(completion), "data.completion_column", completion,
                 "a column name for data.format=prompt_completion")
    _int_at_least(cfg, "data.num_labels", 2, optional=True)
    _int_at_least(cfg, "data.max_train_samples", 1, optional=True)
    _int_at_least(cfg, "data.max_eval_samples", 1, optional=True)
    _int_at_least(cfg, "data.max_test_samples", 1, optional=True)
    test = get(cfg, "data.test_split")
    _require(test is None or (isinstance(test, str) and bool(test)), "data.test_split", test,
             "null or the name of a held-out split (e.g. test)")


@traced("trainer.validate_config")
def validate_config(cfg: DictConfig) -> None:
    """Raise ConfigError for the first invalid value; needs no model, no data, no network."""
    model = get(cfg, "model.name_or_path")
    _require(isinstance(model, str) and bool(model), "model.name_or_path", model, "a hub id or a local folder")
    for key in ("seed", "data_seed"):
        _int_at_least(cfg, key, 0)
    _check_lora(cfg)
    _check_quant(cfg)
    _check_loftq(cfg)
    _check_data(cfg)
    _check_task(cfg)
    _check_train(cfg)
