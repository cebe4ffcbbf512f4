"""Batched evaluation of the current model on the eval split (inference mode, no dropout)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from trainer.encoding import IGNORE_INDEX, EncodedData
from trainer.metrics import causal_lm_metrics, classification_metrics, sequence_logprobs

Collate = Callable[[list[dict[str, Any]]], dict[str, Any]]


def _batches(rows: list[Any], size: int) -> Any:
    for i in range(0, len(rows), size):
        yield rows[i : i + size]


def _to(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    return {k: v.to(device) for k, v in batch.items()}


def _eval_classification(model: Any, data: EncodedData, collate: Collate, bs: int, device: Any, autocast: Any) -> dict[str, float]:
    import torch

    preds, labels, loss_sum = [], [], 0.0
    for rows in _batches(data.eval.features, bs):
        batch = _to(collate(rows), device)
        with autocast():
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
        loss_sum += torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="sum").item()
        preds += logits.argmax(-1).tolist()
        labels += batch["labels"].tolist()
    return classification_metrics(preds, labels, loss_sum, data.num_labels)


def _score_candidates(model: Any, data: EncodedData, collate: Collate, bs: int, device: Any, autocast: Any) -> list[int]:
    """Argmax over labels of sum log P(completion tokens | prompt), per eval example."""
    import torch

    cands, preds = data.candidates, []
    for prompts in _batches(data.eval.prompts, max(bs // len(cands), 1)):
        rows = [{"input_ids": p + c, "attention_mask": [1] * (len(p) + len(c)), "labels": [IGNORE_INDEX] * len(p) + c}
                for p in prompts for c in cands]
        batch = _to(collate(rows), device)
        with autocast():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        scores, _ = sequence_logprobs(logits, batch["labels"])
        preds += torch.argmax(scores.view(len(prompts), len(cands)), dim=-1).tolist()
    return preds


def _eval_causal(model: Any, data: EncodedData, collate: Collate, bs: int, device: Any, autocast: Any) -> dict[str, float]:
    nll, n_tokens = 0.0, 0
    for rows in _batches(data.eval.features, bs):
        batch = _to(collate(rows), device)
        with autocast():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logp, count = sequence_logprobs(logits, batch["labels"])
        nll -= logp.sum().item()
        n_tokens += int(count.sum().item())
    preds = _score_candidates(model, data, collate, bs, device, autocast) if data.candidates else None
    return causal_lm_metrics(nll, n_tokens, preds, data.eval.class_labels)


def evaluate(model: Any, data: EncodedData, collate: Collate, task_type: str, batch_size: int, device: Any,
             autocast: Any) -> dict[str, float]:
    """Eval metrics (see trainer.metrics); restores train mode afterwards."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            fn = _eval_classification if task_type == "classification" else _eval_causal
            return fn(model, data, collate, batch_size, device, autocast)
    finally:
        model.train(was_training)
