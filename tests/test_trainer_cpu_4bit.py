"""4-bit trials on CPUs with AVX512-BF16 (Sapphire Rapids, Zen 4): bitsandbytes 0.50 repacks a
Linear4bit's weight for its bf16 CPU kernel on the first eval-mode forward and never packs it back,
after which the next training step fails. A trial evaluates between training steps, so the model
must keep its training layout on every CPU. The CPU feature is reported as present here, so the
test means the same on machines without it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import compose_cfg

from trainer import WarmCache, run_trial

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_4bit_trial_trains_on_after_each_eval_on_an_avx512_bf16_cpu(tiny_bert_dir: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import bitsandbytes.nn.modules as bnb_modules

    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)  # read by every Linear4bit it builds
    cache = WarmCache()
    cfg = compose_cfg([f"model.name_or_path={tiny_bert_dir}", "quant=4bit", "data.demo_train_size=48",
                       "data.demo_eval_size=24", "train.batch_size=8", "train.max_seq_length=32", "train.max_steps=6",
                       "train.eval_every_steps=2", "train.log_every_steps=1"])
    first = run_trial(cfg, cache=cache, output_dir=tmp_path / "first")
    second = run_trial(cfg, cache=cache, output_dir=tmp_path / "second")  # on the warm base the first one evaluated

    evals = [row for row in first.history if "eval_accuracy" in row]
    losses = [row["train_loss"] for row in first.history if "train_loss" in row]
    assert [row["step"] for row in evals] == [2, 4, 6]
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    assert second.metrics == first.metrics and second.history == first.history
