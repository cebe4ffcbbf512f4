"""Base model lifecycle: load (optionally quantized), re-initialise the head, add LoRA, and
take LoRA off again so a cached base can serve the next trial unchanged."""

from __future__ import annotations

import logging
import warnings
from dataclasses import replace
from typing import Any

from trainer.errors import ConfigError
from trainer.settings import LoraSettings, QuantSettings
from trainer.models.targets import CLASSIFIER_HEADS, LM_HEADS
from trainer.trace import traced


def head_names(task_type: str) -> tuple[str, ...]:
    """Top-level module names of the task head: kept out of quantization and LoRA."""
    return CLASSIFIER_HEADS if task_type == "classification" else LM_HEADS


@traced("trainer.tokenize")
def load_tokenizer(model: dict[str, Any], task: dict[str, Any] | None = None) -> Any:
    """Tokenizer with a pad token (eos when it has none) and right padding (causal-LM training);
    for task=sft, with the chat template the task renders conversations with, and that named
    template's markers added as special tokens when the tokenizer lacks them
    (trainer.models.special_tokens: every trial, chat and export load it here, so all see one vocabulary)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(
        model["name_or_path"], revision=model.get("revision"), trust_remote_code=bool(model.get("trust_remote_code"))
    )
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ConfigError("model.name_or_path", model["name_or_path"], "a model whose tokenizer has a pad or eos token")
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    if task is not None and task.get("type") == "sft":
        from trainer.data.chat_templates import use_chat_template

        from trainer.models.special_tokens import add_template_tokens

        use_chat_template(tok, task.get("chat_template"))
        add_template_tokens(tok, task.get("chat_template"))
    return tok


def quantization_config(quant: QuantSettings, task_type: str) -> Any:
    """bitsandbytes config for quant.mode, or None; the head is never quantized."""
    import torch
    from transformers import BitsAndBytesConfig

    skip = list(head_names(task_type))
    if quant.mode == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quant.quant_type,
            bnb_4bit_use_double_quant=bool(quant.double_quant),
            bnb_4bit_compute_dtype=getattr(torch, quant.compute_dtype),
            llm_int8_skip_modules=skip,
        )
    if quant.mode == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return None


@traced("trainer.model_load")
def load_base_model(model: dict[str, Any], quant: QuantSettings | dict[str, Any], task_type: str, num_labels: int | None,
                    pad_token_id: int | None, device: Any, gradient_checkpointing: bool, precision: str = "fp32",
                    tokenizer: Any = None) -> Any:
    """From_pretrained (+ prepare_model_for_kbit_training when quantized), frozen, on `device`.

    With `tokenizer`: embeddings grown to its size, tokens a named chat template added starting
    as the mean row, and (task=sft) its end-of-turn an eos of the generation config
    (trainer.models.special_tokens.fit_embeddings).

    Done once per cache key: kbit preparation casts non-quantized weights to fp32 and enables
    gradient checkpointing, mutations that are identical for every trial on this base.
    precision=pure_bf16 keeps every non-quantized weight in bf16 instead (no fp32 copy at all).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from trainer.devices import resolve_compute_dtype

    quant = QuantSettings.of(quant)
    quant = replace(quant, compute_dtype=resolve_compute_dtype(quant.compute_dtype, device))
    weights = torch.bfloat16 if precision == "pure_bf16" else torch.float32

    kwargs: dict[str, Any] = {
        "revision": model.get("revision"),
        "trust_remote_code": bool(model.get("trust_remote_code")),
    }
    if model.get("attn_implementation", "auto") not in (None, "auto"):  # auto: transformers picks (sdpa where it can)
        kwargs["attn_implementation"] = model["attn_implementation"]
    qconfig = quantization_config(quant, task_type)
    if quant.mode == "8bit":  # bnb casts fp32/bf16 activations to fp16 for int8 matmuls and says so on every call
        warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast", category=UserWarning)
        logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)  # bitsandbytes >= 0.45 logs it
    if qconfig is not None:
        kwargs.update(quantization_config=qconfig, device_map={"": str(device)},
                      dtype=getattr(torch, quant.compute_dtype) if quant.mode == "4bit" else weights)
    else:
        kwargs["dtype"] = weights
    if task_type == "classification":
        base = AutoModelForSequenceClassification.from_pretrained(model["name_or_path"], num_labels=num_labels, **kwargs)
        if base.config.pad_token_id is None:
            base.config.pad_token_id = pad_token_id  # decoder classifiers pool at the last non-pad token
    else:
        base = AutoModelForCausalLM.from_pretrained(model["name_or_path"], **kwargs)
    if tokenizer is not None:
        from trainer.models.special_tokens import fit_embeddings

        fit_embeddings(base, tokenizer, end_of_turn=task_type == "sft")
    if qconfig is None:
        base.to(device)
    gc_kwargs = {"use_reentrant": False}
    if qconfig is not None and quant.prepare_kbit_training:
        from peft import prepare_model_for_kbit_training

        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=gradient_checkpointing,
                                               gradient_checkpointing_kwargs=gc_kwargs)
    elif gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
    if precision == "pure_bf16":
        cast_floating_params(base, torch.bfloat16)  # undo kbit preparation's fp32 upcast
    if hasattr(base.config, "use_cache"):
        base.config.use_cache = False  # no KV cache in training/eval forward passes
    base.requires_grad_(False)
    keep_4bit_layout_on_cpu(base)
    return base


