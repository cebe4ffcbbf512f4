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

hydra-optuna-sweeper's older dict form (`hydra.sweeper.search_space`, see `dict_search_space`) is
read with that plugin's meaning too.
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
    custom: Any = None  # sweeps.search.custom_space.CustomSearchSpace: hydra.sweeper.custom_search_space
    # key -> its distribution in multiples of the learning-rate prior (tag(lr_prior, ...)), until
    # resolve_prior() turns it into rates, at the pre-flight
    prior_multiples: dict[str, BaseDistribution] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.distributions or self.prior_multiples) or self.custom is not None

    def without(self, keys: set[str]) -> "SearchSpace":
        """A copy with `keys` no longer searched (their config values apply)."""
        return SearchSpace({k: d for k, d in self.distributions.items() if k not in keys}, dict(self.fixed),
                           {k: g for k, g in self.grammar.items() if k not in keys or k in self.fixed}, self.custom,
                           {k: d for k, d in self.prior_multiples.items() if k not in keys})

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
        return SearchSpace({k: merged[k] for k in order if k in merged}, dict(self.fixed), grammar, self.custom)

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


DICT_TYPES = ("int", "float", "categorical")
DICT_FIELDS = ("type", "choices", "low", "high", "log", "step")


def _dict_distribution(key: str, entry: Any) -> BaseDistribution:
    """One `hydra.sweeper.search_space` entry → its distribution, as hydra-optuna-sweeper 1.1-1.3
    built it (`create_optuna_distribution_from_config`): int bounds are cast to int and step
    defaults to 1; with `log: true` the step is not used (Optuna cannot step a log scale)."""
    where = f"hydra.sweeper.search_space.{key}"
    if not isinstance(entry, Mapping):
        raise SearchSpaceError(f"{where}: expected a mapping such as {{type: float, low: 1e-4, high: 1e-2, log: true}}, "
                               f"got {entry!r}")
    unknown = sorted(set(entry) - set(DICT_FIELDS))
    if unknown:
        raise SearchSpaceError(f"{where}: unknown field(s) {', '.join(map(str, unknown))}; allowed: {', '.join(DICT_FIELDS)}")
    kind = entry.get("type")
    if kind not in DICT_TYPES:
        raise SearchSpaceError(f"{where}.type: {kind!r} is not allowed; allowed: {', '.join(DICT_TYPES)}")
    if kind == "categorical":
        choices = entry.get("choices")
        if not choices or isinstance(choices, (str, Mapping)):
            raise SearchSpaceError(f"{where}.choices: a categorical entry needs a non-empty list, got {choices!r}")
        for choice in choices:
            if not isinstance(choice, (str, int, float, bool, type(None))):
                raise SearchSpaceError(f"{where}.choices: scalars only, got {choice!r}")
        return CategoricalDistribution(list(choices))
    low, high, log, step = entry.get("low"), entry.get("high"), bool(entry.get("log") or False), entry.get("step")
    for name, value in (("low", low), ("high", high), ("step", step)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise SearchSpaceError(f"{where}.{name}: must be a number, got {value!r}")
    if low is None or high is None:
        raise SearchSpaceError(f"{where}: a {kind} entry needs low and high")
    if low > high:
        raise SearchSpaceError(f"{where}: needs low <= high, got low={low}, high={high}")
    if log and low <= 0:
        raise SearchSpaceError(f"{where}: log: true needs low > 0, got low={low}")
    if step is not None and not log and step <= 0:
        raise SearchSpaceError(f"{where}.step: must be > 0, got {step}")
    if kind == "int":
        if log:
            return IntDistribution(int(low), int(high), log=True)
        return IntDistribution(int(low), int(high), step=int(step) if step is not None else 1)
    if log:
        return FloatDistribution(float(low), float(high), log=True)
    return FloatDistribution(float(low), float(high), step=None if step is None else float(step))


def dict_search_space(entries: Mapping[str, Any] | None) -> SearchSpace:
    """`hydra.sweeper.search_space` (hydra-optuna-sweeper's dict form, `{key: {type, low, high,
    step, log, choices}}`) → a space; each key's grammar is the entry as written."""
    space = SearchSpace()
    for key, entry in (entries or {}).items():
        space.distributions[str(key)] = _dict_distribution(str(key), entry)
        fields = ", ".join(f"{k}: {v}" for k, v in entry.items())
        space.grammar[str(key)] = "{" + fields + "}"
    return space


def merged(base: SearchSpace, top: SearchSpace) -> SearchSpace:
    """`base` with `top`'s keys added; a key in both takes `top`'s entry."""
    out = SearchSpace(dict(base.distributions), dict(base.fixed), dict(base.grammar), base.custom or top.custom,
                      dict(base.prior_multiples))
    for key in top.grammar:
        out.distributions.pop(key, None)
        out.fixed.pop(key, None)
        out.prior_multiples.pop(key, None)
        out.grammar[key] = top.grammar[key]
        if key in top.prior_multiples:
            out.prior_multiples[key] = top.prior_multiples[key]
        elif key in top.distributions:
            out.distributions[key] = top.distributions[key]
        elif key in top.fixed:
            out.fixed[key] = top.fixed[key]
    return out


def pin_plain_overrides(space: SearchSpace, plain: list[str], sweep_overrides: list[str] = ()) -> SearchSpace:
    """A plain command-line value of a searched key fixes it (`python sweep.py -m lora.r=8`): the
    key leaves the space and that value applies to every trial, as in hydra-optuna-sweeper. A key
    the command line also sweeps stays searched: its plain value is the base config's
    (`'train.batch_size=choice(2,64)' train.batch_size=64`: the base trial runs at 64)."""
    if not plain:
        return space
    parser = OverridesParser.create()
    swept = {o.get_key_element() for o in parser.parse_overrides(list(sweep_overrides))}
    pinned = {}
    for override in parser.parse_overrides(list(plain)):
        if override.is_delete() or override.is_sweep_override():
            continue
        key = override.get_key_element()
        if key in swept:
            continue
        if key in space.distributions or key in space.prior_multiples:
            pinned[key] = override.value()
    if not pinned:
        return space
    out = space.without(set(pinned))
    for key, value in pinned.items():
        out.fixed[key] = value
        out.grammar[key] = str(value)
    return out


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


def inside(dist: BaseDistribution, value: Any) -> bool:
    """Whether `dist` can hold the config value `value` (a bool is no number here)."""
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
        if inside(dist, value):
            params[key] = value
        else:
            outside.append(f"{key}={value!r} not in {space.grammar.get(key, type(dist).__name__)}")
    return params, outside
