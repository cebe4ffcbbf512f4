"""Sampler and pruner factories: config names → Optuna objects, with errors that list the choices."""

from __future__ import annotations

import hashlib
import warnings
from typing import Any, Callable, Mapping

import optuna

from sweeps.search.conformal import ConformalPruner
from sweeps.search.pruning import GuardedPruner, PruneGuard, RowWilcoxonPruner
from sweeps.search.space import SearchSpace

SAMPLERS = ("tpe", "random", "grid", "cmaes", "gp", "nsgaii", "qmc")
PRUNERS = ("median", "hyperband", "successive_halving", "percentile", "threshold", "wilcoxon", "conformal", "none")

# hydra-optuna-sweeper's form, `sampler: {_target_: optuna.samplers.TPESampler, seed: 1, ...}`: the
# Optuna classes we build, by the short name that builds them.
SAMPLER_TARGETS = {
    "optuna.samplers.TPESampler": "tpe", "optuna.samplers.RandomSampler": "random",
    "optuna.samplers.GridSampler": "grid", "optuna.samplers.CmaEsSampler": "cmaes",
    "optuna.samplers.GPSampler": "gp", "optuna.samplers.NSGAIISampler": "nsgaii",
    "optuna.samplers.QMCSampler": "qmc",
}
PRUNER_TARGETS = {
    "optuna.pruners.MedianPruner": "median", "optuna.pruners.HyperbandPruner": "hyperband",
    "optuna.pruners.SuccessiveHalvingPruner": "successive_halving", "optuna.pruners.PercentilePruner": "percentile",
    "optuna.pruners.ThresholdPruner": "threshold", "optuna.pruners.WilcoxonPruner": "wilcoxon",
    "optuna.pruners.NopPruner": "none",
}
# Keys that hydra.utils.instantiate reads itself, not arguments of the class (the plugin's grid
# sampler sets `_partial_: true`, as its search space is only known at run time).
_INSTANTIATE_KEYS = ("_partial_", "_recursive_", "_convert_")


class SweeperConfigError(ValueError):
    """A hydra.sweeper.* setting that is not allowed (the message names the key and the choices)."""


def kwargs_of(node: Any) -> dict[str, Any]:
    """`sampler_kwargs` / `pruner_kwargs` (null or a mapping, possibly an OmegaConf node) → dict."""
    if not node:
        return {}
    from omegaconf import OmegaConf

    return dict(OmegaConf.to_container(node)) if OmegaConf.is_config(node) else dict(node)


def normalize_sampler_config(conf: Any) -> Any:
    """hydra-optuna-sweeper's sampler/pruner nodes (`_target_` plus keyword arguments) → our short
    names, `sampler_seed` and `*_kwargs`, so configs written for that plugin run unchanged while
    everything downstream (pre-flight, workers, study attributes) sees one form. Called once, before
    the pre-flight; the short-name form passes through. Returns a new config.

    A node's `seed: null` (the plugin's default) counts as not given, so `sampler_seed` stands; a
    `sampler_seed` at its default counts as not set, so the node's seed replaces it."""
    from omegaconf import OmegaConf

    from sweeps.sweeper_config import LoraOptunaSweeperConf

    default_seed = LoraOptunaSweeperConf.sampler_seed
    conf = OmegaConf.create(OmegaConf.to_container(conf, resolve=False))
    if isinstance(conf.get("sampler"), Mapping):
        name, node = _translate_node(conf.sampler, "sampler", SAMPLER_TARGETS)
        seed = node.pop("seed", None)
        if seed is not None:
            given = conf.get("sampler_seed", default_seed)
            if given not in (default_seed, seed):
                raise SweeperConfigError(
                    f"hydra.sweeper.sampler.seed ({seed!r}) and hydra.sweeper.sampler_seed ({given!r}) disagree; "
                    "set the seed in one of them")
            conf.sampler_seed = seed
        conf.sampler, conf.sampler_kwargs = name, _merge_kwargs(node, conf.get("sampler_kwargs"), "sampler")
    if isinstance(conf.get("pruner"), Mapping):
        name, node = _translate_node(conf.pruner, "pruner", PRUNER_TARGETS)
        conf.pruner, conf.pruner_kwargs = name, _merge_kwargs(node, conf.get("pruner_kwargs"), "pruner")
    return conf


def _translate_node(node: Any, key: str, targets: Mapping[str, str]) -> tuple[str, dict[str, Any]]:
    """A `_target_` node → (our short name, its other keys)."""
    node = kwargs_of(node)
    target = node.pop("_target_", None)
    allowed = ", ".join(targets)
    if target is None:
        raise SweeperConfigError(
            f"hydra.sweeper.{key}: a mapping needs _target_ (allowed: {allowed}), or give a short name")
    if str(target) not in targets:
        raise SweeperConfigError(f"hydra.sweeper.{key}._target_: {target!r} is not supported; allowed: {allowed}")
    for hydra_key in _INSTANTIATE_KEYS:
        node.pop(hydra_key, None)
    return targets[str(target)], node


def _merge_kwargs(node: dict[str, Any], given: Any, key: str) -> dict[str, Any]:
    """The node's arguments plus `<key>_kwargs`; a key in both must agree."""
    given = kwargs_of(given)
    for name in node.keys() & given.keys():
        if node[name] != given[name]:
            raise SweeperConfigError(
                f"hydra.sweeper.{key}.{name} ({node[name]!r}) and hydra.sweeper.{key}_kwargs.{name} "
                f"({given[name]!r}) disagree; set {name} in one of them")
    return {**given, **node}


