"""Greedy answers to eval prompts, and the answer-level metrics a practitioner reads.

`exact_match` and `token_f1` compare the generated answer with the reference after the SQuAD
normalisation (lower case, no punctuation, no articles, single spaces), as the SQuAD v1.1
evaluation script does. Both score the answer after a reasoning block (`<think>...</think>`,
as Qwen3, QwQ and the DeepSeek-R1 distills write it), in the prediction and in the reference:
a perfect hybrid-thinking model that opens every answer with an empty `<think>\n\n</think>`
scores 1.0, and a reasoning block that never closes is no answer at all.

Generation is greedy under an explicit `GenerationConfig` (the model's own sampling, temperature
and repetition settings never apply), stops at the tokenizer's eos, the chat template's
end-of-turn token and the model's eos ids, and is batched with left padding, so every prompt's
last token sits at the end of its row and a batched answer equals the answer generated alone.
"""

from __future__ import annotations

import contextlib
import re
import string
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def split_reasoning(text: str) -> tuple[str, str]:
    """(reasoning, answer) of a reply. After `</think>` is the answer (the last one, as the Qwen3
    template reads it; an opening `<think>` may be missing where the generation prompt opened it,
    as DeepSeek-R1's does); a `<think>` that never closes is reasoning cut off before any answer;
    a reply without either is all answer."""
    text = str(text)
    if THINK_CLOSE in text:
        before, _, answer = text.rpartition(THINK_CLOSE)
        return before.split(THINK_OPEN, 1)[-1].strip(), answer.strip()
    if text.lstrip().startswith(THINK_OPEN):
        return text.split(THINK_OPEN, 1)[1].strip(), ""
    return "", text.strip()


def answer_of(text: str) -> str:
    """The part of a reply that is scored: the answer after any reasoning block."""
    return split_reasoning(text)[1]


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, punctuation and articles removed, whitespace collapsed."""
    text = _ARTICLES.sub(" ", str(text).lower().translate(_PUNCTUATION))
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the answers (reasoning blocks set aside) agree after normalisation."""
    return float(normalize_answer(answer_of(prediction)) == normalize_answer(answer_of(reference)))


def token_f1(prediction: str, reference: str) -> float:
    """F1 of the bag of normalised answer tokens (reasoning blocks set aside); two empty answers
    agree (1.0), one empty scores 0."""
    pred, ref = normalize_answer(answer_of(prediction)).split(), normalize_answer(answer_of(reference)).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def answer_row_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, list[float]]:
    """eval_exact_match and eval_token_f1 of each eval row (dataset order)."""
    return {"eval_exact_match": list(map(exact_match, predictions, references)),
            "eval_token_f1": list(map(token_f1, predictions, references))}


def answer_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """eval_exact_match and eval_token_f1, means over the eval rows."""
    n = max(len(references), 1)
    return {name: sum(rows) / n for name, rows in answer_row_scores(predictions, references).items()}


