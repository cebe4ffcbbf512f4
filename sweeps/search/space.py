"""Hydra override grammar → Optuna distributions (hydra-optuna-sweeper compatible).

    choice(a, b, c) / a,b,c            → CategoricalDistribution (scalars only)
    range(start, stop[, step])         → Int/FloatDistribution over start..stop-step (stop is
                                         exclusive, as in Hydra and Python; HOS included stop)
    interval(lo, hi)                   → FloatDistribution; int(interval(lo, hi)) → IntDistribution
    tag(log, interval(lo, hi))         → the same on a log scale
    tag(log, lr_prior, interval(a, b)) → train.learning_rate from a x to b x the model's LoRA
                                         learning-rate prior (trainer/lr_prior.py), resolved at the
                                         sweep's pre-flight once the model is known; also
                                         tag(lr_prior, choice(0.5, 1, 2))
    key=value (no sweep)               → a fixed value applied to every trial
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

Scalar = str | int | float | bool | None
PRIOR_TAG = "lr_prior"  # tag(lr_prior, ...): the values are multiples of the learning-rate prior
PRIOR_KEYS = ("train.learning_rate",)


class SearchSpaceError(ValueError):
    """A search-space entry that cannot become an Optuna distribution (names the key)."""


@dataclass
class SearchSpace:
    """The swept keys (with their distributions) and the fixed overrides of a sweep."""

    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    fixed: dict[str, Scalar] = field(default_factory=dict)
    grammar: dict[str, str] = field(default_factory=dict)  # key -> the text the user wrote
    # key -> its distribution in multiples of the learning-rate prior (tag(lr_prior, ...)), until
    # resolve_prior() turns it into rates, at the pre-flight
    prior_multiples: dict[str, BaseDistribution] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.distributions or self.prior_multiples)

    def check_resolved(self) -> None:
        """SearchSpaceError naming any key still in multiples of the learning-rate prior."""
        for key in self.prior_multiples:
            raise SearchSpaceError(
                f"hydra.sweeper.params.{key}: {self.grammar.get(key, PRIOR_TAG)} is in multiples of the model's "
                "LoRA learning-rate prior, known once the model is: the sweep's pre-flight resolves it "
                "(sweeps.search.priors.resolve_lr_prior, or SearchSpace.resolve_prior(rates))")

    def resolve_prior(self, rates: list[float], note: str = "") -> "SearchSpace":
        """A copy with every tag(lr_prior, ...) key turned into rates: an interval of multiples
        (a, b) becomes a x min(rates) .. b x max(rates) (several rates: one per LoRA variant the
        sweep can train), a choice becomes every multiple of every rate (3 significant digits)."""
        if not self.prior_multiples:
            return self
        if not rates or any(not r > 0 for r in rates):
            raise SearchSpaceError(f"learning-rate prior: needs rates > 0, got {rates!r}")
        resolved: dict[str, BaseDistribution] = {}
        grammar = dict(self.grammar)
        for key, multiples in self.prior_multiples.items():
            if isinstance(multiples, CategoricalDistribution):
                values = sorted({float(f"{m * r:.3g}") for m in multiples.choices for r in rates})
                resolved[key] = CategoricalDistribution(values)
                text = f"choice({', '.join(f'{v:.3g}' for v in values)})"
            else:
                lo, hi = multiples.low * min(rates), multiples.high * max(rates)
                resolved[key] = FloatDistribution(lo, hi, log=multiples.log)
                text = f"{'log ' if multiples.log else ''}{lo:.3g}..{hi:.3g}"
            grammar[key] = f"{self.grammar.get(key, PRIOR_TAG)} = {text}" + (f" ({note})" if note else "")
        order = list(self.grammar) + [k for k in {**self.distributions, **resolved} if k not in self.grammar]
        merged = {**self.distributions, **resolved}
        return SearchSpace({k: merged[k] for k in order if k in merged}, dict(self.fixed), grammar)

    def grid(self) -> dict[str, list[Any]]:
        """Every value of each key, for the grid sampler (intervals cannot be gridded)."""
        self.check_resolved()
        out: dict[str, list[Any]] = {}
        for key, dist in self.distributions.items():
            if isinstance(dist, CategoricalDistribution):
                out[key] = list(dist.choices)
            elif isinstance(dist, IntDistribution) and not dist.log:
                out[key] = list(range(dist.low, dist.high + 1, dist.step))
            elif isinstance(dist, FloatDistribution) and dist.step is not None:
                n = int(round((dist.high - dist.low) / dist.step))
                out[key] = [dist.low + i * dist.step for i in range(n + 1)]
            else:
                raise SearchSpaceError(
                    f"hydra.sweeper.params.{key}: the grid sampler needs finite values; got a continuous "
                    f"{type(dist).__name__}. Allowed with sampler=grid: choice(...), range(...), a,b,c"
                )
        return out

    def extremes(self) -> dict[str, list[Any]]:
        """Values worth validating before any trial: every choice, both ends of a range."""
        self.check_resolved()
        out: dict[str, list[Any]] = {}
        for key, dist in self.distributions.items():
            if isinstance(dist, CategoricalDistribution):
                out[key] = list(dist.choices)
            else:
                out[key] = [dist.low, dist.high]
        return out


def _distribution(override: Override) -> BaseDistribution:
    key = override.get_key_element()
    value = override.value()
    if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
        choices = list(override.sweep_iterator())
        for choice in choices:
            if not isinstance(choice, (str, int, float, bool, type(None))):
                raise SearchSpaceError(
                    f"hydra.sweeper.params.{key}: choice() takes scalars only, got {choice!r}. "
                    "Sweep a list (e.g. target modules) through a named preset: choice(qv, attn, attn_mlp, all_linear)"
                )
        if not choices:
            raise SearchSpaceError(f"hydra.sweeper.params.{key}: empty choice()")
        return CategoricalDistribution(choices)
    if isinstance(value, RangeSweep):
        start, stop, step = value.start, value.stop, value.step
        if start is None or stop is None:
            raise SearchSpaceError(f"hydra.sweeper.params.{key}: range() needs a start and a stop")
        if any(isinstance(v, float) for v in (start, stop, step)):
            n = int(round((stop - start) / step))
            if n < 1:
                raise SearchSpaceError(f"hydra.sweeper.params.{key}: range({start}, {stop}, {step}) is empty")
            return FloatDistribution(float(start), float(start + (n - 1) * step), step=float(step))
        last = start + ((stop - start - 1) // step) * step
        if last < start:
            raise SearchSpaceError(f"hydra.sweeper.params.{key}: range({start}, {stop}) is empty")
        return IntDistribution(int(start), int(last), step=int(step))
    if isinstance(value, IntervalSweep):
        lo, hi = value.start, value.end
        log = "log" in value.tags
        if lo is None or hi is None or lo > hi:
            raise SearchSpaceError(f"hydra.sweeper.params.{key}: interval({lo}, {hi}) needs low <= high")
        if log and lo <= 0:
            raise SearchSpaceError(f"hydra.sweeper.params.{key}: tag(log, interval({lo}, {hi})) needs low > 0")
        if isinstance(lo, int) and isinstance(hi, int):
            return IntDistribution(lo, hi, log=log)
        return FloatDistribution(float(lo), float(hi), log=log)
    raise SearchSpaceError(
        f"hydra.sweeper.params.{key}: unsupported sweep {override.input_line!r}; allowed: "
        "choice(...), a,b,c, range(...), interval(...), int(interval(...)), tag(log, interval(...))"
    )


def parse_search_space(params: Mapping[str, Any] | None, cli_overrides: list[str] | None = None) -> SearchSpace:
    """Build the space from `hydra.sweeper.params` plus sweep overrides given on the command line.

    Command-line entries win over config entries for the same key.
    """
    lines = [f"{key}={value}" for key, value in (params or {}).items() if value is not None]
    lines += list(cli_overrides or [])
    space = SearchSpace()
    if not lines:
        return space
    parser = OverridesParser.create()
    for override in parser.parse_overrides(lines):
        key = override.get_key_element()
        space.distributions.pop(key, None)
        space.prior_multiples.pop(key, None)
        space.fixed.pop(key, None)
        space.grammar.pop(key, None)  # a command-line entry moves the key to the end, as Hydra orders it
        space.grammar[key] = override.get_value_string() if hasattr(override, "get_value_string") else str(override.input_line)
        if not override.is_sweep_override():
            space.fixed[key] = override.value()
        elif PRIOR_TAG in getattr(override.value(), "tags", ()):
            space.prior_multiples[key] = _prior_multiples(key, override)
        else:
            space.distributions[key] = _distribution(override)
    return space


def _prior_multiples(key: str, override: Override) -> BaseDistribution:
    """The distribution of a tag(lr_prior, ...) entry, in multiples of the prior (checked)."""
    if key not in PRIOR_KEYS:
        raise SearchSpaceError(f"hydra.sweeper.params.{key}: tag({PRIOR_TAG}, ...) scales the LoRA learning-rate "
                               f"prior; allowed on {', '.join(PRIOR_KEYS)} only")
    value = override.value()
    dist = _distribution(override)
    values = list(dist.choices) if isinstance(dist, CategoricalDistribution) else [dist.low, dist.high]
    if not isinstance(value, (IntervalSweep, ChoiceSweep)) or any(
            isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 for v in values):
        raise SearchSpaceError(
            f"hydra.sweeper.params.{key}: tag({PRIOR_TAG}, ...) takes positive multiples of the prior in "
            f"interval(a, b) or choice(...), e.g. tag(log, {PRIOR_TAG}, interval(0.25, 4)); got {override.input_line!r}")
    if isinstance(dist, CategoricalDistribution):
        return CategoricalDistribution([float(v) for v in values])
    return FloatDistribution(float(dist.low), float(dist.high), log=dist.log)


def split_overrides(arguments: list[str]) -> tuple[list[str], list[str]]:
    """Command-line arguments → (sweep overrides, plain overrides)."""
    parser = OverridesParser.create()
    sweeps, plain = [], []
    for text, override in zip(arguments, parser.parse_overrides(arguments)):
        (sweeps if override.is_sweep_override() else plain).append(text)
    return sweeps, plain


def override_line(key: str, value: Any) -> str:
    """A Hydra override that sets `key` to the sampled `value` exactly (strings quoted safely)."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    elif isinstance(value, (int, float)):
        text = repr(value)
    else:
        text = "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"
    return f"{key}={text}"


