"""A trial is scored by its best evaluation and keeps that evaluation's adapter (objective_at=best),
and train.early_stopping_patience ends a trial that stopped improving."""

from __future__ import annotations

import pytest
import torch

import trainer
from conftest import compose_cfg
from trainer.training.selection import EvalSelection

# A learning rate far too high for the tiny BERT: accuracy and loss swing between evals, so the
# best evaluation is not the last one.
SWINGING = ["quant=none", "data.max_train_samples=64", "data.max_eval_samples=48", "train.max_steps=12",
            "train.eval_every_steps=2", "train.batch_size=8", "train.max_seq_length=32", "train.learning_rate=0.05",
            "train.lr_scheduler_type=constant", "train.warmup_ratio=0.0", "lora.target_modules=attn_mlp"]


def test_selection_keeps_the_best_weights_and_counts_patience():
    layer = torch.nn.Linear(2, 1)
    frozen = torch.nn.Linear(2, 1).requires_grad_(False)
    model = torch.nn.Sequential(layer, frozen)
    sel = EvalSelection("eval_accuracy", "maximize", "best", patience=2)
    values = []
    for step, acc in ((2, 0.6), (4, 0.8), (6, 0.7), (8, 0.75)):
        with torch.no_grad():
            layer.weight.fill_(step)
        values.append(sel.update(model, step, {"eval_accuracy": acc}))
    assert values == [False, False, False, True]  # two evals without beating 0.8
    assert sel.best_step == 4 and sel.best_metrics == {"eval_accuracy": 0.8}
    assert sel.restore(model) and torch.all(layer.weight == 4)
    lowest = EvalSelection("eval_loss", "minimize", "last")
    for step, loss in ((2, 1.0), (4, float("nan")), (6, 0.5)):
        lowest.update(model, step, {"eval_loss": loss})
    assert lowest.best_step == 6 and not lowest.restore(model)  # `last` keeps the final weights


def _evaluate_saved(cfg, adapter_dir) -> dict[str, float]:
    """The eval metrics of a saved adapter on a freshly loaded base: what export and chat see."""
    from peft import PeftModel

    from trainer.config import get
    from trainer.data.splits import load_raw
    from trainer.data.encoding import encode, make_collator
    from trainer.evaluation.scoring import evaluate
    from trainer.training.loop import autocast_for
    from trainer.models.loading import load_base_model, load_tokenizer

    tok = load_tokenizer(get(cfg, "model"))
    data = encode(load_raw(get(cfg, "data"), "classification"), tok, get(cfg, "data"), get(cfg, "task"),
                  get(cfg, "train.max_seq_length"))
    base = load_base_model(get(cfg, "model"), get(cfg, "quant"), "classification", data.num_labels, tok.pad_token_id,
                           torch.device("cpu"), False)
    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    return evaluate(model, data, make_collator(tok, "classification"), "classification", 8, torch.device("cpu"),
                    autocast_for(torch.device("cpu"), "fp32"))


@pytest.mark.slow
def test_best_evaluation_is_scored_and_its_adapter_kept(tmp_path, tiny_bert_dir, torch_single_thread):
    cfg = compose_cfg([f"model.name_or_path={tiny_bert_dir}", *SWINGING])
    result = trainer.run_trial(cfg, output_dir=tmp_path, objective=("eval_loss", "minimize"), objective_at="best")
    evals = [h for h in result.history if h["event"] == "eval"]
    best = min(evals, key=lambda h: h["eval_loss"])
    assert best["step"] != evals[-1]["step"], "the swinging run should peak before its end"
    assert result.resolved["best_step"] == best["step"] and result.metrics["eval_loss"] == best["eval_loss"]
    saved = _evaluate_saved(cfg, tmp_path / "adapter")
    assert saved["eval_loss"] == pytest.approx(best["eval_loss"], rel=1e-6)
    assert saved["eval_accuracy"] == best["eval_accuracy"]

    last = trainer.run_trial(cfg, output_dir=tmp_path / "last", objective=("eval_loss", "minimize"), objective_at="last")
    assert last.metrics["eval_loss"] == evals[-1]["eval_loss"]  # same seeds, same run: only the choice differs

    patient = compose_cfg([f"model.name_or_path={tiny_bert_dir}", *SWINGING, "train.early_stopping_patience=1"])
    stopped = trainer.run_trial(patient, objective=("eval_loss", "minimize"), objective_at="best")
    first_worse = next(h["step"] for i, h in enumerate(evals[1:], 1)
                       if h["eval_loss"] >= min(e["eval_loss"] for e in evals[:i]))
    assert stopped.resolved["stopped_early_at"] == first_worse and stopped.steps == first_worse
