"""A search space's `tag(lr_prior, ...)` learning-rate range, resolved for the sweep's model.

The space gives the range in multiples of the LoRA learning-rate prior (trainer/lr_prior.py); the
pre-flight, once the model is known, turns it into rates. Where the sweep trains DoRA or PiSSA
(lora.use_dora, lora.init_lora_weights=pissa, set in the config or fixed by the space) the range
follows that variant's prior; where the space searches the variant itself, it spans every variant's.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf
from optuna.distributions import CategoricalDistribution

from sweeps.search.space import SearchSpace, SearchSpaceError
from trainer.lr_prior import LrPrior, load_model_config, lr_prior, variant_of

def _values(job: DictConfig, space: SearchSpace, key: str) -> list[Any]:
    """Every value `key` takes in the sweep: the space's choices, its fixed value, or the config's."""
    if key in space.fixed:
        return [space.fixed[key]]
    dist = space.distributions.get(key)
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    value = OmegaConf.select(job, key, default=None)
    return [OmegaConf.to_container(value) if OmegaConf.is_config(value) else value]


def sweep_variants(job: DictConfig, space: SearchSpace) -> list[str]:
    """The LoRA variants (lora, dora, pissa) the sweep's trials can train, in a stable order."""
    found = {variant_of({"use_dora": dora, "init_lora_weights": init})
             for dora in _values(job, space, "lora.use_dora") for init in _values(job, space, "lora.init_lora_weights")}
    return sorted(found)


def resolve_lr_prior(space: SearchSpace, job: DictConfig, model_config: Any = None) -> tuple[SearchSpace, list[LrPrior]]:
    """`space` with its tag(lr_prior, ...) ranges in rates for `job`'s model (the same space when it
    has none), and the priors used. `model_config`: the transformers config, loaded when not given
    (config.json only: no weights, no network for a local folder)."""
    if not space.prior_multiples:
        return space, []
    keys = ", ".join(space.prior_multiples)
    model = OmegaConf.to_container(job.model, resolve=True)
    if model_config is None:
        try:
            model_config = load_model_config(model)
        except Exception as exc:  # noqa: BLE001 - a missing or unreadable model: say which key needed it
            raise SearchSpaceError(
                f"hydra.sweeper.params.{keys}: tag(lr_prior, ...) needs the model's hidden size from its config.json; "
                f"model.name_or_path={model.get('name_or_path')!r} could not be read: {type(exc).__name__}: {exc}"
            ) from None
    try:
        priors = [lr_prior(model, variant, model_config, key=f"hydra.sweeper.params.{keys}", asked="tag(lr_prior, ...)")
                  for variant in sweep_variants(job, space)]
    except ValueError as exc:  # ConfigError: a config without a hidden size
        raise SearchSpaceError(str(exc)) from None
    note = "; ".join(f"prior {p.rate:.3g}: {p.reason}" for p in priors)
    return space.resolve_prior([p.rate for p in priors], note), priors
