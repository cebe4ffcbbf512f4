"""Typed access to the composed job config and hashable keys built from parts of it."""

from __future__ import annotations

import json
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from trainer.errors import ConfigError


def get(cfg: DictConfig, key: str, default: Any = None) -> Any:
    """Plain-Python value at a dotted key; a mandatory `???` becomes a ConfigError naming the key."""
    try:
        value = OmegaConf.select(cfg, key, default=default, throw_on_missing=True)
    except MissingMandatoryValue:
        raise ConfigError(key, "???", "set (it is mandatory for this config group)") from None
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def key_of(cfg: DictConfig, *keys: str, **extra: Any) -> str:
    """Canonical JSON of exactly the config values something depends on: a cache key that
    changes when, and only when, one of those values changes."""
    parts = {k: get(cfg, k) for k in keys}
    parts.update(extra)
    return json.dumps(parts, sort_keys=True, default=str)
