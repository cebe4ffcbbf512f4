"""`hydra.sweeper.startup`: how a study's first trials are chosen.

- random: the sampler's own start-up (TPE: its first n_startup_trials are random draws).
- informed: the first n trials train one strong config, the prior's pick for every key (a
  categorical's first choice, the middle of a range: the spaces list the prior's pick first), with
  the learning rate, the dimension that moves LoRA results most, spread evenly (in log for a log
  range) over the space's learning-rate range (`centre`, `learning_rates`); then the sampler takes over with them as its history.
  n is the sampler's `n_startup_trials` (sampler_kwargs), else TPE's default, at most n_trials.
  The base config, when it runs, is one of the n: where it is that same config its learning rate
  takes the place of the nearest spread point.

The trials are enqueued once per study (the `informed_startup` study attribute, set under the
study's budget lock by the session that enqueues them): never again on a resume, from a second
machine, nor into a study whose search has already started.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Mapping

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from sweeps.search.space import SearchSpace

STARTUP_MODES = ("random", "informed")
DEFAULT_STARTUP = "informed"  # the replay's choice (bench/results/replay.md): the best arm on every table
LR_KEY = "train.learning_rate"
STUDY_ATTR = "informed_startup"  # study attribute: how many informed trials were enqueued
TRIAL_ATTR = "startup"           # trial attribute of those trials ...
INFORMED = "informed"            # ... with this value


def default_startup_trials() -> int:
    """TPE's own n_startup_trials default (read from Optuna, not copied)."""
    return int(inspect.signature(optuna.samplers.TPESampler).parameters["n_startup_trials"].default)


def startup_trials(sampler_kwargs: Mapping[str, Any] | None) -> int:
    """The start-up length: the sampler's n_startup_trials when given, else TPE's default."""
    given = (sampler_kwargs or {}).get("n_startup_trials")
    return int(given) if given is not None else default_startup_trials()


def informed_trials(sampler_kwargs: Mapping[str, Any] | None, n_trials: int) -> int:
    """How many trials an informed start-up places (the base trial among them): the start-up
    length, at most the sweep's budget. The sweeper, its dry run and the replay all count so."""
    return min(startup_trials(sampler_kwargs), int(n_trials))


def why_not_sampler(sampler: Any) -> str | None:
    """Why this sampler takes no informed start-up (None when it does): a grid decides every trial."""
    return "not with sampler=grid (the grid decides every trial)" if str(sampler) == "grid" else None


