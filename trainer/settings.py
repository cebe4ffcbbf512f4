"""Typed, checked settings of the lora, quant and train config groups.

Built once from the composed job config (validate_config returns them), so trainer code reads
`train.learning_rate` rather than a string key, and every value it reads has passed the check
that names the dotted key, the value and what is allowed (ConfigError). Keys these groups do
not know are ignored, as they always were.
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple, TypeVar

from omegaconf import DictConfig

from trainer.config import get
from trainer.errors import ConfigError
from trainer.models.targets import TARGET_PRESETS

AUTO = "auto"  # an LLM default, resolved once per sweep (trainer.llm_defaults)
QUANT_MODES = ("none", "4bit", "8bit")
QUANT_TYPES = ("nf4", "fp4")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16", "auto")
LORA_BIAS = ("none", "all", "lora_only")
# schedulers that cannot run without one of these train.scheduler_kwargs
SCHEDULER_NEEDS: dict[str, tuple[str, ...]] = {
    "cosine_with_min_lr": ("min_lr", "min_lr_rate"),
    "cosine_warmup_with_min_lr": ("min_lr", "min_lr_rate"),
    "warmup_stable_decay": ("num_decay_steps",),
}
# init_lora_weights values that need nothing beyond the model and lora.* (eva/corda need extra configs)
LORA_INITS = ("true", "false", "gaussian", "orthogonal", "pissa", "pissa_niter_<n>", "olora", "loftq")
LOFTQ_BITS = (4, 8)  # what peft's loftq_init quantises to
ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "eager", "flash_attention_2")  # model.attn_implementation; auto: transformers'
PACKABLE_TASKS = ("sft", "causal_lm")  # train.packing: tasks with a token loss (trainer.data.packing)


def is_int(v: Any) -> bool:
    """An int that is not a bool (YAML `true` must not pass as 1)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    """An int or float that is not a bool."""
    return isinstance(v, int | float) and not isinstance(v, bool)


def require(ok: bool, key: str, value: Any, allowed: str, detail: str | None = None) -> None:
    """ConfigError naming `key`, `value` and what is allowed, unless `ok`."""
    if not ok:
        raise ConfigError(key, value, allowed, detail)


def one_of(key: str, value: Any, allowed: Sequence[str]) -> Any:
    """`value`, checked to be one of `allowed`."""
    require(value in allowed, key, value, f"one of {', '.join(allowed)}")
    return value


def int_at_least(key: str, value: Any, low: int, optional: bool = False) -> Any:
    """`value`, checked to be an integer >= `low` (or None when `optional`)."""
    if not (optional and value is None):
        require(is_int(value) and value >= low, key, value, f"an integer >= {low}" + (" or null" if optional else ""))
    return value


def _reader(cfg: DictConfig, group: str) -> Callable[..., Any]:
    """get() under one config group: `at("r")` reads lora.r."""
    return lambda key, default=None: get(cfg, f"{group}.{key}", default)


_S = TypeVar("_S")


class _FromMapping:
    """`of`: accept the settings or a plain dict of the group (what older callers and tests pass)."""

    @classmethod
    def of(cls: type[_S], group: _S | Mapping[str, Any]) -> _S:
        """The settings as given, or built unchecked from a mapping; absent keys take the defaults."""
        if isinstance(group, cls):
            return group
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in group.items() if k in names})


# Field defaults: what trainer code assumed for a key absent from a config, else the value in
# conf/<group>/default.yaml. from_config reads keys the checks require without a default, so a
# missing one is still an error there.