def left_padded(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[Any, Any]:
    """input_ids and attention_mask of prompts padded on the left to the longest one."""
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if prompt:
            ids[row, width - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
            mask[row, width - len(prompt):] = 1
    return ids, mask


@dataclass(frozen=True)
class Reply:
    """One generated reply: its text (special tokens dropped, reasoning markers kept) and whether
    it ran into max_new_tokens without an end of turn (a capped answer is cut short)."""

    text: str
    capped: bool


def greedy_generation_config(eos_ids: Sequence[int], pad_id: int | None, max_new_tokens: int) -> Any:
    """The GenerationConfig every answer is generated with: greedy (one beam, no sampling), no
    repetition penalty or other logits processor, stopping at `eos_ids`, padding with `pad_id`.
    Every knob that has a neutral value is set to it, so nothing is left for the model's own
    generation_config (Qwen2.5-Instruct's repetition_penalty 1.05, Llama's temperature) to fill in."""
    from transformers import GenerationConfig

    return GenerationConfig(
        max_new_tokens=max_new_tokens, min_length=0, do_sample=False, num_beams=1,
        num_beam_groups=1, temperature=1.0, top_k=50, top_p=1.0, min_p=None, typical_p=1.0, epsilon_cutoff=0.0,
        eta_cutoff=0.0, repetition_penalty=1.0, encoder_repetition_penalty=1.0, length_penalty=1.0,
        no_repeat_ngram_size=0, encoder_no_repeat_ngram_size=0, diversity_penalty=0.0, renormalize_logits=False,
        remove_invalid_values=False, num_return_sequences=1, use_cache=True,
        eos_token_id=list(eos_ids), pad_token_id=pad_id, output_scores=False, return_dict_in_generate=False)


@contextlib.contextmanager
def _without_model_generation_config(model: Any) -> Iterator[None]:
    """generate() fills every setting left unset (None) from the model's generation_config (its
    bad words, suppressed tokens, sequence bias, ...): hand it a blank one for the call."""
    from transformers import GenerationConfig

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    own = getattr(inner, "generation_config", None)
    if own is None:
        yield
        return
    inner.generation_config = GenerationConfig()
    try:
        yield
    finally:
        inner.generation_config = own


def generate_replies(model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                     batch_size: int, device: Any, autocast: Any = None, end_of_turn: str = "") -> list[Reply]:
    """Greedy reply per prompt (token ids of the conversation up to the answer, the generation
    prompt included). Prompts run shortest first, so batches carry little padding; the replies
    come back in prompt order. A reply stops at the tokenizer's eos, the model's eos ids and the
    chat template's `end_of_turn` marker (a token when it is one, else cut from the text);
    special tokens other than the reasoning markers are dropped from the text."""
    import torch

    if max_new_tokens < 1:
        raise ValueError(f"task.max_new_tokens must be at least 1, got {max_new_tokens}")
    autocast = autocast or contextlib.nullcontext
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = stop_ids(model, tokenizer, end_of_turn)
    config = greedy_generation_config(eos, pad_id, max_new_tokens)
    hidden = _hidden_ids(tokenizer)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    replies = [Reply("", False)] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), _without_model_generation_config(model):
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                ids, mask = left_padded([prompts[i] for i in idx], pad_id)
                with autocast():
                    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                         generation_config=config)
                for row, i in enumerate(idx):
                    new = out[row, ids.shape[1]:].tolist()
                    kept, stopped = _until_eos(new, eos)
                    text = tokenizer.decode([t for t in kept if t not in hidden], skip_special_tokens=False)
                    marked = bool(end_of_turn) and end_of_turn in text
                    text = text.split(end_of_turn)[0] if end_of_turn else text
                    replies[i] = Reply(text.strip(), not stopped and not marked and len(new) >= max_new_tokens)
    finally:
        model.train(was_training)
    return replies


def generate_answers(model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                     batch_size: int, device: Any, autocast: Any = None, end_of_turn: str = "") -> list[str]:
    """The text of generate_replies (reasoning block included: score it with answer_of)."""
    return [r.text for r in generate_replies(model, tokenizer, prompts, max_new_tokens, batch_size, device,
                                             autocast, end_of_turn)]


def stop_ids(model: Any, tokenizer: Any, end_of_turn: str = "") -> list[int]:
    """End-of-answer ids: the chat template's end-of-turn token (when `end_of_turn` is one
    token), the tokenizer's eos and the model's own eos ids (chat models often end a turn with a
    token other than the tokenizer's eos, e.g. <|eot_id|>, <|im_end|>)."""
    ids: list[int] = []
    marker = tokenizer(end_of_turn, add_special_tokens=False)["input_ids"] if end_of_turn else []
    config = getattr(model, "generation_config", None)
    for value in (marker if len(marker) == 1 else None, tokenizer.eos_token_id, getattr(config, "eos_token_id", None)):
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if item is not None and int(item) not in ids:
                ids.append(int(item))
    return ids


def _hidden_ids(tokenizer: Any) -> set[int]:
    """Special token ids left out of a reply's text: all of them but the reasoning markers (a
    tokenizer that makes `<think>` special would otherwise merge the reasoning into the answer)."""
    markers = {tokenizer.convert_tokens_to_ids(m) for m in (THINK_OPEN, THINK_CLOSE)}
    return set(tokenizer.all_special_ids) - markers


def _until_eos(tokens: list[int], eos: list[int]) -> tuple[list[int], bool]:
    """The tokens before the first stop id, and whether there was one."""
    for pos, token in enumerate(tokens):
        if token in eos:
            return tokens[:pos], True
    return tokens, False
