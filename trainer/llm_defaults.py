"""`auto` values of an LLM fine-tune, resolved once into the numbers every trial uses.

`task=sft` sets `train.learning_rate`, `train.max_seq_length`, `train.precision`,
`train.gradient_checkpointing`, `task.max_new_tokens` and `task.direction` to `auto`; any of them
set on the command line (or by the search space) wins. The sweep's pre-flight resolves them once
(trainer.preflight → LlmDefaults), prints them, and composes every trial with the numbers, so the
logged config says what ran; `run_trial` resolves a config that still has one the same way.

- learning rate: the LoRA learning-rate prior of the model's width and the LoRA variant
  (trainer/lr_prior.py: 1e-3 at hidden 2048, 5.5e-4 at 4096, 3e-4 at 8192, at most 3e-3; x0.5 for
  DoRA, x0.1 for PiSSA), the centre of search_space=llm's learning-rate range.
- max_seq_length: the 99th percentile of the training conversations' token lengths, rendered with
  the chat template as inference renders them, rounded up to a multiple of 64, at most 4096 and the
  model's max_position_embeddings. A fixed 64 cuts most chat data; a fixed 4096 pads short data.
- precision: bf16 autocast on a GPU that computes in bf16 natively, else fp32 (CPU stays fp32:
  emulated bf16 there is slower and not what a sweep should measure).
- gradient checkpointing: on CUDA (activations dominate an LLM's memory there), off on CPU.
- max_new_tokens: the longest reference answer of the eval split (its reasoning block and end of
  turn included) + a quarter + 8 tokens, at most max_seq_length: long enough for every answer the
  model should give, short enough that a model that never stops does not generate for minutes.
- direction: the metric's (loss and perplexity minimize, the others maximize).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from trainer.config import get
from trainer.errors import ConfigError
from trainer.lr_prior import load_model_config, lr_prior, text_config, variant_of
from trainer.settings import AUTO

AUTO_KEYS = ("train.learning_rate", "train.max_seq_length", "train.precision", "train.gradient_checkpointing",
             "task.max_new_tokens", "task.direction")
LENGTH_QUANTILE = 0.99
LENGTH_STEP = 64
MAX_SEQ_CAP = 4096
ANSWER_MARGIN = (1.25, 8)  # max_new_tokens = longest reference x 1.25 + 8


def is_auto(value: Any) -> bool:
    return isinstance(value, str) and value == AUTO


def quantile(values: Sequence[int], q: float) -> int:
    """The smallest value with at least a fraction `q` of `values` at or below it."""
    ordered = sorted(values)
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


def length_limit(lengths: Sequence[int], max_positions: int = 0, cap: int = MAX_SEQ_CAP) -> int:
    """max_seq_length for conversations of these token lengths (see the module doc)."""
    limit = max(math.ceil(quantile(lengths, LENGTH_QUANTILE) / LENGTH_STEP) * LENGTH_STEP, LENGTH_STEP)
    return min(limit, cap, max_positions or cap)


def answer_token_limit(lengths: Sequence[int], max_seq_length: int) -> int:
    """max_new_tokens for reference answers of these token lengths (see the module doc)."""
    factor, extra = ANSWER_MARGIN
    return max(min(math.ceil(max(lengths, default=0) * factor) + extra, max_seq_length), 1)


def precision_for(device: Any) -> str:
    from trainer.devices import supported_precisions

    return "bf16" if device.type == "cuda" and "bf16" in supported_precisions(device) else "fp32"


@dataclass(frozen=True)
class LlmDefaults:
    """The `auto` keys of one config and what they resolved to, with the reason for each."""

    values: dict[str, Any] = field(default_factory=dict)  # dotted key -> concrete value
    reasons: dict[str, str] = field(default_factory=dict)  # dotted key -> where the value comes from

    def apply(self, cfg: DictConfig) -> DictConfig:
        """A copy of `cfg` with every key that is still `auto` there set to its value (a key the
        caller has set, e.g. by the search space, keeps its own)."""
        out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        for key, value in self.values.items():
            if is_auto(OmegaConf.select(out, key)):
                OmegaConf.update(out, key, value, merge=False)
        return out

    def lines(self) -> list[str]:
        """One printable line per resolved key."""
        return [f"{key} = {_shown(value)}  ({self.reasons[key]})" for key, value in self.values.items()]


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value).lower() if isinstance(value, bool) else str(value)


def auto_keys(cfg: DictConfig) -> list[str]:
    """The keys of AUTO_KEYS that are `auto` in `cfg`."""
    return [key for key in AUTO_KEYS if is_auto(get(cfg, key))]


def _config_int(config: Any, *names: str) -> int:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return 0


def _render(tok: Any, messages: list[dict[str, Any]], tools: Any, row: int, split: str, **kwargs: Any) -> str:
    try:
        return tok.apply_chat_template(messages, tools=tools, tokenize=False, **kwargs)
    except Exception as exc:  # noqa: BLE001 - a template error is the user's data or template: name the row
        raise ConfigError("task.chat_template", "the template in use", "a template that renders every conversation",
                          f"{split} row {row}: {type(exc).__name__}: {exc}") from None


def conversation_lengths(tok: Any, conversations: Sequence[tuple[list[dict[str, Any]], Any]]) -> list[int]:
    """Token length of each whole conversation, rendered as inference renders it."""
    texts = [_render(tok, m, t, i, "train") for i, (m, t) in enumerate(conversations, 1)]
    return [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]] if texts else []


def answer_lengths(tok: Any, conversations: Sequence[tuple[list[dict[str, Any]], Any]]) -> list[int]:
    """Token length of each conversation's last assistant turn as the model must generate it:
    what the template adds after the generation prompt (an empty think block, the end-of-turn
    marker), or the bare content where the template renders history differently."""
    texts = []
    for i, (messages, tools) in enumerate(conversations, 1):
        last = max((j for j, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
        if last is None:
            continue
        prompt = _render(tok, messages[:last], tools, i, "eval", add_generation_prompt=True)
        full = _render(tok, messages[: last + 1], tools, i, "eval")
        texts.append(full[len(prompt):] if full.startswith(prompt) else str(messages[last].get("content") or ""))
    return [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]] if texts else []


def resolve_llm_defaults(cfg: DictConfig, *, tokenizer: Any = None, raw: Any = None,
                         model_config: Any = None) -> LlmDefaults:
    """The value of every `auto` key of `cfg` (nothing is loaded when none is auto). `tokenizer`
    (with the task's chat template), `raw` (trainer.data.splits.RawData) and `model_config` (the
    transformers config) are loaded here when not given."""
    keys = auto_keys(cfg)
    if not keys:
        return LlmDefaults()
    from trainer.validation import task_direction

    task = get(cfg, "task")
    values: dict[str, Any] = {}
    reasons: dict[str, str] = {}
    if "task.direction" in keys:
        values["task.direction"] = task_direction({**task, "direction": None})
        reasons["task.direction"] = f"task.metric={task['metric']}"
    if {"train.precision", "train.gradient_checkpointing"} & set(keys):
        from trainer.devices import device_name, resolve_device

        device = resolve_device(get(cfg, "train.device", "auto"))
        where = device_name(device) if device.type == "cuda" else "cpu"
        if "train.precision" in keys:
            values["train.precision"] = precision_for(device)
            reasons["train.precision"] = (f"bf16 compute on {where}" if values["train.precision"] == "bf16"
                                          else f"no GPU with native bf16: {where}")
        if "train.gradient_checkpointing" in keys:
            values["train.gradient_checkpointing"] = device.type == "cuda"
            reasons["train.gradient_checkpointing"] = f"{'on' if device.type == 'cuda' else 'off'} on {device.type}"
    if {"train.learning_rate", "train.max_seq_length"} & set(keys):
        model_config = model_config if model_config is not None else load_model_config(get(cfg, "model"))
    if "train.learning_rate" in keys:
        prior = lr_prior(get(cfg, "model"), variant_of(get(cfg, "lora", {}) or {}), model_config)
        values["train.learning_rate"] = prior.rate
        reasons["train.learning_rate"] = prior.reason
    max_len = get(cfg, "train.max_seq_length")
    if {"train.max_seq_length", "task.max_new_tokens"} & set(keys):
        if task["type"] != "sft":
            bad = next(k for k in ("train.max_seq_length", "task.max_new_tokens") if k in keys)
            raise ConfigError(bad, AUTO, "a number (auto reads chat data: task=sft only)")
        from trainer.data.conversations import conversations_of

        tok = tokenizer if tokenizer is not None else _load_tokenizer(cfg)
        raw = raw if raw is not None else _load_raw(cfg)
        if "train.max_seq_length" in keys:
            positions = _config_int(text_config(model_config), "max_position_embeddings", "n_positions")
            lengths = conversation_lengths(tok, conversations_of(raw.train))
            max_len = length_limit(lengths, positions)
            values["train.max_seq_length"] = max_len
            bound = f"; capped at {min(MAX_SEQ_CAP, positions or MAX_SEQ_CAP)}" if max_len < quantile(lengths, LENGTH_QUANTILE) else ""
            reasons["train.max_seq_length"] = (f"p99 of {len(lengths)} train conversations is "
                                               f"{quantile(lengths, LENGTH_QUANTILE)} tokens, longest "
                                               f"{max(lengths)}{bound}")
        if "task.max_new_tokens" in keys:
            answers = answer_lengths(tok, conversations_of(raw.eval))
            values["task.max_new_tokens"] = answer_token_limit(answers, int(max_len))
            reasons["task.max_new_tokens"] = (f"longest of {len(answers)} eval reference answers is "
                                              f"{max(answers, default=0)} tokens")
    return LlmDefaults({k: values[k] for k in AUTO_KEYS if k in values}, reasons)


def with_llm_defaults(cfg: DictConfig) -> DictConfig:
    """`cfg` with every `auto` key resolved (the same object when none is auto)."""
    defaults = resolve_llm_defaults(cfg)
    return defaults.apply(cfg) if defaults.values else cfg


def _load_tokenizer(cfg: DictConfig) -> Any:
    from trainer.models.loading import load_tokenizer

    return load_tokenizer(get(cfg, "model"), get(cfg, "task"))


def _load_raw(cfg: DictConfig) -> Any:
    from trainer.data.splits import load_raw

    return load_raw(get(cfg, "data"), "sft")