@dataclass(frozen=True)
class LoraSettings(_FromMapping):
    """The lora group: the adapter's rank, scale, dropout, targets and initialisation."""

    r: int = 8
    lora_alpha: float = 16
    alpha_ratio: float | None = None
    scaling: str = "standard"
    lora_dropout: float = 0.05
    target_modules: str | list[str] = "qv"
    bias: str = "none"
    use_rslora: bool = False
    use_dora: bool = False
    init_lora_weights: bool | str = True
    loftq_bits: int = 4
    loftq_iter: int = 1
    modules_to_save: list[str] | None = None
    loraplus_lr_ratio: float | None = None  # LoRA+: B's learning rate / A's; None (or 1): one rate for both

    @property
    def alpha(self) -> float:
        """alpha_ratio * r when alpha_ratio is set, else lora_alpha."""
        return float(self.alpha_ratio * self.r) if self.alpha_ratio is not None else float(self.lora_alpha)

    @property
    def rslora(self) -> bool:
        """Rank-stabilised scaling, asked for either way (use_rslora or scaling=rslora)."""
        return bool(self.use_rslora) or self.scaling == "rslora"

    @classmethod
    def from_config(cls, cfg: DictConfig) -> LoraSettings:
        """The lora group of a composed config; ConfigError for the first invalid value."""
        at = _reader(cfg, "lora")
        r = at("r")
        require(is_int(r) and r > 0, "lora.r", r, "an integer > 0")
        ratio = at("alpha_ratio")
        if ratio is not None:
            require(is_num(ratio) and ratio > 0, "lora.alpha_ratio", ratio, "a number > 0 or null")
            alpha = at("lora_alpha", cls.lora_alpha)  # unused: alpha = ratio * r
        else:
            alpha = at("lora_alpha")
            require(is_num(alpha) and alpha > 0, "lora.lora_alpha", alpha, "a number > 0")
        dropout = at("lora_dropout")
        require(is_num(dropout) and 0 <= dropout < 1, "lora.lora_dropout", dropout, "a number in [0, 1)")
        bias = one_of("lora.bias", at("bias"), LORA_BIAS)
        targets = at("target_modules")
        allowed = f"a preset ({', '.join(TARGET_PRESETS)}) or a non-empty list of module names"
        if isinstance(targets, str):
            require(targets in TARGET_PRESETS, "lora.target_modules", targets, allowed)
        else:
            require(isinstance(targets, list) and bool(targets) and all(isinstance(t, str) and t for t in targets),
                    "lora.target_modules", targets, allowed)
        scaling = at("scaling", cls.scaling)
        require(scaling in ("standard", "rslora"), "lora.scaling", scaling,
                "standard (alpha / r) or rslora (alpha / sqrt(r))")
        use_rslora, use_dora = at("use_rslora", False), at("use_dora", False)
        require(isinstance(use_rslora, bool), "lora.use_rslora", use_rslora, "true or false")
        require(isinstance(use_dora, bool), "lora.use_dora", use_dora, "true or false")
        init = at("init_lora_weights", True)
        require(isinstance(init, bool)
                or (isinstance(init, str) and (init in LORA_INITS or re.fullmatch(r"pissa_niter_\d+", init))),
                "lora.init_lora_weights", init, f"one of {', '.join(LORA_INITS)}")
        bits = at("loftq_bits", cls.loftq_bits)
        iters = at("loftq_iter", None if init == "loftq" else cls.loftq_iter)  # loftq needs it set
        if init == "loftq":
            require(is_int(bits) and bits in LOFTQ_BITS, "lora.loftq_bits", bits, "4 or 8")
            int_at_least("lora.loftq_iter", iters, 1)
        saved = at("modules_to_save")
        require(saved is None or (isinstance(saved, list) and all(isinstance(m, str) and m for m in saved)),
                "lora.modules_to_save", saved, "null or a list of module names (e.g. [lm_head] or [embed_tokens])")
        plus = at("loraplus_lr_ratio")  # absent in configs saved before the key: off
        require(plus is None or (is_num(plus) and math.isfinite(plus) and plus > 0), "lora.loraplus_lr_ratio", plus,
                "null (off) or a number > 0: B's learning rate as a multiple of A's (LoRA+, about 16; 1 = off)")
        return cls(r=r, lora_alpha=alpha, alpha_ratio=ratio, scaling=scaling, lora_dropout=dropout,
                   target_modules=targets, bias=bias, use_rslora=use_rslora, use_dora=use_dora,
                   init_lora_weights=init, loftq_bits=bits, loftq_iter=iters, modules_to_save=saved,
                   loraplus_lr_ratio=plus)


@dataclass(frozen=True)
class QuantSettings(_FromMapping):
    """The quant group: how the base weights are stored (bitsandbytes 4/8 bit, or not at all).
    quant_type, double_quant and compute_dtype apply to mode=4bit only and are checked only then."""

    mode: str = "none"
    quant_type: str = "nf4"
    double_quant: bool = False
    compute_dtype: str = "float32"
    prepare_kbit_training: bool = True

    @classmethod
    def from_config(cls, cfg: DictConfig) -> QuantSettings:
        """The quant group of a composed config; ConfigError for the first invalid value."""
        at = _reader(cfg, "quant")
        mode = one_of("quant.mode", at("mode"), QUANT_MODES)
        four_bit = mode == "4bit"  # the 4-bit keys are required (and checked) for 4bit only
        quant_type = at("quant_type", None if four_bit else cls.quant_type)
        compute = at("compute_dtype", None if four_bit else cls.compute_dtype)
        double = at("double_quant", False)
        if four_bit:
            one_of("quant.quant_type", quant_type, QUANT_TYPES)
            one_of("quant.compute_dtype", compute, COMPUTE_DTYPES)
            require(isinstance(double, bool), "quant.double_quant", double, "true or false")
        return cls(mode=mode, quant_type=quant_type, double_quant=double, compute_dtype=compute,
                   prepare_kbit_training=at("prepare_kbit_training", True))


