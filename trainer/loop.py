"""The training loop: plain PyTorch (no HF Trainer), so its overhead over a bare loop is nil.

Per optimizer step: `grad_accum` micro-batches (loss / n, backward), clip, AdamW step,
scheduler step. Data order comes only from a torch.Generator seeded with data_seed; dropout
draws from the global RNG, which the recipe seeded right before creating the adapter.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from trainer.errors import NonFiniteLossError
from trainer.reporting import Reporter

METRIC_SCHEDULERS = ("reduce_lr_on_plateau", "greedy")  # stepped with eval_loss at each eval, not per step


@dataclass
class LoopPlan:
    """Step arithmetic resolved from the train config and the dataset size."""

    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    effective_batch_size: int

    @classmethod
    def build(cls, train: dict[str, Any], n_train: int) -> LoopPlan:
        micro = math.ceil(n_train / train["batch_size"])
        per_epoch = max(math.ceil(micro / train["gradient_accumulation_steps"]), 1)
        total = train["max_steps"] if train.get("max_steps", -1) > 0 else per_epoch * train["num_epochs"]
        warmup = train.get("warmup_steps") or math.ceil(train.get("warmup_ratio", 0.0) * total)
        return cls(per_epoch, total, warmup, train["batch_size"] * train["gradient_accumulation_steps"])


@dataclass
class LoopOutcome:
    steps: int
    samples: int
    final_metrics: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    train_s: float = 0.0
    eval_s: float = 0.0


def autocast_for(device: Any, precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    """Context factory: torch.autocast for fp16/bf16, a no-op for fp32."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def _step_groups(n: int, batch_size: int, accum: int, generator: Any) -> Iterator[list[list[int]]]:
    """Endless stream of optimizer steps, each a list of micro-batch index lists; a fresh
    permutation per epoch, the last step of an epoch may have fewer micro-batches."""
    import torch

    while True:
        order = torch.randperm(n, generator=generator).tolist()
        micro = [order[i : i + batch_size] for i in range(0, n, batch_size)]
        for i in range(0, len(micro), accum):
            yield micro[i : i + accum]


def _make_scheduler(train: dict[str, Any], optimizer: Any, plan: LoopPlan) -> Any:
    from transformers import get_scheduler

    return get_scheduler(train["lr_scheduler_type"], optimizer, num_warmup_steps=plan.warmup_steps,
                         num_training_steps=plan.total_steps,
                         scheduler_specific_kwargs=dict(train.get("scheduler_kwargs") or {}))


def train_loop(model: Any, features: list[dict[str, Any]], collate: Callable, evaluate: Callable[[], dict[str, float]],
               train: dict[str, Any], plan: LoopPlan, device: Any, data_seed: int, reporter: Reporter) -> LoopOutcome:
    """Train for plan.total_steps, evaluating every eval_every_steps and at the end."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=train["learning_rate"], weight_decay=train.get("weight_decay", 0.0))
    scheduler = _make_scheduler(train, optimizer, plan)
    plateau = train["lr_scheduler_type"] in METRIC_SCHEDULERS
    autocast = autocast_for(device, train["precision"])
    scaler = torch.amp.GradScaler(device.type) if train["precision"] == "fp16" else None
    generator = torch.Generator().manual_seed(data_seed)
    groups = _step_groups(len(features), train["batch_size"], train["gradient_accumulation_steps"], generator)
    log_every, eval_every = train.get("log_every_steps", 0), train.get("eval_every_steps", 0)
    max_norm = train.get("max_grad_norm", 0.0) or float("inf")

    out = LoopOutcome(steps=0, samples=0, final_metrics={})
    window: list[float] = []
    model.train()
    start = time.perf_counter()
    for step in range(1, plan.total_steps + 1):
        group = next(groups)
        step_loss = 0.0
        for idx in group:
            batch = {k: v.to(device) for k, v in collate([features[i] for i in idx]).items()}
            with autocast():
                loss = model(**batch).loss
            value = loss.item()
            if not math.isfinite(value):
                raise NonFiniteLossError(step, value)
            loss = loss / len(group)
            (scaler.scale(loss) if scaler else loss).backward()
            step_loss += value / len(group)
            out.samples += len(idx)
        if scaler:
            scaler.unscale_(optimizer)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if not plateau:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        out.steps = step
        window.append(step_loss)

        if log_every and step % log_every == 0:
            metrics = {"train_loss": sum(window) / len(window), "learning_rate": optimizer.param_groups[0]["lr"],
                       "grad_norm": grad_norm, "epoch": step / plan.steps_per_epoch}
            window = []
            out.history.append({"step": step, "event": "train", **metrics})
            reporter.log_metrics(metrics, step)
        if (eval_every and step % eval_every == 0) or step == plan.total_steps:
            t_eval = time.perf_counter()
            metrics = evaluate()
            out.eval_s += time.perf_counter() - t_eval
            out.final_metrics = metrics
            out.history.append({"step": step, "event": "eval", **metrics})
            if plateau:
                scheduler.step(metrics["eval_loss"])
            reporter.report(step, metrics)
    out.train_s = time.perf_counter() - start - out.eval_s
    return out
