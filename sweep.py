"""Entry point.

    python sweep.py -m            # an Optuna sweep over conf/search_space (our Hydra sweeper)
    python sweep.py               # one fine-tune with the composed config, logged to MLflow
    python sweep.py --info plugins  # shows that Hydra discovered `LoraOptunaSweeper`

Stores (Optuna journal, MLflow SQLite) land in the directory you run from.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run from a clone (or an editable install) the namespace package `hydra_plugins/` beside this file
# must be importable for Hydra's plugin scan; a regular install has it in site-packages already.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import trainer  # noqa: E402,F401  (registers the ${pkg_path:...} config resolver)


@hydra.main(version_base="1.3", config_path="conf", config_name="sweep")
def main(cfg: DictConfig) -> float:
    """Single-run mode (without -m): one fine-tune, one MLflow run. Multirun goes to the sweeper."""
    from sweeps.single_run import run_single

    return run_single(cfg)


if __name__ == "__main__":
    from hydra_plugins.lora_optuna_sweeper.lora_optuna_sweeper import accept_optuna_sweeper_target
    from sweeps.runtime.fast_exit import exit_now

    accept_optuna_sweeper_target()
    try:
        main()
    except SystemExit as exc:  # Hydra exits 1 after printing a config error
        exit_now(exc.code)
    exit_now(0)
