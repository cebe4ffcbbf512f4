"""Our classification metrics agree with scikit-learn's (accuracy, macro F1 with zero_division=0)."""

from __future__ import annotations

import random

import pytest
from sklearn.metrics import accuracy_score, f1_score

from trainer.evaluation.metrics import classification_metrics


@pytest.mark.parametrize("num_labels", [2, 3, 5])
def test_accuracy_and_macro_f1_match_scikit_learn(num_labels):
    rng = random.Random(num_labels)
    for _ in range(50):
        n = rng.randint(1, 40)
        labels = [rng.randrange(num_labels) for _ in range(n)]
        preds = [rng.randrange(num_labels) if rng.random() < 0.6 else y for y in labels]
        ours = classification_metrics(preds, labels, loss_sum=2.0 * n, num_labels=num_labels)
        assert ours["eval_loss"] == pytest.approx(2.0)
        assert ours["eval_accuracy"] == pytest.approx(accuracy_score(labels, preds))
        assert ours["eval_macro_f1"] == pytest.approx(
            f1_score(labels, preds, average="macro", labels=list(range(num_labels)), zero_division=0))


def test_a_class_never_seen_nor_predicted_scores_zero():
    out = classification_metrics([0, 1, 1], [0, 1, 0], loss_sum=0.0, num_labels=3)
    assert out["eval_macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0.0) / 3)
