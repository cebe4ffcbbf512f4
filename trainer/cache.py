"""Per-process warm state shared by consecutive trials (tokenizer, tokenized data, base model).

Each entry is keyed by exactly the config values it depends on (see the *_key functions), so a
trial never sees state built for a different config. The recipe returns the base model
pristine (LoRA layers and trained head copy removed) or evicts it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

from omegaconf import DictConfig

from trainer.config import key_of

T = TypeVar("T")

MODEL_KEYS = ("model.name_or_path", "model.revision", "model.trust_remote_code")


def tokenizer_key(cfg: DictConfig) -> str:
    return key_of(cfg, *MODEL_KEYS, "task.type", "task.chat_template")


def data_key(cfg: DictConfig) -> str:
    return key_of(cfg, *MODEL_KEYS, "data", "task.type", "task.prompt_template", "task.verbalizer",
                  "task.chat_template", "task.train_on", "task.truncation", "train.max_seq_length")


def model_key(cfg: DictConfig, num_labels: int | None, device: Any) -> str:
    # task.chat_template: a named template can add tokens, and so embedding rows, to the base
    return key_of(cfg, *MODEL_KEYS, "model.attn_implementation", "quant", "task.type", "task.chat_template", "train.gradient_checkpointing",
                  num_labels=num_labels, device=str(device))


class WarmCache:
    """Small LRU stores per kind; at most `max_models` base models (they hold device memory)."""

    def __init__(self, max_models: int = 1, max_entries: int = 4) -> None:
        self._limits = {"model": max_models}
        self._default_limit = max_entries
        self._stores: dict[str, OrderedDict[str, Any]] = {}
        self.hits: dict[str, int] = {}
        self.misses: dict[str, int] = {}

    def get(self, kind: str, key: str, build: Callable[[], T]) -> T:
        """The cached value for (kind, key), building (and storing) it on a miss."""
        store = self._stores.setdefault(kind, OrderedDict())
        if key in store:
            store.move_to_end(key)
            self.hits[kind] = self.hits.get(kind, 0) + 1
            return store[key]
        self.misses[kind] = self.misses.get(kind, 0) + 1
        limit = self._limits.get(kind, self._default_limit)
        while len(store) >= limit:
            store.popitem(last=False)
        value = build()
        store[key] = value
        return value

    def contains(self, kind: str, key: str) -> bool:
        return key in self._stores.get(kind, {})

    def evict(self, kind: str, key: str) -> None:
        self._stores.get(kind, OrderedDict()).pop(key, None)

    def clear(self) -> None:
        self._stores.clear()
