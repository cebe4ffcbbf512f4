"""Compose one trial's job config exactly as `python sweep.py` would (same conf dir, same
user overrides, plus the trial's own overrides), in any process."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sweeps.search.space import override_line
from trainer.trace import traced


@dataclass(frozen=True)
class ComposeSpec:
    config_dir: str
    config_name: str
    overrides: tuple[str, ...] = field(default_factory=tuple)  # the user's plain (non-sweep) overrides

    def with_params(self, params: dict[str, Any]) -> list[str]:
        return list(self.overrides) + [override_line(k, v) for k, v in params.items()]


@traced("sweep.compose")
def compose_job(spec: ComposeSpec, params: dict[str, Any]) -> DictConfig:
    """The job config (no `hydra` node) for `params` on top of the user's overrides."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import sweeps.sweeper_config  # noqa: F401  (the sweeper node referenced by conf/sweep.yaml)
    import trainer  # noqa: F401  (registers the ${pkg_path:...} resolver)

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=spec.config_dir, version_base="1.3", job_name="trial"):
        cfg = compose(config_name=spec.config_name, overrides=spec.with_params(params))
    OmegaConf.resolve(cfg)
    return cfg
