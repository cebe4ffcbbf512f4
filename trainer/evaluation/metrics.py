"""Metric formulas, kept apart from the model code so they are easy to check by hand."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def classification_metrics(preds: Sequence[int], labels: Sequence[int], loss_sum: float, num_labels: int) -> dict[str, float]:
    """eval_loss (mean over examples), eval_accuracy, eval_macro_f1 (F1 averaged over all classes;
    a class with no true and no predicted example scores 0, as scikit-learn's zero_division=0).
    Computed here rather than with scikit-learn: importing it costs about a second per process
    (BENCHMARKS.md, table 1), and tests/test_trainer_metrics.py checks these against it."""
    n = max(len(labels), 1)
    f1s = []
    for c in range(num_labels):
        tp = sum(p == c and y == c for p, y in zip(preds, labels))
        predicted, actual = sum(p == c for p in preds), sum(y == c for y in labels)
        f1s.append(2 * tp / (predicted + actual) if predicted + actual else 0.0)
    return {
        "eval_loss": loss_sum / n,
        "eval_accuracy": sum(int(p == y) for p, y in zip(preds, labels)) / n,
        "eval_macro_f1": sum(f1s) / max(num_labels, 1),
    }


def classification_row_scores(preds: Sequence[int], labels: Sequence[int], row_losses: Sequence[float]
                               ) -> dict[str, list[float]]:
    """Per eval row (dataset order) of each metric that is a mean over rows: correct (0/1) and
    cross-entropy. A paired test across trials (the wilcoxon pruner) compares these row by row."""
    return {"eval_accuracy": [float(p == y) for p, y in zip(preds, labels)], "eval_loss": [float(v) for v in row_losses]}


def causal_lm_metrics(nll_sum: float, n_tokens: int, preds: Sequence[int] | None, labels: Sequence[int] | None) -> dict[str, float]:
    """eval_loss = mean NLL per completion token, eval_perplexity = exp(eval_loss), and
    eval_accuracy of the verbaliser argmax when the data has labels."""
    loss = nll_sum / max(n_tokens, 1)
    out = {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 700.0))}
    if preds is not None and labels is not None:
        out["eval_accuracy"] = sum(int(p == y) for p, y in zip(preds, labels)) / max(len(labels), 1)
    return out


def causal_lm_row_scores(row_nll: Sequence[float], row_tokens: Sequence[int], preds: Sequence[int] | None,
                         labels: Sequence[int] | None) -> dict[str, list[float]]:
    """Per eval row: its mean loss per completion token (eval_loss weights rows by their tokens;
    the row scores weight them equally) and the verbaliser's correctness when there are labels."""
    out = {"eval_loss": [nll / max(n, 1) for nll, n in zip(row_nll, row_tokens)]}
    if preds is not None and labels is not None:
        out["eval_accuracy"] = [float(p == y) for p, y in zip(preds, labels)]
    return out


def sequence_logprobs(logits: Any, labels: Any) -> tuple[Any, Any]:
    """Per sequence: summed log-probability of the label tokens (next-token shift; -100 ignored)
    and how many tokens were scored."""
    import torch

    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    mask = labels != -100
    logp = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logp * mask).sum(-1), mask.sum(-1)
