"""The LoRA learning-rate prior: where a model's best LoRA learning rate should lie, from its width.

The learning rate dominates a LoRA fine-tune's result, and its best value moves with the model:
Thinking Machines' "LoRA Without Regret" sweeps (tinker-cookbook, recipes/chat_sl/results/
sft_sweep.md: Tulu-3 SFT, LoRA alpha 32, rates 4e-5..3e-3) found 1e-3 best for Llama-3.2-1B (hidden
2048) and -3B (3072), 3e-4 for Llama-3.1-8B (4096) and -70B (8192), and the same best rate at every
rank under the alpha / r scaling with alpha fixed. Their cookbook's `get_lr` fits a power law of the
hidden size per family (5e-4 * (2000 / hidden) ** p, p 0.781 for Llama, 0.0775 for Qwen). One law for
every family here, through the published best rates:

    rate(hidden) = 1e-3 * (2048 / hidden) ** 0.868     (1e-3 at 2048, 5.5e-4 at 4096, 3e-4 at 8192)

capped at 3e-3 for narrow models (hidden <= ~570: MiniLM, the tiny test models): the cookbook's runs
diverged almost only at 3e-3, and the project's MiniLM learning curves
(bench/results/pruning_curves_*.json, 60 steps) peak at 2-3e-3. The cap is the classification
default's 3e-3.

A LoRA variant shifts the rate: DoRA's published runs use 1e-4..2e-4 where LoRA used 3e-4 on the
same 7-8B models and ranks (NVlabs/DoRA, commonsense_reasoning/README.md), so x0.5; PiSSA trains
the principal singular directions of W itself and its paper trains at full fine-tuning's rate
(2e-5 on 7B models, PiSSA arXiv 2404.02948 section 5), which LoRA Without Regret puts at a tenth of
LoRA's, so x0.1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trainer.errors import ConfigError

REFERENCE_WIDTH, REFERENCE_RATE = 2048, 1e-3  # Llama-3.2-1B's best rate in the cookbook's sweep
WIDE_WIDTH, WIDE_RATE = 8192, 3e-4              # Llama-3.1-70B's (and -8B's)
WIDTH_EXPONENT = math.log(REFERENCE_RATE / WIDE_RATE) / math.log(WIDE_WIDTH / REFERENCE_WIDTH)  # 0.868
MAX_RATE = 3e-3             # narrow models: where LoRA starts to diverge
VARIANT_FACTORS = {"lora": 1.0, "dora": 0.5, "pissa": 0.1}
VARIANT_NAMES = {"lora": "LoRA", "dora": "DoRA", "pissa": "PiSSA"}
HIDDEN_SIZE_NAMES = ("hidden_size", "n_embd", "d_model", "dim")


def rate_for_width(hidden_size: int, factor: float = 1.0) -> float:
    """The prior LoRA learning rate of a model this wide (plain LoRA; times a variant's `factor`),
    3 significant digits."""
    if not hidden_size > 0:
        raise ValueError(f"hidden size must be > 0, got {hidden_size}")
    rate = REFERENCE_RATE * (REFERENCE_WIDTH / hidden_size) ** WIDTH_EXPONENT
    return float(f"{min(rate, MAX_RATE) * factor:.3g}")


def variant_of(lora: Mapping[str, Any]) -> str:
    """The LoRA variant a `lora` config trains: dora, pissa or plain lora."""
    if bool(lora.get("use_dora")):
        return "dora"
    init = lora.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith("pissa"):
        return "pissa"
    return "lora"


def text_config(model_config: Any) -> Any:
    """The language model's config (multimodal configs nest it as text_config)."""
    getter = getattr(model_config, "get_text_config", None)
    return getter() if callable(getter) else model_config


def hidden_size_of(model_config: Any) -> int:
    """The width of a transformers config (0 when it names none)."""
    config = text_config(model_config)
    for name in HIDDEN_SIZE_NAMES:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0


def load_model_config(model: Mapping[str, Any]) -> Any:
    """The model's config.json through AutoConfig (no weights; a local folder needs no network)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model["name_or_path"], revision=model.get("revision"),
                                      trust_remote_code=bool(model.get("trust_remote_code")))


@dataclass(frozen=True)
class LrPrior:
    """The prior learning rate of one model and LoRA variant, and where it comes from."""

    rate: float
    hidden_size: int
    variant: str

    @property
    def reason(self) -> str:
        factor = VARIANT_FACTORS[self.variant]
        scaled = f", x{factor:g} for {VARIANT_NAMES[self.variant]}" if factor != 1 else ""
        return f"LoRA rate for hidden size {self.hidden_size}{scaled}"


def lr_prior(model: Mapping[str, Any], variant: str = "lora", model_config: Any = None,
             key: str = "train.learning_rate", asked: Any = "auto") -> LrPrior:
    """The prior rate for `model` (the `model` config node) trained with `variant`. `key` and
    `asked` name the setting that wanted it, in the error raised when the config has no width."""
    if variant not in VARIANT_FACTORS:
        raise ValueError(f"unknown LoRA variant {variant!r}; known: {', '.join(VARIANT_FACTORS)}")
    config = model_config if model_config is not None else load_model_config(model)
    hidden = hidden_size_of(config)
    if not hidden:
        raise ConfigError(key, asked, "a number for this model",
                          f"its config ({type(text_config(config)).__name__}) names no hidden size "
                          f"({', '.join(HIDDEN_SIZE_NAMES)})")
    return LrPrior(rate_for_width(hidden, VARIANT_FACTORS[variant]), hidden, variant)
