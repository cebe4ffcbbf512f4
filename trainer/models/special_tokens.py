"""A named chat template on a base model: its markers become real tokens the model can learn.

A base tokenizer (Llama 2, Mistral v0.1, Phi-2, a tokenizer trained from scratch) has no
`<|im_start|>` / `<|im_end|>` / `<|eot_id|>`: the text would be split into many pieces, the
end-of-turn marker would have no id, and generation could never stop on it. So when
`task.chat_template` names a template (trainer.data.chat_templates.NAMED_TEMPLATES; a Jinja string's
literal `<|...|>` markers count the same) the markers the
tokenizer lacks are added as special tokens (`add_template_tokens`, called by
`trainer.models.loading.load_tokenizer`), the model's embeddings grow to the tokenizer's size with the new
rows set to the mean of the pretrained rows (`fit_embeddings`, called by
`trainer.models.loading.load_base_model`: a deterministic init, so a warm base equals a cold one whatever
seed loaded it), and those rows are trained beside LoRA (`trainable_token_indices`).

Why peft's `trainable_token_indices` and not `modules_to_save=["embed_tokens", "lm_head"]`:
only the new rows are trained and saved (a few KB per token, stored in adapter_model.safetensors
as `token_adapter.trainable_tokens_delta`, the rows' values), where modules_to_save trains and
saves full copies of both matrices (about 1 GB each in fp32 for a 32k x 4096 vocabulary, plus
Adam state: more memory than the 4-bit QLoRA model itself) and lets every pretrained row drift.
Both matrices stay unquantized under QLoRA (bitsandbytes only quantizes the decoder's Linear
layers; lm_head is in llm_int8_skip_modules), which is what peft 0.21's TrainableTokensLayer
needs. An untied lm_head gets its own row adapter (otherwise every new token would share the
mean row and tie for the argmax); a tied one follows the embedding.
"""

from __future__ import annotations

import re
import weakref
from typing import Any

from trainer.errors import ConfigError

_MARKER = re.compile(r"<\|[A-Za-z0-9_]+\|>")
# What was added to each tokenizer object, and which rows of each base model are new: filled at
# load time, read when LoRA is applied (the objects live in the per-process warm cache).
_ADDED: weakref.WeakKeyDictionary[Any, tuple[int, ...]] = weakref.WeakKeyDictionary()
_NEW_ROWS: weakref.WeakKeyDictionary[Any, tuple[int, ...]] = weakref.WeakKeyDictionary()


def template_markers(chat_template: str | None) -> list[str]:
    """The literal `<|...|>` markers of `task.chat_template` (a named template or a Jinja string),
    in order of first use; none without one (the tokenizer's own template comes with its own
    tokens). zephyr and alpaca have none: their turns end with the tokenizer's eos, and zephyr's
    role tags (`<|{{ role }}|>`, built from the role name) are plain text, as in the Zephyr models."""
    from trainer.data.chat_templates import NAMED_TEMPLATES

    template = NAMED_TEMPLATES.get(chat_template or "", chat_template)
    if not template or "<|{{" in template:
        return []
    return list(dict.fromkeys(_MARKER.findall(template)))


def add_template_tokens(tok: Any, chat_template: str | None) -> list[int]:
    """Add the named template's markers that `tok` lacks as special tokens (never split, skipped
    when decoding answers); returns their new ids. A tokenizer that cannot take new tokens is
    refused with the fix."""
    missing = [m for m in template_markers(chat_template) if m not in tok.get_vocab()]
    if not missing:
        _ADDED[tok] = ()
        return []
    try:
        tok.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    except TypeError:  # transformers < 5 has no replace_extra_special_tokens (and appends by default)
        tok.add_special_tokens({"additional_special_tokens": missing}, replace_additional_special_tokens=False)
    ids = [tok.convert_tokens_to_ids(m) for m in missing]
    single = [len(tok(m, add_special_tokens=False)["input_ids"]) == 1 for m in missing]
    if None in ids or not all(single):
        raise ConfigError("task.chat_template", chat_template, "a template whose markers this tokenizer can hold",
                          f"{', '.join(missing)} could not be added as single tokens; use the model's own template "
                          "(task.chat_template=null on an instruct model) or a tokenizer that has these tokens")
    _ADDED[tok] = tuple(ids)
    return ids


def added_token_ids(tok: Any) -> tuple[int, ...]:
    """Ids `add_template_tokens` added to this tokenizer object (empty when none)."""
    return _ADDED.get(tok, ())


