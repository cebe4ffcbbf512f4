"""A trial stopped at a step boundary (SIGTERM) or killed after a periodic checkpoint continues
from its checkpoint to exactly the result of an uninterrupted run: metrics, eval history and
adapter weights, bit for bit on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import compose_cfg
from test_trainer_determinism import assert_identical

from trainer import ConfigError, RecordingReporter, WarmCache, run_trial
from trainer.training.checkpoint import checkpoint_step, has_checkpoint
from trainer.errors import TrialPreempted

pytestmark = pytest.mark.usefixtures("torch_single_thread")

# dropout, grad accumulation, warmup + linear decay, 2 epochs (the data order crosses an epoch
# boundary after the checkpoint), best-eval selection: every piece of state the loop carries
CLASSIFY = ["data.demo_train_size=40", "data.demo_eval_size=16", "train.batch_size=4", "train.max_seq_length=32",
            "train.gradient_accumulation_steps=2", "train.num_epochs=2", "train.eval_every_steps=2",
            "train.log_every_steps=1", "train.warmup_ratio=0.2", "lora.lora_dropout=0.1", "seed=3", "data_seed=4"]
SFT = ["task=sft", "data=demo_chat", "quant=none", "data.demo_train_size=16", "data.demo_eval_size=4",
       "train.max_steps=6", "train.eval_every_steps=2", "train.batch_size=4", "train.max_seq_length=128",
       "task.max_new_tokens=2", "lora.lora_dropout=0.1", "train.group_by_length=true", "train.log_every_steps=1"]


class StopAfter(RecordingReporter):
    """Asks the trial to stop once it has logged step `n` (what the worker does on SIGTERM)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.seen = n, 0

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        super().log_metrics(metrics, step)
        self.seen = max(self.seen, step)

    def should_stop(self) -> bool:
        return self.seen >= self.n


class Killed(Exception):
    pass


class KillAt(RecordingReporter):
    """Dies at the eval of step `n` without warning (kill -9 stands in: no checkpoint on request)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def report(self, step: int, metrics: dict[str, float]) -> None:
        if step >= self.n:
            raise Killed
        super().report(step, metrics)


def _interrupted_then_resumed(cfg, tmp_path: Path, stop_at: int):
    ckpt = tmp_path / "ckpt"
    with pytest.raises(TrialPreempted) as stopped:
        run_trial(cfg, StopAfter(stop_at), cache=WarmCache(), output_dir=tmp_path / "first", checkpoint_dir=ckpt)
    assert stopped.value.step == stop_at and checkpoint_step(ckpt) == stop_at
    # a new process would start with a cold cache
    resumed = run_trial(cfg, cache=WarmCache(), output_dir=tmp_path / "resumed", checkpoint_dir=ckpt, resume=True)
    assert resumed.resolved["resumed_from_step"] == stop_at
    assert not has_checkpoint(ckpt), "a finished trial leaves no checkpoint behind"
    return resumed


@pytest.mark.parametrize("quant", ["4bit", "none"])
def test_a_stopped_classification_trial_resumes_bitwise(tiny_bert_dir: Path, tmp_path: Path, quant: str) -> None:
    cfg = compose_cfg([f"model.name_or_path={tiny_bert_dir}", f"quant={quant}", *CLASSIFY])
    whole = run_trial(cfg, cache=WarmCache(), output_dir=tmp_path / "whole")
    assert whole.steps == 10 and whole.resolved["resumed_from_step"] is None
    resumed = _interrupted_then_resumed(cfg, tmp_path, stop_at=5)  # mid-epoch, between evals
    assert_identical(whole, resumed)
    assert resumed.resolved["best_step"] == whole.resolved["best_step"]


def test_a_stopped_sft_trial_resumes_bitwise(tiny_chat_llama_dir: Path, tmp_path: Path) -> None:
    cfg = compose_cfg([f"model.name_or_path={tiny_chat_llama_dir}", *SFT])
    whole = run_trial(cfg, cache=WarmCache(), output_dir=tmp_path / "whole")
    resumed = _interrupted_then_resumed(cfg, tmp_path, stop_at=3)
    assert_identical(whole, resumed)
    assert resumed.samples == whole.samples


def test_a_killed_trial_resumes_from_its_last_periodic_checkpoint(tiny_bert_dir: Path, tmp_path: Path) -> None:
    cfg = compose_cfg([f"model.name_or_path={tiny_bert_dir}", "quant=none", *CLASSIFY,
                       "train.checkpoint_every_steps=3"])
    whole = run_trial(cfg, cache=WarmCache(), output_dir=tmp_path / "whole")
    assert whole.resolved["checkpoints_written"] == 3  # after steps 3, 6, 9; never after the last
    ckpt = tmp_path / "ckpt"
    with pytest.raises(Killed):
        run_trial(cfg, KillAt(8), cache=WarmCache(), checkpoint_dir=ckpt)
    assert checkpoint_step(ckpt) == 6
    resumed = run_trial(cfg, cache=WarmCache(), output_dir=tmp_path / "resumed", checkpoint_dir=ckpt, resume=True)
    assert_identical(whole, resumed)


def test_a_checkpoint_is_refused_for_another_config(tiny_bert_dir: Path, tmp_path: Path) -> None:
    base = [f"model.name_or_path={tiny_bert_dir}", "quant=none", *CLASSIFY]
    ckpt = tmp_path / "ckpt"
    with pytest.raises(TrialPreempted):
        run_trial(compose_cfg(base), StopAfter(2), checkpoint_dir=ckpt)
    # how often it checkpoints does not matter; the learning rate does
    resumed = run_trial(compose_cfg([*base, "train.checkpoint_every_steps=4"]), checkpoint_dir=ckpt, resume=True)
    assert resumed.resolved["resumed_from_step"] == 2
    with pytest.raises(TrialPreempted):
        run_trial(compose_cfg(base), StopAfter(2), checkpoint_dir=ckpt)
    with pytest.raises(ValueError, match="written for another config"):
        run_trial(compose_cfg([*base, "train.learning_rate=1e-2"]), checkpoint_dir=ckpt, resume=True)


@pytest.mark.parametrize("value", [-1, "often", 1.5])
def test_checkpoint_every_steps_is_checked(tiny_bert_dir: Path, value) -> None:
    with pytest.raises(ConfigError, match="train.checkpoint_every_steps"):
        run_trial(compose_cfg([f"model.name_or_path={tiny_bert_dir}", *CLASSIFY, f"train.checkpoint_every_steps={value}"]))
