"""Tokenize raw splits once (per cache key) and pad per batch.

Classification: text -> input ids, label -> `labels`.
Causal LM: prompt = task.prompt_template.format(text=...), completion = the completion column
or the verbalised label; `labels` are -100 on prompt (and, after collation, padding) tokens so
the loss is on the completion + eos only.
SFT: each conversation rendered once with the chat template, as inference renders it
(trainer.data.chat_templates.encode_turns); `labels` keep the assistant turns (task.train_on), each
with its end-of-turn marker. Conversations longer than train.max_seq_length lose whole exchanges
from the front, then the front of the last exchange's prompt (task.truncation=left_turns), or are
dropped (drop); an answer is never cut. The counts are in EncodedData.stats.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from trainer.data.conversations import conversations_of
from trainer.data.splits import RawData
from trainer.errors import ConfigError
from trainer.trace import traced

IGNORE_INDEX = -100


@dataclass
class EncodedSplit:
    """Model inputs per example, plus what causal-LM accuracy scoring needs."""

    features: list[dict[str, Any]]
    class_labels: list[int] | None = None  # causal LM with labels: gold class per example
    prompts: list[list[int]] | None = None  # causal LM with labels / SFT eval: prompt ids per example
    references: list[str] | None = None  # SFT eval: the last assistant turn's text per example


@dataclass
class EncodedData:
    train: EncodedSplit
    eval: EncodedSplit
    num_labels: int | None
    label_names: list[str] | None
    candidates: list[list[int]] | None = None  # causal LM: token ids of each label's completion
    stats: dict[str, float] = field(default_factory=dict)


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No per-trial `Map` progress bars (restores the caller's setting)."""
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def verbalizations(num_labels: int, label_names: Sequence[str] | None, verbalizer: Any) -> list[str]:
    """Completion text per label id: task.verbalizer (list or {label|name: text}) or " " + name."""
    if verbalizer is None:
        if not label_names:
            raise ConfigError("data.label_names", label_names, "a list of label names (or set task.verbalizer)")
        return [f" {n}" for n in label_names]
    if isinstance(verbalizer, dict):
        names = list(label_names or [])
        out = [verbalizer.get(i, verbalizer.get(str(i), verbalizer.get(names[i]) if i < len(names) else None))
               for i in range(num_labels)]
    else:
        out = list(verbalizer)
    if len(out) != num_labels or any(not isinstance(v, str) or not v for v in out):
        raise ConfigError("task.verbalizer", verbalizer, f"a text for each of the {num_labels} labels")
    return out


def _encode_classification(ds: Any, tok: Any, text: str, label: str, max_len: int) -> EncodedSplit:
    def fn(batch: dict[str, list]) -> dict[str, list]:
        enc = tok(batch[text], truncation=True, max_length=max_len)
        return {**enc, "labels": batch[label]}

    mapped = ds.map(fn, batched=True, remove_columns=ds.column_names)
    return EncodedSplit(mapped.to_list())


def _join(prompt: list[int], completion: list[int], max_len: int, bos: int | None) -> list[int]:
    """Truncate the prompt from the left (its end holds the question), keeping a leading BOS."""
    room = max_len - len(completion)
    if room <= 0:
        return completion[:max_len]
    if len(prompt) > room:
        keep_bos = bos is not None and prompt and prompt[0] == bos
        prompt = ([bos] if keep_bos else []) + prompt[len(prompt) - room + int(keep_bos):]
    return prompt + completion


def _encode_causal(ds: Any, tok: Any, template: str, text: str, completions: Callable[[dict], list[str]],
                   max_len: int, with_prompts: bool) -> EncodedSplit:
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []

    def fn(batch: dict[str, list]) -> dict[str, list]:
        prompts = tok([template.format(text=t) for t in batch[text]])["input_ids"]
        comps = tok(completions(batch), add_special_tokens=False)["input_ids"]
        ids, labels, kept = [], [], []
        for p, c in zip(prompts, comps):
            seq = _join(p, c + eos, max_len, tok.bos_token_id)
            n_prompt = len(seq) - min(len(c) + len(eos), len(seq))
            ids.append(seq)
            labels.append([IGNORE_INDEX] * n_prompt + seq[n_prompt:])
            kept.append(seq[:n_prompt])
        return {"input_ids": ids, "attention_mask": [[1] * len(s) for s in ids], "labels": labels, "prompt": kept}

    mapped = ds.map(fn, batched=True, remove_columns=ds.column_names).to_list()
    prompts = [row.pop("prompt") for row in mapped]
    return EncodedSplit(mapped, prompts=prompts if with_prompts else None)