def fit_embeddings(model: Any, tok: Any, end_of_turn: bool) -> None:
    """Grow the input (and output) embeddings to the tokenizer's size when it has more tokens than
    the model has rows (never shrink: many checkpoints pad their vocabulary), set the rows of the
    added tokens to the mean of the other rows, and, for chat models (`end_of_turn`), make the
    template's end-of-turn token an eos of the model's generation config, so generation stops
    there."""
    new = added_token_ids(tok)
    embed = model.get_input_embeddings()
    if embed is None or not hasattr(embed, "weight"):
        if new:
            raise ConfigError("task.chat_template", "a named template", "a model whose embeddings can be resized",
                              f"this model exposes no input embedding to add {len(new)} tokens to; use its own chat "
                              "template (task.chat_template=null)")
        return
    rows = embed.weight.shape[0]
    if len(tok) > rows:
        model.resize_token_embeddings(len(tok), mean_resizing=False)
    if new:
        _mean_rows(model.get_input_embeddings().weight, new, rows)
        output = model.get_output_embeddings()
        if output is not None and output.weight is not model.get_input_embeddings().weight:
            _mean_rows(output.weight, new, rows)
        _NEW_ROWS[model] = new
    if end_of_turn:
        add_end_of_turn_eos(model.generation_config, tok)


def _mean_rows(weight: Any, ids: tuple[int, ...], pretrained_rows: int) -> None:
    """Rows `ids` := mean of the pretrained rows (Hewitt 2021): the new tokens start as an average
    token instead of a random one, which keeps the first steps' loss and outputs sane."""
    import torch

    keep = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
    keep[pretrained_rows:] = False
    keep[list(ids)] = False
    with torch.no_grad():
        mean = weight[keep].float().mean(0)
        weight[list(ids)] = mean.to(weight.dtype)


def add_end_of_turn_eos(generation_config: Any, tok: Any) -> list[int]:
    """generation_config.eos_token_id := the template's end-of-turn id, the tokenizer's eos and
    whatever eos the config already had (in that order, no duplicates); returns the list.
    transformers' generate and vLLM stop at any of them."""
    from trainer.data.chat_templates import end_of_turn_id

    ids: list[int] = []
    try:
        eot = end_of_turn_id(tok) if getattr(tok, "chat_template", None) else None
    except Exception:  # noqa: BLE001 - a template that cannot render the probe: the encoder names the row
        eot = None
    before = generation_config.eos_token_id
    for value in (eot, tok.eos_token_id, *(before if isinstance(before, (list, tuple)) else [before])):
        if value is not None and int(value) not in ids:
            ids.append(int(value))
    if ids:
        generation_config.eos_token_id = ids if len(ids) > 1 else ids[0]
    return ids


def trainable_token_indices(model: Any, targets: list[str], modules_to_save: list[str]) -> dict[str, list[int]] | None:
    """LoraConfig.trainable_token_indices for the rows `fit_embeddings` added (None when none):
    the input embedding, and an untied output embedding; a layer already trained in full
    (`lora.modules_to_save`) is left to that. LoRA on the embeddings together with new rows is
    refused with the fix (peft cannot wrap one layer both ways)."""
    new = _NEW_ROWS.get(model, ())
    if not new:
        return None
    names = {module: name for name, module in model.named_modules()}
    embed, output = model.get_input_embeddings(), model.get_output_embeddings()
    layers = [names[embed]]
    if output is not None and output.weight is not embed.weight and output in names:
        layers.append(names[output])
    short = {layer.rsplit(".", 1)[-1]: layer for layer in layers}
    clash = sorted(set(targets) & (set(short) | set(layers)))
    if clash:
        raise ConfigError("lora.target_modules", targets, "modules other than the embeddings when a named chat "
                          "template adds tokens", f"{', '.join(clash)} also hold the {len(new)} new token rows; drop "
                          "them from lora.target_modules, or list them in lora.modules_to_save to train them in full")
    full = set(modules_to_save)
    return {layer: list(new) for short_name, layer in short.items() if short_name not in full and layer not in full} or None


def trains_new_tokens(peft_model: Any) -> bool:
    """The adapter carries new token rows (trainable_token_indices)."""
    config = getattr(peft_model, "peft_config", {}).get("default")
    return getattr(config, "trainable_token_indices", None) is not None


def save_embedding_layers(peft_model: Any) -> bool | str:
    """`save_embedding_layers` for PeftModel.save_pretrained: False when the new rows travel as
    trainable tokens (peft's "auto" would add both full matrices, GBs, because the vocabulary
    grew; the rows' values in the adapter are all a loader needs after resizing its base to the
    tokenizer), else peft's "auto"."""
    return False if trains_new_tokens(peft_model) else "auto"
