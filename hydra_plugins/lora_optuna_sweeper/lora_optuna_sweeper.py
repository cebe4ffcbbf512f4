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


# hydra-optuna-sweeper's class, as lightning-hydra-template's `hparams_search/*_optuna.yaml` names it
# in `hydra.sweeper._target_`. Our `conf/sweep.yaml` selects `hydra/sweeper: lora_optuna` and that
# choice wins over such a file's `override /hydra/sweeper: optuna`, so only the class name is left.
OPTUNA_SWEEPER_TARGET = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"


class OptunaSweeperConfigSweeper(LoraOptunaSweeper):
    """Our sweeper, run from a config whose `_target_` names hydra-optuna-sweeper's class."""

    def __init__(self, **conf: Any) -> None:
        from sweeps.progress import console

        console.print("hydra.sweeper._target_ names hydra-optuna-sweeper's OptunaSweeper: this project's sweeper "
                      "(lora_optuna) runs the sweep, reading that plugin's settings with the same meaning")
        super().__init__(**conf)


def accept_optuna_sweeper_target() -> None:
    """In `python sweep.py`, let `_target_: <hydra-optuna-sweeper's class>` instantiate our sweeper
    (installed or not, that plugin would run the trials through Hydra's launcher, not our workers)."""
    from hydra.core.plugins import Plugins

    Plugins.instance().class_name_to_class[OPTUNA_SWEEPER_TARGET] = OptunaSweeperConfigSweeper
