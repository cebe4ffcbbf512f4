"""Static config checks: everything that can be rejected without a model or data.

Cheap enough to run on every search-space point before a sweep starts; each error names the
dotted key, the value and the allowed values (see ConfigError).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig

from trainer.config import get
from trainer.errors import ConfigError
from trainer.settings import (LoraSettings, QuantSettings, Settings, TrainSettings, int_at_least, is_int, one_of,
                              require)
from trainer.trace import traced

TASK_METRICS: dict[str, dict[str, str]] = {  # metric -> optimisation direction
    "classification": {"accuracy": "maximize", "macro_f1": "maximize", "loss": "minimize"},
    "causal_lm": {"loss": "minimize", "perplexity": "minimize", "accuracy": "maximize"},
    "sft": {"loss": "minimize", "perplexity": "minimize", "exact_match": "maximize", "token_f1": "maximize"},
}
DATA_SOURCES = ("demo", "demo_chat", "sst2", "jsonl", "csv", "parquet", "hub")
GENERATION_METRICS = ("exact_match", "token_f1")


def task_direction(task: dict[str, Any]) -> str:
    """task.direction, or (null or auto) the direction its metric is optimised in."""
    direction = task.get("direction")
    if direction not in (None, "auto"):
        return direction
    metrics = TASK_METRICS.get(task.get("type"), {})
    if task.get("metric") not in metrics:
        raise ConfigError("task.metric", task.get("metric"), f"one of {', '.join(metrics) or '(a known task.type)'}")
    return metrics[task["metric"]]


def _one_of(cfg: DictConfig, key: str, allowed: Sequence[str]) -> str:
    return one_of(key, get(cfg, key), allowed)


def _int_at_least(cfg: DictConfig, key: str, low: int, optional: bool = False) -> None:
    int_at_least(key, get(cfg, key), low, optional)


def _check_lora_with_quant(cfg: DictConfig, lora: LoraSettings, quant: QuantSettings) -> None:
    """lora values that pass alone but not with this quant mode (on this device)."""
    from trainer.devices import resolve_device

    def device() -> Any:  # resolved only when needed: an explicit cuda device costs a probe
        return resolve_device(get(cfg, "train.device", "auto"))

    if quant.mode == "8bit" and lora.use_dora and device().type == "cpu":
        # peft 0.21 DoRA on bitsandbytes 0.50 int8 layers loses the int8 weight state (CB) on CPU
        raise ConfigError("lora.use_dora", True, "false with quant.mode=8bit on cpu",
                          "DoRA + bitsandbytes int8 fails on CPU; use quant=4bit or none")
    if lora.init_lora_weights != "loftq":
        return
    if quant.mode != "none":
        raise ConfigError("lora.init_lora_weights", "loftq",
                          f"an init other than loftq with quant.mode={quant.mode} (loftq needs quant=none)",
                          "peft initialises LoftQ from the full-precision weights: it quantises them itself to "
                          "lora.loftq_bits, keeps the dequantised base and fits LoRA to the quantisation error")
    if device().type == "cpu":
        raise ConfigError("lora.init_lora_weights", "loftq", "an init other than loftq on device cpu",
                          "peft's LoftQ initialisation quantises on CUDA (or XPU) only")


def _check_task(cfg: DictConfig) -> None:
    task = _one_of(cfg, "task.type", tuple(TASK_METRICS))
    metric = _one_of(cfg, "task.metric", tuple(TASK_METRICS[task]))
    direction = get(cfg, "task.direction")
    if direction not in (None, "auto"):
        want = TASK_METRICS[task][metric]
        require(direction == want, "task.direction", direction,
                f"{want} for task.metric={metric}, or auto (the metric's direction)")
    if task == "sft":
        _check_sft(cfg)
    elif task == "causal_lm":
        template = get(cfg, "task.prompt_template")
        require(isinstance(template, str) and "{text}" in template, "task.prompt_template", template,
                 "a string containing {text}")
        if metric == "accuracy":
            label = get(cfg, "data.label_column")
            require(label is not None, "data.label_column", label, "a column name when task.metric=accuracy")
        scoring = get(cfg, "task.label_scoring", "mean")
        require(scoring in ("mean", "sum"), "task.label_scoring", scoring,
                 "mean (log-probability per verbaliser token) or sum")
    else:
        label = get(cfg, "data.label_column")
        require(isinstance(label, str), "data.label_column", label, "a column name for classification")


def _check_sft(cfg: DictConfig) -> None:
    from trainer.data.chat_templates import REASONING, TRAIN_ON, TRUNCATION

    _one_of(cfg, "task.train_on", TRAIN_ON)
    _one_of(cfg, "task.truncation", TRUNCATION)
    reasoning = get(cfg, "task.reasoning")
    require(reasoning is None or reasoning in REASONING, "task.reasoning", reasoning,
             f"null (what the chat template does) or one of {', '.join(REASONING)}")
    new_tokens = get(cfg, "task.max_new_tokens")
    require(new_tokens == "auto" or (is_int(new_tokens) and new_tokens >= 1), "task.max_new_tokens", new_tokens,
            "an integer >= 1 or auto (from the eval reference answers' token lengths)")
    _int_at_least(cfg, "task.num_logged_samples", 0)
    template = get(cfg, "task.chat_template")
    require(template is None or (isinstance(template, str) and bool(template)), "task.chat_template", template,
             "null (the tokenizer's own), a named template or a Jinja string")
    every = get(cfg, "task.generate_every_eval", False)
    require(isinstance(every, bool), "task.generate_every_eval", every, "true or false")


def _check_format(cfg: DictConfig, task: str) -> str:
    from trainer.data.conversations import CHAT_FORMATS, FORMATS, resolve_format

    fmt = get(cfg, "data.format")
    require(fmt is None or fmt in FORMATS, "data.format", fmt, f"null or one of {', '.join(FORMATS)}")
    allowed = (*CHAT_FORMATS, "prompt_completion") if task == "sft" else ("text_label", "prompt_completion")
    if task == "classification":
        allowed = ("text_label",)
    require(fmt is None or fmt in allowed, "data.format", fmt, f"one of {', '.join(allowed)} for task={task}",
             "chat formats need task=sft" if fmt in CHAT_FORMATS else None)
    resolved = resolve_format(get(cfg, "data") or {}, task)
    if get(cfg, "data.source") == "demo_chat":
        require(task == "sft", "task", task, "sft for data=demo_chat (a chat data set)")
        require(resolved == "messages", "data.format", fmt, "messages (or null) for data=demo_chat")
    return resolved


def _check_ignore_columns(cfg: DictConfig, fmt: str) -> None:
    """data.ignore_columns: names of row keys the format does not read (a read one cannot be ignored)."""
    from trainer.data.conversations import row_columns

    ignored = get(cfg, "data.ignore_columns")
    require(ignored is None or (isinstance(ignored, list) and all(isinstance(k, str) and k for k in ignored)),
            "data.ignore_columns", ignored, "a list of row keys (e.g. [id, source])")
    read = set(row_columns(get(cfg, "data") or {}, fmt)) & set(ignored or ())
    require(not read, "data.ignore_columns", ignored, f"keys data.format={fmt} does not read",
            f"{', '.join(sorted(read))} {'is' if len(read) == 1 else 'are'} read by data.format={fmt}")


def _check_data(cfg: DictConfig) -> None:
    source = _one_of(cfg, "data.source", DATA_SOURCES)
    fmt = _check_format(cfg, _one_of(cfg, "task.type", tuple(TASK_METRICS)))
    if source in ("jsonl", "csv", "parquet"):
        path = get(cfg, "data.path")
        require(isinstance(path, str) and bool(path), "data.path", path,
                 f"a folder with {{train,validation}}.{source} files")
    if source == "hub":
        hub_id = get(cfg, "data.hub_id")
        require(isinstance(hub_id, str) and bool(hub_id), "data.hub_id", hub_id, "a hub dataset id")
    if source in ("demo", "demo_chat"):
        _int_at_least(cfg, "data.demo_train_size", 2)
        _int_at_least(cfg, "data.demo_eval_size", 2)
    if fmt in ("text_label", "prompt_completion"):
        text = get(cfg, "data.text_column")
        require(isinstance(text, str) and bool(text), "data.text_column", text, "a column name")
    if fmt == "prompt_completion":
        completion = get(cfg, "data.completion_column")
        require(isinstance(completion, str) and bool(completion), "data.completion_column", completion,
                 "a column name for data.format=prompt_completion")
    _check_ignore_columns(cfg, fmt)
    _int_at_least(cfg, "data.num_labels", 2, optional=True)
    _int_at_least(cfg, "data.max_train_samples", 1, optional=True)
    _int_at_least(cfg, "data.max_eval_samples", 1, optional=True)
    _int_at_least(cfg, "data.max_test_samples", 1, optional=True)
    test = get(cfg, "data.test_split")
    require(test is None or (isinstance(test, str) and bool(test)), "data.test_split", test,
             "null or the name of a held-out split (e.g. test)")


@traced("trainer.validate_config")
def validate_config(cfg: DictConfig) -> Settings:
    """Raise ConfigError for the first invalid value; needs no model, no data, no network.
    Returns the checked lora, quant and train settings, for code that goes on to use them."""
    model = get(cfg, "model.name_or_path")
    require(isinstance(model, str) and bool(model), "model.name_or_path", model, "a hub id or a local folder")
    for key in ("seed", "data_seed"):
        _int_at_least(cfg, key, 0)
    lora = LoraSettings.from_config(cfg)
    quant = QuantSettings.from_config(cfg)
    _check_lora_with_quant(cfg, lora, quant)
    _check_data(cfg)
    _check_task(cfg)
    return Settings(lora, quant, TrainSettings.from_config(cfg, quant))
