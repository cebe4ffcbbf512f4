"""`hydra.sweeper.custom_search_space`: hydra-optuna-sweeper's hook for spaces the grammar cannot
say (conditional ones). A dotted path to a user function `fn(cfg, trial)`; after the space's own
keys are suggested, the function suggests more through the Optuna trial (`trial.suggest_float
("train.warmup_ratio", ...)`, reading `trial.params` for conditions). As in that plugin:

- each suggested name is a Hydra override key (`+key` adds a key the config lacks) and the value
  is applied to the trial's config like a sampled one;
- `cfg` is the sweep's composed config (the `hydra` node included), the same for every trial;
- the values of fixed params (`key: value` in `hydra.sweeper.params`) are the trial's user attrs
  when the function runs, and suggesting one of them is an error.

Trials run in worker processes: the function is imported there by its path (the directory you
run from is importable, as with `python -m`). Its params are the trial's params (`trial.params`:
reports, export, the race and retries read them) and part of its config (MLflow params).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Callable

from optuna.distributions import BaseDistribution, IntDistribution

from sweeps.search.space import SearchSpaceError

OPTION = "hydra.sweeper.custom_search_space"


@dataclass(frozen=True)
class CustomSearchSpace:
    path: str               # the dotted path the user gave
    config: dict[str, Any]  # the sweep's composed config, resolved (what the function reads as cfg)

    def function(self) -> Callable[[Any, Any], None]:
        return load_function(self.path)

    def apply(self, trial, fixed: dict[str, Any]) -> dict[str, Any]:
        """Run the function on `trial` (its space keys already suggested); the params it added."""
        from omegaconf import OmegaConf

        before = set(trial.params)
        for key, value in fixed.items():
            trial.set_user_attr(key, value)
        cfg = OmegaConf.create(self.config)
        OmegaConf.set_readonly(cfg, True)
        try:
            self.function()(cfg, trial)
        except SearchSpaceError:
            raise
        except Exception as exc:
            raise SearchSpaceError(f"{OPTION}={self.path}: the function raised {type(exc).__name__}: {exc}") from exc
        overlap = sorted(set(trial.params) & set(fixed))
        if overlap:
            raise SearchSpaceError(
                f"{OPTION}={self.path}: suggested {', '.join(overlap)}, which hydra.sweeper.params fixes "
                f"({', '.join(f'{k}={fixed[k]!r}' for k in overlap)}); a fixed param cannot also be searched")
        return {k: v for k, v in trial.params.items() if k not in before}


def load_function(path: str) -> Callable[[Any, Any], None]:
    """The callable at `path` (hydra.utils.get_method, as the plugin resolves it); the directory
    you run from is tried too. An error names the option and the path."""
    from hydra.utils import get_method

    if not isinstance(path, str) or not path.strip():
        raise SearchSpaceError(f"{OPTION}: expected a dotted path such as my_spaces.configure, got {path!r}")
    try:
        return get_method(path)
    except Exception as first:  # noqa: BLE001 - Hydra raises ImportError / ValueError with its reason
        if os.getcwd() not in sys.path:
            sys.path.append(os.getcwd())
            try:
                return get_method(path)
            except Exception:  # noqa: BLE001 - the first reason is the one to show
                pass
        raise SearchSpaceError(
            f"{OPTION}={path}: cannot load a function from it ({first}). Give module.function with the module "
            "importable from the directory you run from or on PYTHONPATH; it is called as fn(cfg, trial)") from None


def probe(custom: CustomSearchSpace, distributions: dict[str, BaseDistribution], fixed: dict[str, Any],
          enqueued: dict[str, Any] | None = None, seed: int = 0) -> tuple[dict[str, Any], dict[str, BaseDistribution]]:
    """One trial of an in-memory study through the space and the function: its params and their
    distributions (for the pre-flight check and the base trial; no store is touched)."""
    import optuna

    from sweeps.search.space import suggest

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    if enqueued:
        study.enqueue_trial(enqueued, skip_if_exists=False)
    trial = study.ask()
    for key, dist in distributions.items():
        suggest(trial, key, dist)
    custom.apply(trial, fixed)
    return dict(trial.params), dict(trial.distributions)


def base_values(custom: CustomSearchSpace, job: Any, distributions: dict[str, BaseDistribution],
                fixed: dict[str, Any], params: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The base trial's values for the keys the function suggests when the space's keys hold the
    base config's `params`: each key's value in the job config. Repeated until the function's
    keys settle (a key may depend on another of its keys). Returns them, and a note per key whose
    base value the function's distribution cannot hold (or that the config lacks)."""
    from omegaconf import OmegaConf

    from sweeps.search.space import inside

    values: dict[str, Any] = {}
    for _ in range(4):
        found, dists = probe(custom, distributions, fixed, enqueued={**params, **values})
        extra = {k: d for k, d in dists.items() if k not in distributions}
        outside, new = [], {}
        for key, dist in extra.items():
            value = OmegaConf.select(job, key.lstrip("+~"), default=None)
            value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
            if inside(dist, value):
                new[key] = int(value) if isinstance(dist, IntDistribution) and isinstance(value, float) else value
            else:
                outside.append(f"{key}={value!r} not in {dist!r} ({OPTION}={custom.path})")
        if outside:
            return new, outside
        if new == values:
            return values, []
        values = new
    return values, []
