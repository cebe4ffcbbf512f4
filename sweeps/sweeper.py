"""`python sweep.py -m`: validate → open the study → start the workers → open the MLflow parent
(while the workers start) → search → (race) → (reproduce) → summary.

Our sweeper, unlike hydra-optuna-sweeper, never waits for a batch: each worker process asks for
its next trial the moment it is free, reports intermediate metrics for pruning, and the sweep
process supervises them (see `supervisor.py`). Trials run in workers, not through Hydra's
launcher: a trial is a whole QLoRA fine-tune and workers keep the base model warm between trials.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from sweeps.runtime.compose import ComposeSpec
from sweeps.search.samplers import SweeperConfigError, normalize_sampler_config
from sweeps.search.space import SearchSpace, parse_search_space, split_overrides
from sweeps.search.storage import mask_url, storage_url
from trainer.trace import traced


class Sweep:
    def __init__(self, conf: dict[str, Any]):
        self.conf = OmegaConf.create({k: v for k, v in conf.items() if k != "_target_"})
        self.config: DictConfig | None = None
        self.config_loader = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:  # noqa: ARG002
        self.config = config
        self.config_loader = hydra_context.config_loader

    # -- the steps ---------------------------------------------------------------------------
    def run(self, arguments: list[str]) -> None:
        from sweeps.preflight import preflight_sweep
        from sweeps.progress import console

        # hydra-optuna-sweeper's `_target_` sampler/pruner nodes → short names, before anything reads them
        self.conf = conf = normalize_sampler_config(self.conf)
        sweep_overrides, plain = split_overrides(list(arguments))
        job = self.job_config()
        space = parse_search_space(OmegaConf.to_container(conf.params, resolve=False) or {}, sweep_overrides)
        objectives, directions = resolve_objectives(conf, job)
        compose = ComposeSpec(self.config_dir(), str(self.config.hydra.job.config_name), tuple(plain))
        if not conf.dry_run:
            warm_up_workers(conf)
        largest_mb, job, compose, space = preflight_sweep(conf, job, space, compose, objectives,
                                                          self.compose_variant(plain))
        url = storage_url(conf.storage)
        study_name = conf.study_name or default_name(self.job_config(resolve=False), space, objectives, directions)
        if conf.dry_run:
            from sweeps.dry_run import print_dry_run

            print_dry_run(conf, job, space, compose, study_name, url, objectives, directions)
            return
        console.print(f"[bold]study[/] {study_name}  [bold]storage[/] {mask_url(url)}  "
                      f"[bold]mlflow[/] {mask_url(self.tracking_uri(job))}")
        from sweeps.reproduce import reproduce_step
        from sweeps.runtime.race import race_step
        from sweeps.runtime.session import SweepSession

        SweepSession(conf, job, space, compose, url=url, study_name=study_name, objectives=objectives,
                     directions=directions, tracking_uri=self.tracking_uri(job), trial_root=self.trial_root(),
                     largest_mb=largest_mb, after_search=(race_step, reproduce_step)).run()

    # -- helpers --------------------------------------------------------------------------------
    def job_config(self, resolve: bool = True) -> DictConfig:
        cfg = copy.deepcopy(self.config)
        with open_dict(cfg):
            del cfg["hydra"]
        if resolve:
            OmegaConf.resolve(cfg)
        return cfg

    def compose_variant(self, plain: list[str]):
        """Trial configs for the pre-flight, as Hydra composes them. Hydra composes once per
        combination of config-group choices; other keys are set on a copy of that composition
        (composing each of ~20 search-space extremes costs seconds before the first trial)."""
        from sweeps.search.space import override_line

        groups = {p.name for p in Path(self.config_dir()).iterdir() if p.is_dir()}
        bases: dict[tuple, DictConfig] = {}

        def hydra_compose(params: dict[str, Any]) -> DictConfig:
            overrides = list(plain) + [override_line(k, v) for k, v in params.items()]
            cfg = self.config_loader.load_sweep_config(self.config, overrides)
            with open_dict(cfg):
                del cfg["hydra"]
            return cfg

        @traced("sweep.compose_variant")
        def compose(params: dict[str, Any]) -> DictConfig:
            chosen = {k: v for k, v in params.items() if k in groups}
            key = tuple(sorted((k, repr(v)) for k, v in chosen.items()))
            if key not in bases:
                bases[key] = hydra_compose(chosen)
            cfg = copy.deepcopy(bases[key])
            try:
                for k, v in params.items():
                    if k not in chosen:
                        OmegaConf.update(cfg, k, v, merge=False)
            except Exception:  # a key the config lacks: let Hydra say so
                cfg = hydra_compose(params)
            OmegaConf.resolve(cfg)
            return cfg

        return compose

    def config_dir(self) -> str:
        for source in self.config.hydra.runtime.config_sources:
            if source.provider == "main" and source.schema == "file":
                return str(Path(source.path).resolve())
        raise SweeperConfigError("the primary config must live in a folder (--config-dir); package configs are not supported")

    def tracking_uri(self, job: DictConfig) -> str:
        from sweeps.tracking.runbook import tracking_uri

        return tracking_uri(job.mlflow.tracking_uri)

    def trial_root(self) -> str:
        path = Path(str(self.config.hydra.sweep.dir))
        return str(path if path.is_absolute() else Path(os.getcwd()) / path)


def warm_up_workers(conf: DictConfig) -> None:
    """CPU sweeps: start the workers' fork server now, so its imports overlap the pre-flight."""
    from sweeps.runtime.worker_plan import DeviceError, plan_for, start_fork_server

    try:
        on_gpu = plan_for(conf).on_gpu
    except DeviceError:
        return  # the pre-flight reports it
    if not on_gpu:
        start_fork_server()


def resolve_objectives(conf: DictConfig, job: DictConfig) -> tuple[list[str], list[str]]:
    """`objectives` and `direction` → equal-length lists (defaults from the task config)."""
    objectives = list(conf.objectives) if conf.objectives else [f"eval_{job.task.metric}"]
    from trainer.validation import task_direction

    direction = conf.direction
    if direction is None:
        directions = [task_direction(job.task)] + ["minimize"] * (len(objectives) - 1)
    elif isinstance(direction, str):
        directions = [direction]
    else:
        directions = [str(d) for d in direction]
    for d in directions:
        if d not in ("maximize", "minimize"):
            raise SweeperConfigError(f"hydra.sweeper.direction: {d!r} is not allowed; allowed: maximize, minimize")
    if len(directions) != len(objectives):
        raise SweeperConfigError(
            f"hydra.sweeper.direction: {len(directions)} direction(s) for {len(objectives)} objective(s) "
            f"{objectives}; give one direction per objective"
        )
    return objectives, directions


def default_name(job: DictConfig, space: SearchSpace, objectives: list[str], directions: list[str]) -> str:
    from sweeps.search.study import default_study_name

    problem = {k: v for k, v in OmegaConf.to_container(job, resolve=False).items() if k != "mlflow"}
    problem["search_space"] = space.grammar
    problem["objectives"] = [objectives, directions]
    return default_study_name(str(job.mlflow.experiment_name), json.loads(json.dumps(problem, default=str)))
