"""Batched evaluation of the current model on the eval split (inference mode, no dropout).

Examples are batched shortest first: batches are padded to their longest member, and on
sentence-level sets (SST-2: mean 22 tokens, max 52) padding in dataset order is most of the
compute. The metrics do not depend on the order (predictions stay paired with their rows).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from trainer.data.encoding import IGNORE_INDEX, EncodedData
from trainer.evaluation.metrics import (causal_lm_metrics, causal_lm_row_scores, classification_metrics,
                             classification_row_scores, sequence_logprobs)
from trainer.trace import traced

Collate = Callable[[list[dict[str, Any]]], dict[str, Any]]
RowScores = dict[str, list[float]]  # metric name -> its score on each eval row, dataset order


def _batches(rows: list[Any], size: int) -> Any:
    for i in range(0, len(rows), size):
        yield rows[i : i + size]


def _shortest_first(sequences: list[list[int]]) -> list[int]:
    """Indices of `sequences` by length, ties in dataset order (a stable, deterministic order)."""
    return sorted(range(len(sequences)), key=lambda i: len(sequences[i]))


def _to(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    return {k: v.to(device) for k, v in batch.items()}


def classify(model: Any, data: EncodedData, collate: Collate, bs: int, device: Any, autocast: Any
             ) -> tuple[list[int], list[list[float]], list[float]]:
    """Predicted class, class probabilities and cross-entropy against the label, per eval row
    (dataset order). The same batches whoever asks (the trial's eval, `sweeps.chat`), so the
    same numbers."""
    import torch

    features = data.eval.features
    preds: list[int] = [0] * len(features)
    probs: list[list[float]] = [[] for _ in features]
    losses: list[float] = [0.0] * len(features)
    for idx in _batches(_shortest_first([f["input_ids"] for f in features]), bs):
        batch = _to(collate([features[i] for i in idx]), device)
        with autocast():
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
        row_loss = torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="none").tolist()
        for i, row, loss in zip(idx, logits, row_loss):
            preds[i], probs[i], losses[i] = int(row.argmax()), torch.softmax(row, -1).tolist(), loss
    return preds, probs, losses


def _eval_classification(model: Any, data: EncodedData, collate: Collate, bs: int, device: Any, autocast: Any
                         ) -> tuple[dict[str, float], RowScores]:
    preds, _, losses = classify(model, data, collate, bs, device, autocast)
    labels = [int(f["labels"]) for f in data.eval.features]
    return (classification_metrics(preds, labels, sum(losses), data.num_labels),
            classification_row_scores(preds, labels, losses))


LABEL_SCORINGS = ("mean", "sum")


def candidate_scores(model: Any, data: EncodedData, collate: Collate, bs: int, device: Any, autocast: Any,
                     scoring: str = "mean") -> Any:
    """(eval rows × labels) scores of each label's completion given the row's prompt: the mean
    log-probability per completion token (`mean`), or their sum (`sum`). A sum favours the
    shorter verbaliser whatever the model prefers (every extra token only lowers it); the mean
    compares labels of different token lengths on equal terms."""
    import torch

    if scoring not in LABEL_SCORINGS:
        raise ValueError(f"task.label_scoring: {scoring!r}; allowed: {', '.join(LABEL_SCORINGS)}")
    cands, order = data.candidates, _shortest_first(data.eval.prompts)
    scores = torch.zeros(len(order), len(cands))
    for idx in _batches(order, max(bs // len(cands), 1)):
        prompts = [data.eval.prompts[i] for i in idx]
        rows = [{"input_ids": p + c, "attention_mask": [1] * (len(p) + len(c)), "labels": [IGNORE_INDEX] * len(p) + c}
                for p in prompts for c in cands]
        batch = _to(collate(rows), device)
        with autocast():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logp, count = sequence_logprobs(logits, batch["labels"])
        row = logp / count.clamp(min=1) if scoring == "mean" else logp
        scores[idx] = row.view(len(prompts), len(cands)).float().cpu()
    return scores


def _eval_causal(model: Any, data: EncodedData, collate: Collate, bs: int, device: Any, autocast: Any,
                 scoring: str = "mean") -> tuple[dict[str, float], RowScores]:
    features = data.eval.features
    row_nll, row_tokens = [0.0] * len(features), [0] * len(features)
    for idx in _batches(_shortest_first([f["input_ids"] for f in features]), bs):
        batch = _to(collate([features[i] for i in idx]), device)
        with autocast():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logp, count = sequence_logprobs(logits, batch["labels"])
        for i, lp, n in zip(idx, logp.tolist(), count.tolist()):
            row_nll[i], row_tokens[i] = -lp, int(n)
    preds = None
    if data.candidates:
        preds = candidate_scores(model, data, collate, bs, device, autocast, scoring).argmax(-1).tolist()
    return (causal_lm_metrics(sum(row_nll), sum(row_tokens), preds, data.eval.class_labels),
            causal_lm_row_scores(row_nll, row_tokens, preds, data.eval.class_labels))


@traced("trainer.eval")
def evaluate_rows(model: Any, data: EncodedData, collate: Collate, task_type: str, batch_size: int, device: Any,
                  autocast: Any, label_scoring: str = "mean") -> tuple[dict[str, float], RowScores]:
    """Eval metrics (see trainer.evaluation.metrics) and, for each metric that is a mean over the eval
    rows, its score on every row; restores train mode afterwards."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            if task_type == "classification":
                return _eval_classification(model, data, collate, batch_size, device, autocast)
            return _eval_causal(model, data, collate, batch_size, device, autocast, label_scoring)
    finally:
        model.train(was_training)


@traced("trainer.eval")
def evaluate(model: Any, data: EncodedData, collate: Collate, task_type: str, batch_size: int, device: Any,
             autocast: Any, label_scoring: str = "mean") -> dict[str, float]:
    """Eval metrics (see trainer.evaluation.metrics); restores train mode afterwards."""
    return evaluate_rows(model, data, collate, task_type, batch_size, device, autocast, label_scoring)[0]


def answer_eval(model: Any, data: EncodedData, tokenizer: Any, max_new_tokens: int, batch_size: int, device: Any,
                autocast: Any, n_samples: int = 0) -> tuple[dict[str, float], list[dict[str, str]], RowScores]:
    """Greedy answers to every eval conversation (its history up to the last assistant turn):
    eval_exact_match and eval_token_f1 against that turn (both score the answer after any
    reasoning block), eval_answers_capped (how many answers ran into max_new_tokens without
    ending their turn: cut short, and a sign max_new_tokens is too low), the first `n_samples`
    rows for the sample-generations table, and both metrics per row."""
    from trainer.data.chat_templates import end_of_turn
    from trainer.evaluation.generation import answer_metrics, answer_row_scores, generate_replies

    prompts, references = data.eval.prompts or [], data.eval.references or []
    replies = generate_replies(model, tokenizer, prompts, max_new_tokens, batch_size, device, autocast,
                               end_of_turn(tokenizer))
    answers = [r.text for r in replies]
    samples = [sample_row(tokenizer.decode(p, skip_special_tokens=False), ref, reply.text)
               for p, ref, reply in list(zip(prompts, references, replies))[:n_samples]]
    metrics = {**answer_metrics(answers, references), "eval_answers_capped": float(sum(r.capped for r in replies))}
    return metrics, samples, answer_row_scores(answers, references)


def sample_row(prompt: str, reference: str, reply: str) -> dict[str, str]:
    """One row of the sample-generations table: the prompt as the model saw it, the reference
    answer and the reply's reasoning and answer, each as scored (reasoning blocks split off)."""
    from trainer.evaluation.generation import split_reasoning

    ref_reasoning, ref_answer = split_reasoning(reference)
    reasoning, answer = split_reasoning(reply)
    return {"prompt": prompt, "reference_reasoning": ref_reasoning, "reference": ref_answer,
            "reasoning": reasoning, "answer": answer}


def answer_prompts(data: EncodedData) -> tuple[list[list[int]], list[list[int]]]:
    """Per eval row of a causal LM: the prompt (every token before the last answer span, so a
    multi-turn conversation keeps its history) and the reference answer tokens (that span)."""
    prompts, answers = [], []
    for f in data.eval.features:
        labels = list(f["labels"])
        end = max((i for i, t in enumerate(labels) if t != IGNORE_INDEX), default=-1) + 1
        start = end
        while start > 0 and labels[start - 1] != IGNORE_INDEX:
            start -= 1
        prompts.append(list(f["input_ids"][:start]))
        answers.append(labels[start:end])
    return prompts, answers


def predictions(model: Any, data: EncodedData, collate: Collate, task_type: str, batch_size: int, device: Any,
                autocast: Any, tokenizer: Any, max_new_tokens: int, label_scoring: str = "mean") -> list[dict[str, Any]]:
    """One record per eval row, in dataset order: label and probabilities (classification), the
    chosen label (causal LM with labels), or the greedy answer with its reference (causal LM)."""
    import torch

    names = data.label_names or [str(i) for i in range(data.num_labels or 0)]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            if task_type == "classification":
                preds, probs, _ = classify(model, data, collate, batch_size, device, autocast)
                return [{"label": names[p], "probabilities": dict(zip(names, pr)),
                         "reference": names[int(f["labels"])]} for p, pr, f in zip(preds, probs, data.eval.features)]
            if data.candidates:
                scores = candidate_scores(model, data, collate, batch_size, device, autocast, label_scoring)
                refs = data.eval.class_labels or []
                return [{"label": names[int(s.argmax())], "scores": dict(zip(names, s.tolist())),
                         **({"reference": names[refs[i]]} if i < len(refs) else {})} for i, s in enumerate(scores)]
    finally:
        model.train(was_training)
    from trainer.evaluation.generation import generate_answers

    if data.eval.references is not None:  # SFT: the conversations' last answers, as the trial scored them
        _, samples, _ = answer_eval(model, data, tokenizer, max_new_tokens, batch_size, device, autocast,
                                    len(data.eval.features))
        return samples
    prompts, refs = answer_prompts(data)
    eos = {tokenizer.eos_token_id}
    answers = generate_answers(model, tokenizer, prompts, max_new_tokens, batch_size, device, autocast)
    return [{"prompt": tokenizer.decode(p, skip_special_tokens=True), "answer": a,
             "reference": tokenizer.decode([t for t in r if t not in eos], skip_special_tokens=True).strip()}
            for p, a, r in zip(prompts, answers, refs)]