def cast_floating_params(model: Any, dtype: Any) -> None:
    """Cast every floating-point parameter to `dtype` in place; quantized (integer) storage is left
    alone, which `model.to(dtype)` refuses to do for bitsandbytes models."""
    for param in model.parameters():
        if param.is_floating_point() and param.dtype != dtype:
            param.data = param.data.to(dtype)


def keep_4bit_layout_on_cpu(model: Any) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for its AVX512-BF16 CPU kernel.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 converts a Linear4bit's weight in place to a
    bf16-packed layout on its first forward in eval mode, and never converts it back. A trial
    evaluates between training steps, and training on the packed layout fails ("a view of a leaf
    Variable that requires grad is being used in an in-place operation"); layers narrower than
    the quantization block (tiny test models) fail at the conversion itself; and the bf16 eval
    numerics would differ from machines without that instruction set. So every machine keeps
    the layout it trained with.
    """
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return
    for layer in model.modules():
        if isinstance(layer, Linear4bit):
            layer.support_avx512bf16_for_cpu = False


@traced("trainer.lora_setup")
def reset_head(base: Any, task_type: str) -> None:
    """Re-draw the classification head from the global RNG (call right after seeding), so a
    warm base gives the same head as a fresh load. Causal LMs keep their pretrained lm_head."""
    import torch

    if task_type != "classification":
        return
    std = getattr(base.config, "initializer_range", 0.02)
    with torch.no_grad():
        for name in CLASSIFIER_HEADS:
            head = getattr(base, name, None)
            for module in head.modules() if head is not None else ():
                if isinstance(module, torch.nn.Linear):
                    module.weight.normal_(mean=0.0, std=std)
                    if module.bias is not None:
                        module.bias.zero_()
                elif hasattr(module, "reset_parameters") and module is not head:
                    module.reset_parameters()


def lora_alpha(lora: LoraSettings | dict[str, Any]) -> float:
    """alpha_ratio * r when alpha_ratio is set, else lora_alpha (LoraSettings.alpha, for a dict too)."""
    return LoraSettings.of(lora).alpha


@traced("trainer.lora_setup")
def apply_lora(base: Any, lora: LoraSettings | dict[str, Any], targets: list[str], task_type: str, precision: str = "fp32") -> Any:
    """Wrap `base` with a fresh LoRA adapter (draws LoRA A from the global RNG).

    Trained in full beside it: the classification head and `lora.modules_to_save` (peft trains a
    copy and keeps the original, so restore_base gives the pristine base back); the rows of
    tokens a named chat template added (trainer.models.special_tokens.trainable_token_indices). With
    precision=pure_bf16 the adapter is bf16 too; otherwise peft keeps it in fp32.
    """
    import torch
    from peft import LoftQConfig, LoraConfig, TaskType, get_peft_model

    from trainer.models.special_tokens import trainable_token_indices

    lora = LoraSettings.of(lora)
    heads = [n for n in CLASSIFIER_HEADS if hasattr(base, n)] if task_type == "classification" else []
    extra = [m for m in lora.modules_to_save or [] if m not in heads]
    loftq = {}
    if lora.init_lora_weights == "loftq":
        loftq["loftq_config"] = LoftQConfig(loftq_bits=lora.loftq_bits, loftq_iter=lora.loftq_iter)
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.lora_dropout,
        target_modules=targets,
        bias=lora.bias,
        use_rslora=lora.rslora,
        use_dora=bool(lora.use_dora),
        init_lora_weights=lora.init_lora_weights,
        task_type=TaskType.SEQ_CLS if task_type == "classification" else TaskType.CAUSAL_LM,
        modules_to_save=(heads + extra) or None,
        trainable_token_indices=trainable_token_indices(base, targets, heads + extra),
        **loftq,
    )
    pure_bf16 = precision == "pure_bf16"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.* is deprecated", category=FutureWarning)
        model = get_peft_model(base, config, autocast_adapter_dtype=not pure_bf16)
    if pure_bf16:
        for param in model.parameters():
            if param.requires_grad and param.dtype != torch.bfloat16:
                param.data = param.data.to(torch.bfloat16)
    return model


def mutates_base(lora: LoraSettings) -> bool:
    """Inits that rewrite the base weights (PiSSA/OLoRA residuals, LoftQ's quantised weights) or
    train base biases, after which a cached base is no longer the pretrained model."""
    init = str(lora.init_lora_weights).lower()
    return init.startswith("pissa") or init in ("olora", "loftq") or lora.bias != "none"


def is_pristine(base: Any) -> bool:
    """No LoRA layer, peft wrapper or peft config left on the base model."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    return not hasattr(base, "peft_config") and not any(
        isinstance(m, BaseTunerLayer | AuxiliaryTrainingWrapper) for m in base.modules()
    )


def restore_base(peft_model: Any) -> Any:
    """Remove the LoRA layers and put the original (untrained) head modules back."""
    from peft.utils.other import AuxiliaryTrainingWrapper

    prefix = "base_model.model."
    originals = {
        name.removeprefix(prefix): module.original_module
        for name, module in peft_model.named_modules()
        if isinstance(module, AuxiliaryTrainingWrapper)
    }
    base = peft_model.unload()
    for name, module in originals.items():
        base.set_submodule(name, module)
    base.disable_input_require_grads()  # hook that PeftModel adds to non-quantized models
    base.requires_grad_(False)
    return base
