"""Map LoRA target presets to the real module names of a given architecture.

Names are returned as the shortest dotted suffixes that peft's suffix matching
(`name == t or name.endswith("." + t)`) maps onto exactly the wanted modules: plain leaf
names where they are unambiguous (`q_proj`, `query`, `c_attn`), longer suffixes where a leaf
name is shared by roles we must keep apart (BERT's `attention.output.dense` vs the MLP's
`output.dense`, GPT-2's `attn.c_proj` vs `mlp.c_proj`). The task head is never a target.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from trainer.errors import ConfigError
from trainer.trace import traced

TARGET_PRESETS: tuple[str, ...] = ("qv", "attn", "attn_mlp", "all_linear")

# Top-level modules that are task heads (trained in full or tied to embeddings), never LoRA targets
# nor quantized: the sequence-classification heads of transformers' models, the LM head, QA heads.
CLASSIFIER_HEADS: tuple[str, ...] = ("classifier", "score")
LM_HEADS: tuple[str, ...] = ("lm_head",)
HEAD_MODULE_NAMES: tuple[str, ...] = CLASSIFIER_HEADS + LM_HEADS + ("qa_outputs",)

_Q = {"q_proj", "query", "q", "q_lin", "wq", "query_proj", "to_q"}
_K = {"k_proj", "key", "k", "k_lin", "wk", "key_proj", "to_k"}
_V = {"v_proj", "value", "v", "v_lin", "wv", "value_proj", "to_v"}
_QKV = {"c_attn", "qkv_proj", "query_key_value", "wqkv", "qkv", "in_proj", "w_pack"}


def is_head(name: str) -> bool:
    """True for the task head and anything inside it."""
    return name.split(".", 1)[0] in HEAD_MODULE_NAMES


def linear_module_names(model: Any) -> list[str]:
    """Full names of every LoRA-able linear layer (nn.Linear incl. bnb's, GPT-2's Conv1D), head included."""
    import torch
    from transformers.pytorch_utils import Conv1D

    return [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))]


def leaf_names(names: Iterable[str]) -> list[str]:
    return sorted({n.rsplit(".", 1)[-1] for n in names})


def block_names(names: Iterable[str]) -> list[str]:
    """Unique per-block names (`attention.output.dense`, `mlp.c_proj`): usable as targets."""
    return sorted({".".join(_block_path(n)) for n in names})


def _block_path(name: str) -> list[str]:
    """Components after the last layer index (`encoder.layer.3.attention.self.query` ->
    `attention.self.query`); the whole name for modules outside repeated blocks."""
    parts = name.split(".")
    idx = [i for i, p in enumerate(parts) if p.isdigit()]
    return parts[idx[-1] + 1 :] if idx else parts


def _role(name: str) -> str:
    """q | k | v | qkv | attn (other attention projections) | mlp | other."""
    path = _block_path(name)
    leaf = path[-1].lower()
    for role, names in (("q", _Q), ("k", _K), ("v", _V), ("qkv", _QKV)):
        if leaf in names:
            return role
    if any("attn" in p.lower() or "attention" in p.lower() for p in path):
        return "attn"
    return "mlp" if len(path) < len(name.split(".")) else "other"


def matches(target: str, names: Iterable[str]) -> set[str]:
    return {n for n in names if n == target or n.endswith("." + target)}


def _shortest_suffixes(selected: list[str], all_names: list[str]) -> list[str]:
    """Fewest, shortest suffixes whose peft matches cover `selected` and nothing else."""
    wanted, covered, out = set(selected), set(), []
    for name in selected:
        if name in covered:
            continue
        parts = name.split(".")
        for i in range(len(parts) - 1, -1, -1):
            suffix = ".".join(parts[i:])
            hit = matches(suffix, all_names)
            if hit <= wanted:
                out.append(suffix)
                covered |= hit
                break
    return out


def _unknown(spec: Any, missing: Sequence[str], linear: Sequence[str], why: str) -> ConfigError:
    return ConfigError(
        "lora.target_modules",
        spec,
        f"a preset ({', '.join(TARGET_PRESETS)}) or module names of this model "
        f"({', '.join(block_names(n for n in linear if not is_head(n)))})",
        f"{why}: {', '.join(missing)}",
    )


def _preset_modules(preset: str, body: list[str]) -> list[str]:
    roles = {n: _role(n) for n in body}
    qv = [n for n in body if roles[n] in ("q", "v")] or [n for n in body if roles[n] == "qkv"]
    attn = [n for n in body if roles[n] in ("q", "k", "v", "qkv", "attn")]
    if preset == "qv":
        return qv
    if preset == "attn":
        return attn
    if preset == "attn_mlp":
        return [n for n in body if roles[n] != "other"] if attn else []
    return body  # all_linear


@traced("trainer.lora_setup")
def resolve_target_modules(model_or_module_names: Any, spec: Any) -> list[str]:
    """Resolve a preset name or check an explicit list against a model (or a list of its
    module names). Raises ConfigError naming the model's real linear modules on a mismatch."""
    if hasattr(model_or_module_names, "named_modules"):
        all_names = [n for n, _ in model_or_module_names.named_modules() if n]
        linear = linear_module_names(model_or_module_names)
    else:
        all_names = linear = [str(n) for n in model_or_module_names]
    body = [n for n in linear if not is_head(n)]

    if isinstance(spec, str):
        if spec not in TARGET_PRESETS:
            raise _unknown(spec, [spec], linear, "unknown preset")
        selected = _preset_modules(spec, body)
        if not selected:
            raise _unknown(spec, [spec], linear, "preset does not apply to this architecture")
        return _shortest_suffixes(selected, all_names)

    names = [str(t) for t in spec] if spec is not None else []
    if not names:
        raise _unknown(spec, ["<empty>"], linear, "empty list")
    head_hits = [t for t in names if matches(t, linear) and not matches(t, body)]
    if head_hits:
        raise _unknown(spec, head_hits, linear, "the task head is trained in full, never a LoRA target")
    missing = [t for t in names if not matches(t, body)]
    if missing:
        raise _unknown(spec, missing, linear, "not found")
    return names
