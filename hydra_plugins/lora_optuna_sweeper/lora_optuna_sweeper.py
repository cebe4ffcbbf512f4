"""Thin shim: registers `hydra/sweeper: lora_optuna` and defers everything else to `sweeps.sweeper`.

Hydra imports every module under `hydra_plugins` at start-up, so this file stays cheap.
"""

from __future__ import annotations

from typing import Any, List, Optional

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

import sweeps.sweeper_config  # noqa: F401  (registers the config node)


class LoraOptunaSweeper(Sweeper):
    def __init__(self, **conf: Any) -> None:
        from sweeps.sweeper import Sweep

        self._sweep = Sweep(conf)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self._sweep.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Optional[Any]:
        return self._sweep.run(arguments)