def worker_seed(base_seed: int | None, *salt: Any) -> int | None:
    """A distinct, reproducible sampler seed per worker and per sweep process on the study.

    Every worker holds its own sampler; the same seed everywhere would make all workers propose
    the same startup configurations, and a resumed TPE would replay its first proposals. The salt
    must not depend on timing (e.g. how many trials exist when a worker starts), or the same
    command would propose different configurations from run to run.
    """
    if base_seed is None:
        return None
    digest = hashlib.sha256(repr((int(base_seed),) + salt).encode()).digest()
    return int.from_bytes(digest[:4], "little")


# Samplers that split one sequence between the workers by trial number (Optuna's grid and QMC):
# every worker must hold the same seed, else their shuffles disagree and points repeat or are skipped.
SHARED_SEED_SAMPLERS = ("grid", "qmc")


def sampler_seed(name: str, base_seed: int | None, study_name: str, worker_id: int, session_index: int) -> int | None:
    """The seed of one worker's sampler: distinct per worker and per sweep process on the study
    (`session_index`: 0 for the first, 1 for a resume or a second machine, ...), except for the
    samplers that must share one (`SHARED_SEED_SAMPLERS`; without a seed, one per study)."""
    if str(name).lower() in SHARED_SEED_SAMPLERS:
        return int(base_seed) if base_seed is not None else worker_seed(0, study_name)
    return worker_seed(base_seed, worker_id, session_index)


def make_sampler(name: str, seed: int | None, space: SearchSpace, n_objectives: int,
                 kwargs: Mapping[str, Any] | None = None) -> optuna.samplers.BaseSampler:
    kwargs = dict(kwargs or {})
    name = str(name).lower()
    makers: dict[str, Callable[[], optuna.samplers.BaseSampler]] = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed, constant_liar=True, **kwargs),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed, **kwargs),
        "grid": lambda: optuna.samplers.GridSampler(space.grid(), seed=seed, **kwargs),
        "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=seed, **kwargs),
        "gp": lambda: optuna.samplers.GPSampler(seed=seed, **kwargs),
        "nsgaii": lambda: optuna.samplers.NSGAIISampler(seed=seed, **kwargs),
        "qmc": lambda: optuna.samplers.QMCSampler(seed=seed, **kwargs),
    }
    if name not in makers:
        raise SweeperConfigError(f"hydra.sweeper.sampler: unknown sampler {name!r}; allowed: {', '.join(SAMPLERS)}")
    if n_objectives > 1 and name in ("cmaes", "gp"):
        raise SweeperConfigError(
            f"hydra.sweeper.sampler: {name} is single-objective; with {n_objectives} objectives use nsgaii, tpe or random"
        )
    try:
        return makers[name]()
    except TypeError as exc:
        raise SweeperConfigError(f"hydra.sweeper.sampler_kwargs: {exc}") from exc


def make_pruner(name: str, kwargs: Mapping[str, Any] | None = None, guard: PruneGuard | None = None,
                total_steps: int | None = None) -> optuna.pruners.BasePruner:
    """The named Optuna pruner behind the guard (sweeps.search.pruning): nothing is pruned before
    `guard.prune_after` of a trial nor before `guard.min_trials` trials finished. Hyperband and
    successive halving take their first rung from the guard (`min_resource`) when `total_steps`,
    the base config's length, is known and the kwargs do not set it. The conformal pruner takes its
    target rate (`guard.false_kill`), its first check (`guard.prune_after`) and its calibration
    trials (at least `guard.min_trials`) from the guard."""
    kwargs = dict(kwargs or {})
    guard = guard or PruneGuard()
    try:
        guard.check()
    except ValueError as exc:
        raise SweeperConfigError(str(exc)) from None
    name = str(name).lower()
    rung = {"min_resource": guard.first_step(total_steps)} if total_steps else {}
    makers: dict[str, Callable[[], optuna.pruners.BasePruner]] = {
        "median": lambda: optuna.pruners.MedianPruner(**{"n_startup_trials": 0, "n_warmup_steps": 0, **kwargs}),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(**{**rung, **kwargs}),
        "successive_halving": lambda: optuna.pruners.SuccessiveHalvingPruner(**{**rung, **kwargs}),
        "percentile": lambda: optuna.pruners.PercentilePruner(**{"percentile": 25.0, "n_startup_trials": 0, "n_warmup_steps": 0, **kwargs}),
        "threshold": lambda: optuna.pruners.ThresholdPruner(**kwargs),
        "wilcoxon": lambda: RowWilcoxonPruner(**kwargs),
        "conformal": lambda: ConformalPruner(**{"false_kill": guard.false_kill, "prune_after": guard.prune_after,
                                                "calibration_trials": guard.min_trials, **kwargs}),
        "none": lambda: optuna.pruners.NopPruner(),
    }
    if name not in makers:
        raise SweeperConfigError(f"hydra.sweeper.pruner: unknown pruner {name!r}; allowed: {', '.join(PRUNERS)}")
    try:
        inner = makers[name]()
    except TypeError as exc:
        raise SweeperConfigError(f"hydra.sweeper.pruner_kwargs: {exc}") from exc
    if name == "none":
        return inner
    if guard.patience:
        with warnings.catch_warnings():  # Optuna marks the class experimental; the user asked for it by name
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            inner = optuna.pruners.PatientPruner(inner, patience=guard.patience)
    return GuardedPruner(inner, guard)
