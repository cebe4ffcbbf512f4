"""The training loop: plain PyTorch (no HF Trainer), so its overhead over a bare loop is nil.

Per optimizer step: `grad_accum` micro-batches, clip, optimizer step, scheduler step. The
accumulated gradient is the gradient of the mean loss over every loss unit of the step (label
tokens after the shift for causal LMs, examples for classification), so a step of
`batch_size=2, gradient_accumulation_steps=4` is the step `batch_size=8` takes: each micro-batch
contributes its summed loss divided by the step's total, not its own mean divided by the number
of micro-batches (which overweights micro-batches with few completion tokens).

Data order comes only from a torch.Generator seeded with data_seed; dropout draws from the
global RNG, which the recipe seeded right before creating the adapter.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from trainer.training.checkpoint import Checkpointer, restore_rng_states, rng_states
from trainer.errors import NonFiniteLossError, TrialPreempted
from trainer.reporting import Reporter
from trainer.settings import TrainSettings
from trainer.trace import traced

METRIC_SCHEDULERS = ("reduce_lr_on_plateau", "greedy")  # stepped with eval_loss at each eval, not per step
IGNORE_INDEX = -100
MEGABATCH_MULT = 50  # group_by_length: micro-batches are cut from length-sorted runs of 50 x batch_size
# train.optim -> bitsandbytes.optim class (None: torch.optim.AdamW)
BNB_OPTIMIZERS = {"adamw_torch": None, "adamw_8bit": "AdamW8bit", "paged_adamw_8bit": "PagedAdamW8bit",
                  "paged_adamw_32bit": "PagedAdamW32bit"}


@dataclass
class LoopPlan:
    """Step arithmetic resolved from the train config and the dataset size."""

    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    effective_batch_size: int

    @classmethod
    def build(cls, train: TrainSettings | dict[str, Any], n_train: int) -> LoopPlan:
        train = TrainSettings.of(train)
        micro = math.ceil(n_train / train.batch_size)
        per_epoch = max(math.ceil(micro / train.gradient_accumulation_steps), 1)
        total = train.max_steps if train.max_steps > 0 else per_epoch * train.num_epochs
        warmup = train.warmup_steps or math.ceil(train.warmup_ratio * total)
        return cls(per_epoch, total, warmup, train.batch_size * train.gradient_accumulation_steps)


@dataclass
class LoopOutcome:
    steps: int
    samples: int  # training examples seen (with train.packing, the examples inside the packed rows)
    final_metrics: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    train_s: float = 0.0
    eval_s: float = 0.0
    padding_fraction: float = 0.0  # padded share of the training micro-batches' token slots
    stopped_early_at: int | None = None  # train.early_stopping_patience ended the trial at this step


def autocast_for(device: Any, precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    """Context factory: torch.autocast for fp16/bf16, a no-op for fp32 and pure_bf16 (whose
    weights are already bf16)."""
    import torch

    if precision in ("fp32", "pure_bf16"):
        return contextlib.nullcontext
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def _length_grouped(order: list[int], lengths: Sequence[int], batch_size: int, generator: Any) -> list[list[int]]:
    """Micro-batches of similar length, as HF's LengthGroupedSampler: cut the shuffled order into
    mega-batches of MEGABATCH_MULT x batch_size, sort each by length (longest first), split it,
    then shuffle the micro-batches. The one holding the longest example goes first, so a batch
    size that does not fit in memory fails at the first step rather than mid-trial."""
    import torch

    mega = MEGABATCH_MULT * batch_size
    micro = []
    for i in range(0, len(order), mega):
        chunk = sorted(order[i : i + mega], key=lambda j: -lengths[j])  # stable: ties keep the shuffled order
        micro += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
    micro = [micro[k] for k in torch.randperm(len(micro), generator=generator).tolist()]
    longest = max(range(len(micro)), key=lambda k: max(lengths[j] for j in micro[k]))
    micro[0], micro[longest] = micro[longest], micro[0]
    return micro


def step_groups(n: int, batch_size: int, accum: int, generator: Any,
                lengths: Sequence[int] | None = None) -> Iterator[list[list[int]]]:
    """Endless stream of optimizer steps, each a list of micro-batch index lists; a fresh
    permutation per epoch, the last step of an epoch may have fewer micro-batches. With
    `lengths`, micro-batches are length-grouped (see _length_grouped); the order is a function
    of the generator's seed alone either way."""
    import torch

    while True:
        order = torch.randperm(n, generator=generator).tolist()
        if lengths is None:
            micro = [order[i : i + batch_size] for i in range(0, n, batch_size)]
        else:
            micro = _length_grouped(order, lengths, batch_size, generator)
        for i in range(0, len(micro), accum):
            yield micro[i : i + accum]


