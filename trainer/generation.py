"""Greedy answers to eval prompts, and the answer-level metrics a practitioner reads.

`exact_match` and `token_f1` compare the generated answer with the reference after the SQuAD
normalisation (lower case, no punctuation, no articles, single spaces), as the SQuAD v1.1
evaluation script does. Generation is batched with left padding, so every prompt's last token
sits at the end of its row and a batched answer equals the answer generated alone.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import Any

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, punctuation and articles removed, whitespace collapsed."""
    text = _ARTICLES.sub(" ", str(text).lower().translate(_PUNCTUATION))
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """F1 of the bag of normalised tokens; two empty answers agree (1.0), one empty scores 0."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
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


def generate_answers(model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                     batch_size: int, device: Any, autocast: Any = None, end_of_turn: str = "") -> list[str]:
    """Greedy answer text per prompt (token ids of the conversation up to the answer, the
    generation prompt included). Prompts run shortest first, so batches carry little padding;
    the answers come back in prompt order. The answer stops at the tokenizer's end-of-sequence,
    the model's own eos ids and the chat template's `end_of_turn` marker (a token when it is one,
    else cut from the text); special tokens are dropped from the text."""
    import contextlib

    import torch

    if max_new_tokens < 1:
        raise ValueError(f"task.max_new_tokens must be at least 1, got {max_new_tokens}")
    autocast = autocast or contextlib.nullcontext
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = _eos_ids(model, tokenizer)
    marker = tokenizer(end_of_turn, add_special_tokens=False)["input_ids"] if end_of_turn else []
    if len(marker) == 1 and marker[0] not in eos:
        eos.append(marker[0])
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers = [""] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                ids, mask = left_padded([prompts[i] for i in idx], pad_id)
                with autocast():
                    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                         max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                         pad_token_id=pad_id, eos_token_id=eos)
                for row, i in enumerate(idx):
                    text = tokenizer.decode(_until_eos(out[row, ids.shape[1]:].tolist(), eos), skip_special_tokens=True)
                    answers[i] = (text.split(end_of_turn)[0] if end_of_turn else text).strip()
    finally:
        model.train(was_training)
    return answers


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """End-of-answer ids: the tokenizer's eos and the model's generation config eos (chat models
    often end a turn with a token other than the tokenizer's eos, e.g. <|eot_id|>, <|im_end|>)."""
    ids: list[int] = []
    config = getattr(model, "generation_config", None)
    for value in (tokenizer.eos_token_id, getattr(config, "eos_token_id", None)):
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if item is not None and int(item) not in ids:
                ids.append(int(item))
    return ids


def _until_eos(tokens: list[int], eos: list[int]) -> list[int]:
    for pos, token in enumerate(tokens):
        if token in eos:
            return tokens[:pos]
    return tokens