@dataclass(frozen=True)
class TrainSettings(_FromMapping):
    """The train group: optimisation, schedule, batch shape, precision, device and the cadence
    of logging, evaluation and checkpoints. learning_rate, max_seq_length, precision and
    gradient_checkpointing may be `auto` (task=sft's defaults) until trainer.llm_defaults
    resolves them: run_trial and preflight read resolved configs only."""

    learning_rate: float = 3e-3
    lr_scheduler_type: str = "linear"
    scheduler_kwargs: dict[str, Any] | None = field(default_factory=dict)
    warmup_ratio: float = 0.0
    warmup_steps: int = 0  # > 0 wins over warmup_ratio
    num_epochs: int = 2
    max_steps: int = -1  # > 0 overrides num_epochs
    batch_size: int = 16
    gradient_accumulation_steps: int = 1
    group_by_length: bool = False
    packing: bool = False  # several examples per row, kept apart by restarting position ids (trainer.data.packing)
    optim: str = "adamw_torch"
    weight_decay: float = 0.0
    max_grad_norm: float = 0.0  # 0 = no clipping
    max_seq_length: int = 64
    precision: str = "fp32"
    gradient_checkpointing: bool = False
    early_stopping_patience: int | None = None
    checkpoint_every_steps: int | str = "auto"
    eval_every_steps: int = 0
    log_every_steps: int = 0
    device: str = "auto"  # the spec as configured; trainer.devices.resolve_device turns it into a device
    save_adapter: bool = True

    @classmethod
    def from_config(cls, cfg: DictConfig, quant: QuantSettings) -> TrainSettings:
        """The train group of a composed config; ConfigError for the first invalid value.

        Checks precision and optimizer against the device, and (pure_bf16) the 4-bit compute
        dtype of `quant`; needs no CUDA context."""
        from transformers import SchedulerType

        at = _reader(cfg, "train")
        lr = at("learning_rate")
        require(lr == AUTO or (is_num(lr) and lr > 0), "train.learning_rate", lr,
                "a number > 0 or auto (a LoRA rate for the model's hidden size)")
        scheduler = one_of("train.lr_scheduler_type", at("lr_scheduler_type"), [s.value for s in SchedulerType])
        kwargs = at("scheduler_kwargs", {})
        require(kwargs is None or isinstance(kwargs, Mapping), "train.scheduler_kwargs", kwargs, "a mapping")
        needs = SCHEDULER_NEEDS.get(scheduler, ())
        require(not needs or any(k in (kwargs or {}) for k in needs), "train.scheduler_kwargs", kwargs,
                f"a mapping with {' or '.join(needs)} for lr_scheduler_type={scheduler}")
        batch_size = int_at_least("train.batch_size", at("batch_size"), 1)
        accum = int_at_least("train.gradient_accumulation_steps", at("gradient_accumulation_steps"), 1)
        ratio = at("warmup_ratio", 0.0)
        require(is_num(ratio) and 0 <= ratio < 1, "train.warmup_ratio", ratio, "a number in [0, 1)")
        warmup_steps = int_at_least("train.warmup_steps", at("warmup_steps"), 0)
        max_steps = at("max_steps", -1)
        require(is_int(max_steps), "train.max_steps", max_steps, "an integer (> 0 overrides num_epochs)")
        epochs = at("num_epochs", None if max_steps <= 0 else cls.num_epochs)
        if max_steps <= 0:
            require(is_int(epochs) and epochs >= 1, "train.num_epochs", epochs, "an integer >= 1 (or max_steps > 0)")
        weight_decay, max_grad_norm = at("weight_decay", 0.0), at("max_grad_norm", 0.0)
        for key, value in (("train.weight_decay", weight_decay), ("train.max_grad_norm", max_grad_norm)):
            require(is_num(value) and value >= 0, key, value, "a number >= 0 (max_grad_norm 0 = no clipping)")
        max_seq_length = at("max_seq_length")
        require(max_seq_length == AUTO or (is_int(max_seq_length) and max_seq_length >= 8), "train.max_seq_length",
                max_seq_length, "an integer >= 8 or auto (from the chat data's token lengths, task=sft)")
        if max_seq_length == AUTO:
            require(get(cfg, "task.type") == "sft", "train.max_seq_length", max_seq_length,
                    "an integer >= 8 (auto reads the lengths of chat data: task=sft only)")
        eval_every = int_at_least("train.eval_every_steps", at("eval_every_steps"), 0)
        log_every = int_at_least("train.log_every_steps", at("log_every_steps"), 0)
        patience = int_at_least("train.early_stopping_patience", at("early_stopping_patience"), 1, optional=True)
        every = at("checkpoint_every_steps", "auto")
        require(every == "auto" or (is_int(every) and every >= 0), "train.checkpoint_every_steps", every,
                "an integer >= 0 (0: only when the trial is asked to stop) or auto (long trials only)")
        flags = {name: at(name, default) for name, default in
                 (("gradient_checkpointing", False), ("save_adapter", True), ("group_by_length", False),
                  ("packing", False))}
        for name, value in flags.items():
            require(isinstance(value, bool) or (name == "gradient_checkpointing" and value == AUTO), f"train.{name}",
                    value, "true, false or auto (on CUDA)" if name == "gradient_checkpointing" else "true or false")
        task_type = get(cfg, "task.type")
        require(not flags["packing"] or task_type in PACKABLE_TASKS, "train.packing", True,
                f"false for task={task_type}", "packing is for token-loss tasks (sft, causal_lm); a classifier "
                "scores one label per row")
        device_spec = at("device", "auto")
        _checked_attn_implementation(get(cfg, "model.attn_implementation") or "auto", device_spec)  # null: auto
        precision = at("precision")
        if precision != AUTO:
            precision = _checked_precision(precision, device_spec, quant)
        optim = _checked_optim(at("optim", "adamw_torch"), device_spec)  # default: configs saved before the key
        return cls(learning_rate=lr, lr_scheduler_type=scheduler, scheduler_kwargs=kwargs, warmup_ratio=ratio,
                   warmup_steps=warmup_steps, num_epochs=epochs, max_steps=max_steps, batch_size=batch_size,
                   gradient_accumulation_steps=accum, optim=optim, weight_decay=weight_decay,
                   max_grad_norm=max_grad_norm, max_seq_length=max_seq_length, precision=precision,
                   early_stopping_patience=patience, checkpoint_every_steps=every, eval_every_steps=eval_every,
                   log_every_steps=log_every, device=device_spec, **flags)


