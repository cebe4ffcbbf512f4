"""Pre-flight: every check that can fail a sweep runs before any trial starts or any store is
written, and its error names the key and the allowed values."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

from omegaconf import DictConfig
from rich.markup import escape

from sweeps.runtime.compose import ComposeSpec
from sweeps.progress import console, data_fit_note
from sweeps.search.pruning import ROW_MEAN_OBJECTIVES, prune_guard
from sweeps.search.samplers import kwargs_of, SweeperConfigError, make_pruner, make_sampler
from sweeps.search.priors import resolve_lr_prior
from sweeps.search.space import SearchSpace, override_line
from sweeps.search.startup import DEFAULT_STARTUP, STARTUP_MODES
from sweeps.runtime.worker_plan import DeviceError, plan_for
from trainer.trace import traced

Composer = Callable[[dict[str, Any]], DictConfig]

_NON_METRIC_OBJECTIVES = ("trainable_params", "total_params")


def check_sweeper_settings(conf: DictConfig, space: SearchSpace, objectives: list[str]) -> None:
    if not space:
        raise SweeperConfigError(
            "hydra.sweeper.params: the search space is empty; add entries such as "
            "lora.r: choice(4, 8, 16) (search_space=default does) or pass sweeps on the command line, "
            "e.g. lora.r=4,8,16 'train.learning_rate=tag(log, interval(1e-4, 1e-2))'"
        )
    if "lora.lora_alpha" in space.distributions and "lora.alpha_ratio" in space.distributions:
        raise SweeperConfigError(
            "hydra.sweeper.params: sweep either lora.lora_alpha or lora.alpha_ratio (alpha = ratio * r), not both"
        )
    startup = conf.get("startup", DEFAULT_STARTUP)
    if startup not in STARTUP_MODES:
        raise SweeperConfigError(f"hydra.sweeper.startup: {startup!r} is not allowed; allowed: {', '.join(STARTUP_MODES)}")
    if int(conf.n_trials) < 1:
        raise SweeperConfigError(f"hydra.sweeper.n_trials: must be >= 1, got {conf.n_trials}")
    if conf.timeout is not None and not float(conf.timeout) > 0:
        raise SweeperConfigError(f"hydra.sweeper.timeout: must be > 0 seconds or null (no time limit), got {conf.timeout}")
    if conf.n_jobs is not None and int(conf.n_jobs) < 1:
        raise SweeperConfigError(
            f"hydra.sweeper.n_jobs: must be >= 1 or null (one per GPU, else one per CPU core), got {conf.n_jobs}")
    if conf.get("objective_at", "best") not in ("best", "last"):
        raise SweeperConfigError(f"hydra.sweeper.objective_at: must be best or last, got {conf.objective_at!r}")
    limit = conf.get("max_memory_gb")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit > 0):
        raise SweeperConfigError(f"hydra.sweeper.max_memory_gb: must be a number of GiB > 0 or null (no limit), got {limit!r}")
    if int(conf.max_retry) < 0:
        raise SweeperConfigError(f"hydra.sweeper.max_retry: must be >= 0, got {conf.max_retry}")
    retry_s = conf.get("store_retry_s", 120.0)
    if isinstance(retry_s, bool) or not isinstance(retry_s, (int, float)) or not 0 <= float(retry_s) < float("inf"):
        raise SweeperConfigError(
            f"hydra.sweeper.store_retry_s: must be a number of seconds >= 0 (0 = fail on the first store error), got {retry_s!r}")
    if not 0.0 <= float(conf.max_failure_rate) <= 1.0:
        raise SweeperConfigError(f"hydra.sweeper.max_failure_rate: must be in [0, 1], got {conf.max_failure_rate}")
    for name in objectives:
        if not (name.startswith("eval_") or name in _NON_METRIC_OBJECTIVES):
            raise SweeperConfigError(
                f"hydra.sweeper.objectives: {name!r} is not a trial metric; allowed: eval_<metric> "
                f"(eval_accuracy, eval_macro_f1, eval_loss, eval_perplexity) or {', '.join(_NON_METRIC_OBJECTIVES)}"
            )
    try:
        plan_for(conf)
    except DeviceError as exc:
        raise SweeperConfigError(str(exc)) from None
    make_sampler(conf.sampler, 0, space, len(objectives), kwargs_of(conf.sampler_kwargs))
    make_pruner(conf.pruner, kwargs_of(conf.pruner_kwargs), prune_guard(conf))
    if str(conf.pruner).lower() == "wilcoxon" and (len(objectives) != 1 or objectives[0] not in ROW_MEAN_OBJECTIVES):
        raise SweeperConfigError(
            f"hydra.sweeper.pruner: wilcoxon pairs the trials' scores on each eval row, so it needs one objective "
            f"that is a mean over eval rows ({', '.join(ROW_MEAN_OBJECTIVES)}); got {', '.join(objectives)}")
    race = conf.get("race")
    if race is not None and race.enabled:
        if len(objectives) > 1:
            raise SweeperConfigError("hydra.sweeper.race: races one objective; with several objectives the "
                                     "Pareto front has no single winner to race for (set race.enabled=false)")
        if int(race.top_k) < 2 or int(race.max_runs) < 2 * int(race.top_k) or not 0 < float(race.alpha) < 1:
            raise SweeperConfigError(
                "hydra.sweeper.race: needs top_k >= 2, max_runs >= 2 x top_k (two rounds) and alpha in (0, 1), got "
                f"top_k={race.top_k}, max_runs={race.max_runs}, alpha={race.alpha}")
    reproduce = conf.reproduce
    if int(reproduce.top_k) < 0 or int(reproduce.n_seeds) < 0:
        raise SweeperConfigError("hydra.sweeper.reproduce.top_k / n_seeds: must be >= 0")
    if reproduce.get("design", "paired") not in ("crossed", "paired", "one_at_a_time"):
        raise SweeperConfigError(
            f"hydra.sweeper.reproduce.design: {reproduce.design!r} is not allowed; allowed: crossed (every config on "
            "S init seeds x S data-order seeds), paired (every config on the same S^2 fresh seed pairs), "
            "one_at_a_time (S seeds per kind in seed_kinds)")
    if reproduce.get("design", "paired") == "crossed" and int(reproduce.top_k) > 0 and int(reproduce.n_seeds) == 1:
        raise SweeperConfigError("hydra.sweeper.reproduce.n_seeds: the crossed design needs at least 2 (a 2 x 2 grid "
                                 "of init and data-order seeds) to separate the two sources; got 1")
    if reproduce.get("design", "paired") == "paired" and int(reproduce.top_k) > 0 and int(reproduce.n_seeds) == 1:
        raise SweeperConfigError("hydra.sweeper.reproduce.n_seeds: the paired design needs at least 2 (2^2 = 4 seed "
                                 "pairs per config) for an interval and a lead test; got 1")
    for kind in reproduce.seed_kinds:
        if kind not in ("seed", "data_seed", "both"):
            raise SweeperConfigError(
                f"hydra.sweeper.reproduce.seed_kinds: {kind!r} is not allowed; allowed: seed, data_seed, both"
            )


def config_variants(space: SearchSpace) -> list[tuple[str, Any]]:
    """(key, value) pairs worth checking: every choice and both ends of every range."""
    return [(key, value) for key, values in space.extremes().items() for value in values]


class Preflight(NamedTuple):
    """What the pre-flight hands on: the memory estimate of the largest trial (MiB), the job
    config and trial composition with the LLM defaults (`auto` keys) resolved, and the search
    space with its learning-rate prior range (tag(lr_prior, ...)) in rates."""

    largest_mb: float
    job: DictConfig
    compose: ComposeSpec
    space: SearchSpace


def print_llm_defaults(defaults: Any) -> None:
    """The `auto` keys and the numbers they resolved to (trainer.llm_defaults.LlmDefaults)."""
    if defaults.values:
        console.print("[bold]LLM defaults[/] (auto; set a key to override it):")
        for line in defaults.lines():
            console.print(f"  {escape(line)}")


def with_resolved_defaults(job: DictConfig, space: SearchSpace, compose: ComposeSpec, composer: Composer,
                           defaults: Any) -> tuple[DictConfig, ComposeSpec, Composer]:
    """The job, trial composition and pre-flight composer with `defaults` applied. A trial gets
    them as overrides of its composition (so its logged config.yaml holds the numbers); a key the
    search space sets is left to the space."""
    if not defaults.values:
        return job, compose, composer
    swept = set(space.distributions) | set(space.fixed)
    lines = tuple(override_line(k, v) for k, v in defaults.values.items() if k not in swept)
    compose = dataclasses.replace(compose, overrides=tuple(compose.overrides) + lines)
    return defaults.apply(job), compose, lambda params: defaults.apply(composer(params))


@traced("sweep.preflight")
def preflight_sweep(conf: DictConfig, job: DictConfig, space: SearchSpace, compose: ComposeSpec,
                   objectives: list[str], composer: Composer) -> Preflight:
    """Static checks on the sweeper settings, then on the job config under every search-space
    extreme (validate_config), then on the real model and data (trainer.preflight), which also
    resolves the LLM defaults once for the whole sweep. Returns the estimated peak memory (MiB) of
    the largest trial (every key at its costliest extreme at once) and the resolved job and
    composition."""
    import trainer

    space = resolve_space_prior(space, job)
    check_sweeper_settings(conf, space, objectives)
    trainer.validate_config(job)
    report = trainer.preflight(job)
    print_llm_defaults(report.llm_defaults)
    job, compose, composer = with_resolved_defaults(job, space, compose, composer, report.llm_defaults)
    note = data_fit_note(report.data_stats)
    if note:
        console.print(note)
    device = "cuda" if plan_for(conf).on_gpu else "cpu"  # what the workers' memory is measured in
    largest = report.estimate_memory_mb(job, device=device)
    costliest: dict[str, tuple[float, Any]] = {}
    cheapest: dict[str, tuple[float, Any]] = {}
    for key, value in config_variants(space):
        where = f" (from hydra.sweeper.params {key}={value!r})"
        try:
            variant = composer({**space.fixed, key: value})
            trainer.validate_config(variant)
            estimate = trainer.preflight(variant).estimate_memory_mb(variant, device=device)
        except trainer.ConfigError as exc:
            raise SweeperConfigError(f"{exc}{where}") from None
        largest = max(largest, estimate)
        if key not in costliest or estimate > costliest[key][0]:
            costliest[key] = (estimate, value)
        if key not in cheapest or estimate < cheapest[key][0]:
            cheapest[key] = (estimate, value)
    try:  # the extremes together (r=64 with all_linear and the longest batch): what auto packing must fit
        combined = composer({**space.fixed, **{k: v for k, (_, v) in costliest.items()}})
        largest = max(largest, trainer.preflight(combined).estimate_memory_mb(combined, device=device))
    except trainer.ConfigError:
        pass  # a combination the space never samples together; the single extremes stand
    if conf.get("max_memory_gb") is not None:
        check_memory_limit(float(conf.max_memory_gb), largest, {k: v for k, (_, v) in cheapest.items()},
                           space, composer, device)
    return Preflight(largest, job, compose, space)


def resolve_space_prior(space: SearchSpace, job: DictConfig) -> SearchSpace:
    """The space's tag(lr_prior, ...) ranges in rates for the job's model, printed."""
    resolved, _ = resolve_lr_prior(space, job)
    for key in space.prior_multiples:
        console.print(f"[bold]learning-rate prior[/] {escape(key)}: {escape(resolved.grammar[key])}")
    return resolved


def check_memory_limit(limit_gb: float, largest_mb: float, cheapest: dict[str, Any], space: SearchSpace,
                       composer: Composer, device: str) -> None:
    """hydra.sweeper.max_memory_gb: refuse a space where even the cheapest config is estimated over
    the limit (every trial would be skipped); otherwise say that the costlier ones will be."""
    import trainer

    config = composer({**space.fixed, **cheapest})
    smallest_gb = trainer.preflight(config).estimate_memory_mb(config, device=device) / 1024
    if smallest_gb > limit_gb:
        chosen = ", ".join(f"{k}={v!r}" for k, v in cheapest.items()) or "the base config"
        raise SweeperConfigError(
            f"hydra.sweeper.max_memory_gb: {limit_gb:g} GiB is below the estimate of the cheapest config of the "
            f"search space ({chosen}: {smallest_gb:.2f} GiB); every trial would be skipped. Raise the limit or "
            "narrow the space (smaller batch_size, max_seq_length, r, fewer target modules)")
    if largest_mb / 1024 > limit_gb:
        console.print(f"max_memory_gb={limit_gb:g}: configs estimated over it are skipped before they start "
                      f"(recorded as constraint-violating trials; the largest is about {largest_mb / 1024:.2f} GiB)")

