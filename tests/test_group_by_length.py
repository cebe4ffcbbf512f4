"""train.group_by_length: micro-batches of similar length cut padding, the order still comes
from data_seed alone, and every example is seen once per epoch."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from conftest import compose_cfg

from trainer import run_trial
from trainer.training.loop import step_groups

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def lengths_of(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(3, 60) for _ in range(n)]


def epoch(n: int, batch_size: int, seed: int, lengths: list[int] | None) -> list[list[int]]:
    import torch

    groups = step_groups(n, batch_size, 1, torch.Generator().manual_seed(seed), lengths)
    return [next(groups)[0] for _ in range(-(-n // batch_size))]


def padding(micro: list[list[int]], lengths: list[int]) -> float:
    slots = sum(max(lengths[i] for i in mb) * len(mb) for mb in micro)
    return 1 - sum(lengths[i] for mb in micro for i in mb) / slots


def test_grouped_epoch_sees_every_example_once_with_less_padding() -> None:
    n, lengths = 1003, lengths_of(1003)
    grouped, plain = epoch(n, 8, 0, lengths), epoch(n, 8, 0, None)
    assert sorted(i for mb in grouped for i in mb) == list(range(n))
    assert sum(len(mb) != 8 for mb in grouped) == 1  # 1003 = 125 x 8 + 3: one short micro-batch
    assert padding(grouped, lengths) < 0.1 < 0.4 < padding(plain, lengths)
    assert max(lengths[i] for i in grouped[0]) == max(lengths)  # an OOM shows at the first step


def test_grouped_order_is_a_function_of_data_seed() -> None:
    lengths = lengths_of(400)
    assert epoch(400, 4, 3, lengths) == epoch(400, 4, 3, lengths)
    assert epoch(400, 4, 3, lengths) != epoch(400, 4, 4, lengths)
    # micro-batches are shuffled, not served longest to shortest
    first = [max(lengths[i] for i in mb) for mb in epoch(400, 4, 3, lengths)]
    assert first[1:] != sorted(first[1:], reverse=True)


def test_trial_with_group_by_length_reports_less_padding(tiny_llama_dir: Path) -> None:
    base = [f"model.name_or_path={tiny_llama_dir}", "task=causal_lm", "task.metric=perplexity", "data.demo_train_size=64",
            "data.demo_eval_size=8", "train.batch_size=4", "train.max_seq_length=48", "train.max_steps=8",
            "train.eval_every_steps=0", "train.log_every_steps=2", "quant=none", "data_seed=5"]
    plain = run_trial(compose_cfg(base))
    grouped = run_trial(compose_cfg([*base, "train.group_by_length=true"]))
    again = run_trial(compose_cfg([*base, "train.group_by_length=true"]))
    assert grouped.resolved["train_padding_fraction"] < plain.resolved["train_padding_fraction"] / 2
    assert grouped.history == again.history and grouped.resolved["group_by_length"] is True
    assert grouped.history != plain.history