def _without_first_exchanges(messages: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """The conversation without its first k exchanges (an exchange runs from a user turn to the
    next user turn); a leading system turn is kept."""
    first = 1 if messages and messages[0]["role"] == "system" else 0
    users = [i for i, m in enumerate(messages) if m["role"] == "user" and i >= first]
    return messages[:first] + messages[users[k]:]


def _fit_conversation(tok: Any, messages: list[dict[str, Any]], tools: Any, train_on: str, max_len: int,
                      truncation: str, reasoning: str | None) -> tuple[Any, bool] | None:
    """The conversation encoded within max_len, and whether it was cut: the fewest whole
    exchanges dropped from the front (a leading system turn kept; found by bisection, so a long
    conversation costs a few encodings, not one per exchange), then, when the last exchange alone
    is still too long, the front of its prompt (a leading BOS kept; its answer is never cut).
    None when the answer alone does not fit, or truncation=drop and the whole does not."""
    from trainer.data.chat_templates import EncodedConversation, encode_turns

    def encoded(k: int) -> EncodedConversation:
        kept = _without_first_exchanges(messages, k) if k else messages
        return encode_turns(tok, kept, train_on=train_on, tools=tools, reasoning=reasoning)

    enc = encoded(0)
    if len(enc.input_ids) <= max_len:
        return enc, False
    if truncation == "drop":
        return None
    first = 1 if messages[0]["role"] == "system" else 0
    exchanges = sum(m["role"] == "user" for m in messages[first:])
    lo, hi, best = 1, exchanges - 1, None  # the smallest number of exchanges to drop that fits
    while lo <= hi:
        mid = (lo + hi) // 2
        candidate = encoded(mid)
        if len(candidate.input_ids) <= max_len:
            best, hi = candidate, mid - 1
        else:
            lo = mid + 1
    if best is not None:
        return best, True
    enc = encoded(exchanges - 1) if exchanges > 1 else enc
    cut = len(enc.input_ids) - max_len
    keep = 1 if tok.bos_token_id is not None and enc.input_ids[0] == tok.bos_token_id else 0
    answer = enc.turn_starts[0] if enc.turn_starts else len(enc.input_ids)
    if keep + cut > answer:
        return None
    ids, labels = enc.input_ids, enc.labels
    return EncodedConversation(ids[:keep] + ids[keep + cut:], labels[:keep] + labels[keep + cut:],
                               [s - cut for s in enc.turn_starts]), True


def _encode_sft(conversations: list[tuple[list[dict[str, Any]], Any]], tok: Any, train_on: str, max_len: int,
                truncation: str, reasoning: str | None, split: str, stats: dict[str, float]) -> EncodedSplit:
    from trainer.data.chat_templates import TemplateSplitError, turn_reasoning

    features, prompts, references = [], [], []
    truncated = dropped = 0
    for row, (messages, tools) in enumerate(conversations, 1):
        try:
            fitted = _fit_conversation(tok, messages, tools, train_on, max_len, truncation, reasoning)
        except TemplateSplitError as e:
            first = next((m.get("content") or "" for m in messages if m.get("role") == "user"), "")
            raise TemplateSplitError(e.template, f"{split} row {row} (as loaded; its first user turn starts "
                                                 f"{first[:60]!r}): {e.reason}") from None
        if fitted is None:
            dropped += 1
            continue
        enc, cut = fitted
        truncated += cut
        features.append({"input_ids": enc.input_ids, "attention_mask": [1] * len(enc.input_ids),
                         "labels": enc.labels})
        prompts.append(enc.input_ids[: enc.turn_starts[-1]] if enc.turn_starts else list(enc.input_ids))
        references.append(turn_reasoning(messages[-1])[1].strip())
    stats[f"{split}_rows_truncated"], stats[f"{split}_rows_dropped"] = truncated, dropped
    if not features:
        raise ConfigError("train.max_seq_length", max_len, "long enough for at least one conversation",
                          f"all {dropped} {split} conversations are longer (task.truncation={truncation})")
    return EncodedSplit(features, prompts=prompts, references=references)


def encode_sft(raw: RawData, tok: Any, task: dict[str, Any], max_len: int) -> EncodedData:
    """Both splits of chat data; the eval loss is on assistant tokens even with train_on=all."""
    from trainer.data.chat_templates import use_chat_template

    use_chat_template(tok, task.get("chat_template"))
    train_on, truncation = task.get("train_on", "assistant"), task.get("truncation", "left_turns")
    reasoning = task.get("reasoning")
    stats: dict[str, float] = {}
    train = _encode_sft(conversations_of(raw.train), tok, train_on, max_len, truncation, reasoning, "train", stats)
    eval_on = "assistant" if train_on == "all" else train_on
    eval_ = _encode_sft(conversations_of(raw.eval), tok, eval_on, max_len, truncation, reasoning, "eval", stats)
    return EncodedData(train, eval_, None, None, stats=stats)


@traced("trainer.tokenize")
def encode(raw: RawData, tok: Any, data: dict[str, Any], task: dict[str, Any], max_len: int) -> EncodedData:
    """Tokenize both splits for the task type (see module doc)."""
    with _quiet_datasets():
        return _encode(raw, tok, data, task, max_len)


def _encode(raw: RawData, tok: Any, data: dict[str, Any], task: dict[str, Any], max_len: int) -> EncodedData:
    if task["type"] == "sft":
        return encode_sft(raw, tok, task, max_len)
    text, label = data["text_column"], data.get("label_column")
    if task["type"] == "classification":
        train = _encode_classification(raw.train, tok, text, label, max_len)
        eval_ = _encode_classification(raw.eval, tok, text, label, max_len)
        return EncodedData(train, eval_, raw.num_labels, raw.label_names)

    template, completion_col = task["prompt_template"], data.get("completion_column")
    candidates = None
    if completion_col:
        completions = lambda b: [str(c) for c in b[completion_col]]  # noqa: E731
    else:
        words = verbalizations(raw.num_labels, raw.label_names, task.get("verbalizer"))
        completions = lambda b: [words[y] for y in b[label]]  # noqa: E731
        candidates = tok(words, add_special_tokens=False)["input_ids"]
    train = _encode_causal(raw.train, tok, template, text, completions, max_len, False)
    eval_ = _encode_causal(raw.eval, tok, template, text, completions, max_len, candidates is not None)
    if candidates is not None:
        eval_.class_labels = list(raw.eval[label])
    return EncodedData(train, eval_, raw.num_labels, raw.label_names, candidates)


def make_collator(tok: Any, task_type: str) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """Dynamic padding to the longest sequence of each batch (right padding; -100 label padding)."""
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding

    if task_type == "classification":
        return DataCollatorWithPadding(tok, return_tensors="pt")
    return DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=IGNORE_INDEX, return_tensors="pt")
