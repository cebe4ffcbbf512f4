"""`model=tiny_chat`: a small random chat model built on first use, so the LLM path runs offline.

A byte-level BPE tokenizer trained on the demo chat set (`data=demo_chat`) with the chatml special
tokens and template (the layout of Qwen2.5-Instruct: `<|im_end|>` ends a turn and is the eos), and
a few randomly initialised Qwen2 layers, saved with `save_pretrained` under the user's cache
directory. Everything is seeded, so every machine with the same library versions builds the same
bytes. The folder name carries a hash of the recipe: a new recipe is a new folder, never a stale one.

Several worker processes may ask for it at once: one builds under a file lock into a temporary
folder and renames it into place, so a folder at the final path is always complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from trainer.data.chat_templates import NAMED_TEMPLATES

CACHE_ENV = "LORA_SWEEP_CACHE"  # overrides $XDG_CACHE_HOME/lora-sweep (default ~/.cache/lora-sweep)
PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (PAD, IM_START, IM_END)

# What is built: ~1M parameters, small enough that a 50-step LoRA trial takes seconds on one CPU
# thread, large enough that LoRA on it learns the chat format and some of the toy tasks.
RECIPE: dict[str, Any] = {
    "revision": 1,                  # bump when the build code changes what it writes
    "seed": 20261206,               # model init
    # Qwen2's byte-level pipeline, merges learnt from the demo chat train split (446 tokens: the
    # corpus runs out of merges before the cap)
    "tokenizer": {"pipeline": "Qwen2Tokenizer", "vocab_size": 512, "corpus_size": 400,
                  "special_tokens": list(SPECIAL_TOKENS), "chat_template": NAMED_TEMPLATES["chatml"],
                  "model_max_length": 512},
    "model": {"architecture": "Qwen2ForCausalLM", "hidden_size": 128, "intermediate_size": 384,
              "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 512, "tie_word_embeddings": False,
              # std of every weight: at the usual 0.02 the frozen random lm_head gives no token more
              # than ~3% probability from a unit-RMS hidden state, so adapters cannot lower the loss
              # far; at 0.1 a 50-step LoRA trial learns the format and some answers.
              "initializer_range": 0.1},
}


def recipe_version() -> str:
    """Short hash of RECIPE: the folder's name changes whenever what would be built changes."""
    return hashlib.sha256(json.dumps(RECIPE, sort_keys=True).encode()).hexdigest()[:10]


def cache_root() -> Path:
    """$LORA_SWEEP_CACHE, else $XDG_CACHE_HOME/lora-sweep, else ~/.cache/lora-sweep."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "lora-sweep"


def tiny_chat_path() -> str:
    """The model folder, built on first use (safe when several processes ask at once)."""
    from filelock import FileLock

    root = cache_root()
    final = root / f"tiny_chat-{recipe_version()}"
    if final.is_dir():
        return str(final)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"model=tiny_chat: cannot create the cache folder {root} ({exc.strerror}); "
                      f"set {CACHE_ENV} to a writable folder") from exc
    with FileLock(str(root / f".{final.name}.lock")):
        if final.is_dir():  # another process built it while we waited
            return str(final)
        for stale in root.glob(f".{final.name}.*"):  # builds killed half-way (we hold the lock)
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
        try:
            build(tmp)
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # a rename race (no working lock on this filesystem) is fine; anything else is not
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return str(final)


def build(path: Path) -> None:
    """Write the tokenizer and the randomly initialised model into `path`."""
    from transformers.utils import logging as hf_logging

    tok = build_tokenizer()
    tok.save_pretrained(path)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Writing model shards" for one small file
    try:
        build_model(tok).save_pretrained(path)
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def build_tokenizer() -> Any:
    """Qwen2's byte-level BPE pipeline (its pre-tokenizer: digits one by one) with merges learnt from
    the demo chat train split: any text encodes, and AutoTokenizer loads exactly what was trained."""
    from transformers import Qwen2Tokenizer

    from trainer.data.demo_chat import TRAIN_SEED, generate

    spec = RECIPE["tokenizer"]
    corpus = [m["content"] for conv in generate(spec["corpus_size"], TRAIN_SEED) for m in conv]
    corpus += ["system", "user", "assistant"]  # the role names the template writes
    tok = Qwen2Tokenizer().train_new_from_iterator(corpus, vocab_size=spec["vocab_size"],
                                                   new_special_tokens=[IM_START, IM_END], show_progress=False)
    tok.eos_token, tok.pad_token = IM_END, PAD
    tok.model_max_length = spec["model_max_length"]
    tok.chat_template = spec["chat_template"]
    return tok


def build_model(tok: Any) -> Any:
    """Qwen2 causal LM drawn from RECIPE's seed; eos = `<|im_end|>` so generation stops at a turn's end."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    spec = {k: v for k, v in RECIPE["model"].items() if k != "architecture"}
    eos, pad = tok.convert_tokens_to_ids(IM_END), tok.convert_tokens_to_ids(PAD)
    config = Qwen2Config(vocab_size=len(tok), bos_token_id=None, eos_token_id=eos, pad_token_id=pad, **spec)
    torch.manual_seed(RECIPE["seed"])
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad, do_sample=False)
    return model