def _checked_precision(precision: Any, device_spec: Any, quant: QuantSettings) -> str:
    """train.precision: a known one, that the device trains in, and with a bf16 4-bit compute for pure_bf16."""
    from trainer.devices import PRECISIONS, device_name, resolve_device, supported_precisions

    one_of("train.precision", precision, PRECISIONS)
    device = resolve_device(device_spec)
    ok = supported_precisions(device)
    if precision not in ok:
        raise ConfigError("train.precision", precision, f"one of {', '.join(ok)} on device {device} [{device_name(device)}]",
                          "fp16 needs CUDA; bf16 and pure_bf16 need a bf16-capable GPU or a CPU with avx512_bf16/amx_bf16")
    if precision == "pure_bf16" and quant.mode == "4bit" and quant.compute_dtype not in ("bfloat16", "auto"):
        raise ConfigError("quant.compute_dtype", quant.compute_dtype, "bfloat16 or auto with train.precision=pure_bf16",
                          "pure_bf16 computes everything in bf16, the 4-bit matmuls included")
    return precision


def _checked_attn_implementation(attn: Any, device_spec: Any) -> str:
    """model.attn_implementation: a known one; flash_attention_2 only with flash-attn installed and a CUDA device."""
    from trainer.devices import resolve_device

    one_of("model.attn_implementation", attn, ATTN_IMPLEMENTATIONS)
    if attn == "flash_attention_2":
        device = resolve_device(device_spec)
        if device.type != "cuda":
            raise ConfigError("model.attn_implementation", attn, f"auto, sdpa or eager on device {device}",
                              "flash-attention runs on CUDA GPUs only")
        if importlib.util.find_spec("flash_attn") is None:
            raise ConfigError("model.attn_implementation", attn, "auto, sdpa or eager (flash-attn is not installed)",
                              "pip install flash-attn --no-build-isolation, or use sdpa")
    return attn


def _checked_optim(optim: Any, device_spec: Any) -> str:
    """train.optim: a known one, that the device offers, with bitsandbytes installed when it is one of its."""
    from trainer.devices import OPTIMIZERS, device_name, resolve_device, supported_optimizers

    require(optim in OPTIMIZERS, "train.optim", optim, f"one of {', '.join(OPTIMIZERS)}")
    device = resolve_device(device_spec)
    ok = supported_optimizers(device)
    if optim not in ok:  # the device's name only in the error: asking for it costs a CUDA probe
        raise ConfigError("train.optim", optim, f"one of {', '.join(ok)} on device {device} [{device_name(device)}]",
                          "paged optimizers page GPU optimizer state to host memory and need CUDA")
    if optim != "adamw_torch" and importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("train.optim", optim, "adamw_torch (bitsandbytes is not installed)")
    return optim


class Settings(NamedTuple):
    """The checked lora, quant and train settings of one job config (what validate_config returns)."""

    lora: LoraSettings
    quant: QuantSettings
    train: TrainSettings
