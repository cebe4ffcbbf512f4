"""Exclusive per-phase timers for the benchmark probes (bench/probe_trial.py, sitecustomize.py):
a timed call's seconds go to its phase minus the seconds of timed calls nested inside it."""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from typing import Any, Callable

PHASES: dict[str, float] = defaultdict(float)
_STACK: list[float] = []  # child seconds accumulated per open timed call


def timed(phase: str, fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _STACK.append(0.0)
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            total = time.perf_counter() - t0
            children = _STACK.pop()
            PHASES[phase] += total - children
            if _STACK:
                _STACK[-1] += total

    wrapper.__bench_probe__ = True
    return wrapper


def patch(owner: Any, name: str, phase: str) -> None:
    """owner.name, timed (once: patching twice would count its time twice)."""
    fn = getattr(owner, name, None)
    if fn is not None and not getattr(fn, "__bench_probe__", False):
        setattr(owner, name, timed(phase, fn))


def patch_recipe(recipe: Any, cached: str = "") -> None:
    """Time the phases of `trainer.recipe.run_trial`; `cached` marks the phases a warm worker skips."""
    for name in ("load_tokenizer", "load_raw", "encode"):
        patch(recipe, name, "tokenisation (tokenizer, data, encode)" + cached)
    patch(recipe, "load_base_model", "model load + 4-bit quantisation" + cached)
    for name in ("reset_head", "apply_lora", "resolve_target_modules"):
        patch(recipe, name, "LoRA setup")
    patch(recipe, "_give_back", "LoRA removal (base back to the cache)")
    patch(recipe, "train_loop", "train")
    patch(recipe, "evaluate", "eval")
    patch(recipe, "run_trial", "trainer other (seeding, validation, collator, result)")