def suggest(trial, key: str, dist: BaseDistribution) -> Any:
    """Draw `key` from `dist` through the public Trial API (retried trials replay fixed params)."""
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(key, list(dist.choices))
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(key, dist.low, dist.high, step=dist.step, log=dist.log)


def _inside(dist: BaseDistribution, value: Any) -> bool:
    if isinstance(dist, CategoricalDistribution):
        return any(value == c and isinstance(value, bool) == isinstance(c, bool) for c in dist.choices)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(dist, IntDistribution):
        return float(value).is_integer() and dist.low <= value <= dist.high and (int(value) - dist.low) % dist.step == 0
    if isinstance(dist, FloatDistribution):
        if not dist.low <= value <= dist.high:
            return False
        return dist.step is None or abs(round((value - dist.low) / dist.step) * dist.step - (value - dist.low)) < 1e-9
    return False


def base_params(job: Any, space: SearchSpace) -> tuple[dict[str, Any], list[str]]:
    """The swept keys' values in the composed job config (the defaults plus the user's
    overrides), and a `key=value not in ...` note for each value the space cannot hold."""
    from omegaconf import OmegaConf

    params: dict[str, Any] = {}
    outside: list[str] = []
    for key, dist in space.distributions.items():
        value = OmegaConf.select(job, key, default=None)
        value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        if isinstance(dist, IntDistribution) and isinstance(value, float) and value.is_integer():
            value = int(value)
        if _inside(dist, value):
            params[key] = value
        else:
            outside.append(f"{key}={value!r} not in {space.grammar.get(key, type(dist).__name__)}")
    return params, outside