def centre(dist: BaseDistribution) -> Any:
    """The prior's pick of one key: a categorical's first choice, the middle of a range (the
    geometric middle of a log range), on the range's step; the low end of an integer range()
    (seeds and counts: seed=range(0, 4) trains seed 0, as the base config does)."""
    if isinstance(dist, CategoricalDistribution):
        return dist.choices[0]
    lo, hi = dist.low, dist.high
    if isinstance(dist, IntDistribution) and not dist.log:
        return lo
    mid = math.sqrt(lo * hi) if dist.log else (lo + hi) / 2
    if isinstance(dist, IntDistribution):
        return lo + int((mid - lo) // dist.step) * dist.step
    if dist.step is not None:
        return lo + round((mid - lo) / dist.step) * dist.step
    return float(f"{mid:.6g}")  # 0.06, not 0.060000000000000005, in the trial's config


def learning_rates(dist: BaseDistribution, k: int) -> list[float]:
    """`k` learning rates spread evenly over `dist`: the middles of k equal bins of the range (in
    log for a log range, so neither end, where a rate may diverge, is spent), or k of a numeric
    choice's values at even steps through them sorted. Ascending, 3 significant digits."""
    if k < 1:
        return []
    if isinstance(dist, FloatDistribution):
        if dist.log:
            lo, hi = math.log(dist.low), math.log(dist.high)
            return [float(f"{math.exp(lo + (i + 0.5) * (hi - lo) / k):.3g}") for i in range(k)]
        return [float(f"{dist.low + (i + 0.5) * (dist.high - dist.low) / k:.3g}") for i in range(k)]
    values = sorted(float(v) for v in dist.choices)
    if k >= len(values):
        return values
    return [values[round(i * (len(values) - 1) / (k - 1))] if k > 1 else values[len(values) // 2] for i in range(k)]


def why_not_informed(space: SearchSpace) -> str | None:
    """Why this space cannot have an informed start-up (None when it can)."""
    space.check_resolved()
    dist = space.distributions.get(LR_KEY)
    if dist is None:
        return f"the search space has no {LR_KEY} dimension to spread"
    if isinstance(dist, IntDistribution) or (isinstance(dist, CategoricalDistribution) and any(
            isinstance(v, bool) or not isinstance(v, (int, float)) for v in dist.choices)):
        return f"{LR_KEY} is not a range nor a choice of numbers"
    return None


def _spread_order(values: list[float], log: bool) -> list[float]:
    """`values` reordered so that any first few of them cover the range: the middle one first,
    then each time the one farthest from those already taken (several workers start the first
    few at once; a short budget runs only the first few)."""
    if not values:
        return []
    pos = [math.log(v) if log else v for v in values]
    middle = (pos[0] + pos[-1]) / 2
    taken = [min(range(len(values)), key=lambda i: (abs(pos[i] - middle), i))]
    while len(taken) < len(values):
        rest = [i for i in range(len(values)) if i not in taken]
        taken.append(max(rest, key=lambda i: (min(abs(pos[i] - pos[j]) for j in taken), -i)))
    return [values[i] for i in taken]


def _same(a: Any, b: Any) -> bool:
    """Equal values (floats up to rounding: a range's middle is computed)."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def informed_startup_params(space: SearchSpace, n: int, base: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The params of the informed start-up trials of `space` (resolved), in the order to run them.

    `n` start-up trials in all; `base`: the base config's params when it runs as a trial too (it
    is one of the n). Every key but the learning rate is at its `centre`; the learning rates are
    spread evenly over the range (`learning_rates`). A base at that same config takes the place
    of the nearest spread rate. Raises ValueError (with the reason) for a space without a
    learning-rate dimension to spread. Pure: the replay benchmark calls it on an in-memory study."""
    reason = why_not_informed(space)
    if reason:
        raise ValueError(f"hydra.sweeper.startup=informed: {reason}")
    dist = space.distributions[LR_KEY]
    fixed = {key: centre(d) for key, d in space.distributions.items() if key != LR_KEY}
    on_line = base is not None and all(_same(base.get(k), v) for k, v in fixed.items()) and LR_KEY in base
    count = n if on_line else n - (base is not None)
    rates = learning_rates(dist, max(count, 0))
    log = dist.log if isinstance(dist, FloatDistribution) else all(float(c) > 0 for c in dist.choices)
    if on_line and rates:
        at = math.log(base[LR_KEY]) if log else base[LR_KEY]
        rates.pop(min(range(len(rates)), key=lambda i: abs((math.log(rates[i]) if log else rates[i]) - at)))
    if isinstance(dist, CategoricalDistribution):
        rates = [next(c for c in dist.choices if float(c) == r) for r in rates]
    params = [{**fixed, LR_KEY: rate} for rate in _spread_order(rates, log)]
    return [{key: p[key] for key in space.distributions} for p in params]


def enqueue_informed_startup(study: optuna.Study, space: SearchSpace, n: int,
                             base: Mapping[str, Any] | None = None) -> tuple[list[dict[str, Any]], str]:
    """Enqueue the informed start-up trials into `study` once; returns (params enqueued, what
    happened, for the console). Call it under the study's budget lock when several processes
    may open the study at once, after the base trial is enqueued (`base`: its params)."""
    if STUDY_ATTR in study.user_attrs:
        return [], f"informed start-up: already enqueued ({study.user_attrs[STUDY_ATTR]} trials) in this study"
    started = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("base")]
    if started:
        return [], (f"informed start-up: not enqueued, the study already has {len(started)} trial(s) "
                    "(it applies to a new study)")
    reason = why_not_informed(space)
    if reason:
        return [], f"informed start-up: {reason}; the sampler's random start-up runs instead"
    params = informed_startup_params(space, n, base)
    for p in params:
        study.enqueue_trial(p, user_attrs={TRIAL_ATTR: INFORMED})
    study.set_user_attr(STUDY_ATTR, len(params))
    rates = sorted(p[LR_KEY] for p in params)
    span = f"{rates[0]:.3g}..{rates[-1]:.3g}" if rates else "none"
    with_base = " + the base config" if base is not None else ""
    return params, (f"informed start-up: {len(params)} trial(s){with_base} at the prior's config, "
                    f"{LR_KEY} spread over {span}; then the sampler takes over")