def loss_units(batch: dict[str, Any], causal: bool) -> int:
    """What the loss averages over: label tokens a causal LM predicts (labels after the
    next-token shift, -100 excluded), or examples for classification."""
    if causal:
        return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    return len(batch["labels"])


def accepts_loss_kwargs(model: Any) -> bool:
    """Whether the model's forward takes `num_items_in_batch` to its loss (the rule HF Trainer
    uses: an explicit `accepts_loss_kwargs`, else a **kwargs forward); peft wrappers pass it on."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if hasattr(inner, "accepts_loss_kwargs"):
        return bool(inner.accepts_loss_kwargs)
    return any(p.kind == inspect.Parameter.VAR_KEYWORD for p in inspect.signature(inner.forward).parameters.values())


def make_optimizer(train: TrainSettings | dict[str, Any], params: list[Any], model: Any = None,
                   loraplus_lr_ratio: float | None = None) -> Any:
    """train.optim: torch AdamW or a bitsandbytes AdamW (8-bit state and/or paged state), all
    with the configured learning rate and decoupled weight decay. With `loraplus_lr_ratio` (not
    None or 1) the trainable parameters of the peft `model` are grouped by LoRA+ instead
    (loraplus_optimizer); `params` are then those same parameters."""
    import torch

    train = TrainSettings.of(train)
    name = BNB_OPTIMIZERS[train.optim]
    if name is None:
        optimizer_cls = torch.optim.AdamW
    else:
        import bitsandbytes.optim

        optimizer_cls = getattr(bitsandbytes.optim, name)
    if loraplus_lr_ratio is not None and loraplus_lr_ratio != 1:
        return loraplus_optimizer(model, optimizer_cls, train.learning_rate, train.weight_decay, loraplus_lr_ratio)
    return optimizer_cls(params, lr=train.learning_rate, weight_decay=train.weight_decay)


def loraplus_optimizer(model: Any, optimizer_cls: type, lr: float, weight_decay: float, ratio: float) -> Any:
    """LoRA+ (Hayou et al. 2024): every LoRA B matrix learns at `ratio` x `lr`, A at `lr`.

    peft's create_loraplus_optimizer sorts the parameters of the LoRA layers: A; B and the layers'
    1-D parameters (DoRA magnitudes, LoRA biases) at ratio x lr; LoRA on embeddings at
    loraplus_lr_embedding, given `lr` here (peft's 1e-6 default would all but freeze an embedding
    adapter the user asked for). Three things are set apart from peft's choices, so that the
    ratio is the only difference from a plain run:
    - parameters outside the LoRA layers (the classification head and lora.modules_to_save, the
      trainable rows of added tokens, base biases of lora.bias) are not low-rank factors: they
      keep `lr` in a group of their own (peft would put a head's bias at ratio x lr);
    - every group keeps `weight_decay`, as the plain optimizer does (peft exempts 1-D parameters);
    - the optimizer is built through a factory: peft registers 32-bit state for every nn.Embedding
      in bitsandbytes' process-wide manager when the class is one of its 8-bit ones, a registration
      that outlives the trial (it keeps the modules, and its (group, index) keys reach later
      optimizers in a warm worker); the plain 8-bit optimizers register none.
    Empty groups are dropped; the first group (A's) learns at `lr`: the rate the loop logs."""
    from peft.optimizers import create_loraplus_optimizer
    from peft.tuners.lora.layer import LoraLayer

    in_lora_layers = {id(p) for m in model.modules() if isinstance(m, LoraLayer)
                      for attr in m.adapter_layer_names for p in getattr(m, attr).parameters()}
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in in_lora_layers]

    def build(groups: list[dict[str, Any]], **kwargs: Any) -> Any:
        for group in groups:
            group["params"] = [p for p in group["params"] if id(p) in in_lora_layers]
            group["weight_decay"] = weight_decay
        groups.append({"params": others, "lr": lr, "weight_decay": weight_decay})
        return optimizer_cls([g for g in groups if g["params"]], **kwargs)

    return create_loraplus_optimizer(model, build, lr=lr, loraplus_lr_ratio=float(ratio), loraplus_lr_embedding=lr,
                                     loraplus_weight_decay=weight_decay, weight_decay=weight_decay)


def _make_scheduler(train: TrainSettings, optimizer: Any, plan: LoopPlan) -> Any:
    from transformers import get_scheduler

    return get_scheduler(train.lr_scheduler_type, optimizer, num_warmup_steps=plan.warmup_steps,
                         num_training_steps=plan.total_steps, scheduler_specific_kwargs=dict(train.scheduler_kwargs or {}))


@traced("trainer.train")
def train_loop(model: Any, features: list[dict[str, Any]], collate: Callable, evaluate: Callable[[], dict[str, float]],
               train: TrainSettings, plan: LoopPlan, device: Any, data_seed: int, reporter: Reporter,
               causal: bool = False, selection: Any = None, checkpoint: Checkpointer | None = None,
               loraplus_lr_ratio: float | None = None) -> LoopOutcome:
    """Train for plan.total_steps, evaluating every eval_every_steps and at the end; `causal`:
    the loss is over label tokens (causal LM) rather than examples (classification);
    `selection` (trainer.training.selection.EvalSelection) sees every eval and may stop the trial early;
    `loraplus_lr_ratio` (lora.loraplus_lr_ratio): LoRA+ learning rates (make_optimizer), which
    the scheduler and warm-up scale group by group.

    `checkpoint` (trainer.training.checkpoint): continue from its checkpoint when `resume`, write one
    periodically, and when the reporter's optional `should_stop()` says so at a step boundary,
    write one and raise TrialPreempted."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(train, params, model, loraplus_lr_ratio)
    scheduler = _make_scheduler(train, optimizer, plan)
    plateau = train.lr_scheduler_type in METRIC_SCHEDULERS
    autocast = autocast_for(device, train.precision)
    scaler = torch.amp.GradScaler(device.type) if train.precision == "fp16" else None
    generator = torch.Generator().manual_seed(data_seed)
    lengths = [len(f["input_ids"]) for f in features] if train.group_by_length else None
    groups = step_groups(len(features), train.batch_size, train.gradient_accumulation_steps, generator, lengths)
    log_every, eval_every = train.log_every_steps, train.eval_every_steps
    max_norm = train.max_grad_norm or float("inf")
    # causal LMs that take num_items_in_batch sum their token losses and divide by the step's total
    # themselves; other models return a mean, rescaled below to the same quantity
    step_total_kwarg = causal and accepts_loss_kwargs(model)

    if callable(getattr(reporter, "planned", None)):
        reporter.planned(plan.total_steps)
    out = LoopOutcome(steps=0, samples=0, final_metrics={})
    window: list[float] = []
    pad_slots = all_slots = 0
    if checkpoint is not None and checkpoint.resume:
        state = checkpoint.load()
        window, (pad_slots, all_slots) = list(state["window"]), state["slots"]
        _restore(state, model, optimizer, scheduler, scaler, groups, out, selection)
    should_stop = getattr(reporter, "should_stop", None)
    train_before, eval_before, start = out.train_s, out.eval_s, time.perf_counter()

    def trained_s() -> float:
        return train_before + time.perf_counter() - start - (out.eval_s - eval_before)

    def save() -> Any:
        out.train_s = trained_s()
        return checkpoint.save(_loop_state(model, optimizer, scheduler, scaler, out, window, (pad_slots, all_slots),
                                           selection)) if checkpoint is not None else None

    model.train()
    for step in range(out.steps + 1, plan.total_steps + 1):
        if callable(should_stop) and should_stop():
            raise TrialPreempted(out.steps, save())
        group = next(groups)
        micro = [[features[i] for i in idx] for idx in group]
        batches = [collate(rows) for rows in micro]
        units = [loss_units(b, causal) for b in batches]
        total = sum(units)
        step_loss = 0.0
        for rows, batch, n in zip(micro, batches, units):
            slots = batch["input_ids"].numel()
            all_slots += slots
            pad_slots += slots - sum(len(r["input_ids"]) for r in rows)
            out.samples += sum(r.get("num_examples", 1) for r in rows)  # a packed row (trainer.data.packing) holds several
            if n == 0:  # nothing to learn from (every label masked): contributes 0 to the step's loss
                continue
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast():
                if step_total_kwarg:
                    loss = model(**batch, num_items_in_batch=torch.tensor(total, device=device)).loss
                else:
                    loss = model(**batch).loss
                    loss = loss if n == total else loss * (n / total)
            value = loss.item()
            if not math.isfinite(value):
                raise NonFiniteLossError(step, value)
            (scaler.scale(loss) if scaler else loss).backward()
            step_loss += value
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
        if total:
            window.append(step_loss)

        if log_every and step % log_every == 0:
            metrics = {"train_loss": sum(window) / len(window) if window else float("nan"),
                       "learning_rate": optimizer.param_groups[0]["lr"],
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
            if selection is not None and selection.update(model, step, metrics) and step < plan.total_steps:
                out.stopped_early_at = step
                break
        if checkpoint is not None:
            checkpoint.settle(step, trained_s(), plan.total_steps)
            if checkpoint.due(step, plan.total_steps):
                save()
    out.train_s = trained_s()
    out.padding_fraction = pad_slots / all_slots if all_slots else 0.0
    return out


def _loop_state(model: Any, optimizer: Any, scheduler: Any, scaler: Any, out: LoopOutcome, window: list[float],
                slots: tuple[int, int], selection: Any) -> dict[str, Any]:
    """Everything after `out.steps` steps that the rest of the trial depends on (trainer.training.checkpoint)."""
    return {"step": out.steps,
            "trainable": {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad},
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None, "rng": rng_states(),
            "outcome": {"samples": out.samples, "final_metrics": dict(out.final_metrics), "history": list(out.history),
                        "train_s": out.train_s, "eval_s": out.eval_s},
            "window": list(window), "slots": slots, "selection": selection.state() if selection is not None else None}


def _restore(state: dict[str, Any], model: Any, optimizer: Any, scheduler: Any, scaler: Any, groups: Iterator,
             out: LoopOutcome, selection: Any) -> None:
    """Put a trial back where `_loop_state` left it; the RNG states last, as nothing after them may draw."""
    import torch

    weights = state["trainable"]
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.copy_(weights[name].to(param.device))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    for _ in range(state["step"]):  # the data position: the order is replayed from data_seed
        next(groups)
    out.steps = int(state["step"])
    for key, value in state["outcome"].items():
        setattr(out, key, value)
    if selection is not None and state["selection"] is not None:
        selection.load_state(state["selection"])
    restore_rng_states(state["rng"])
