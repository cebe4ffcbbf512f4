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

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

from sweeps.runtime.compose import ComposeSpec
from sweeps.search.samplers import SweeperConfigError, normalize_sampler_config
from sweeps.search.space import (SearchSpace, dict_search_space, merged, parse_search_space, pin_plain_overrides,
                                 split_overrides)
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
        space = self.search_space(conf, sweep_overrides, plain, job)
        objectives, directions = resolve_objectives(conf, job)
        compose = ComposeSpec(self.config_dir(), str(self.config.hydra.job.config_name), tuple(plain))
        if not conf.dry_run:
            warm_up_workers(conf)
        if space.custom is not None:
            check_custom_search_space(conf, space, self.compose_variant(plain))
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

    # -- the search space ---------------------------------------------------------------------------
    def search_space(self, conf: DictConfig, sweep_overrides: list[str], plain: list[str], job: DictConfig) -> SearchSpace:
        """hydra.sweeper.params (or hydra-optuna-sweeper's dict form `search_space`) with the
        command line's sweeps on top; a plain command-line value of a searched key fixes it; the
        custom_search_space function; the seeds leave the space when the race replicates them."""
        from sweeps.runtime.race import seeds_as_replicates

        space = parse_search_space(OmegaConf.to_container(conf.params, resolve=False) or {}, sweep_overrides)
        if conf.get("search_space") is not None:
            space = self.dict_form_space(conf, space, sweep_overrides, plain)
        space = pin_plain_overrides(space, plain, sweep_overrides)
        if conf.get("custom_search_space"):
            from sweeps.search.custom_space import CustomSearchSpace, load_function

            load_function(str(conf.custom_search_space))  # a wrong path stops the sweep here, not in a worker
            space.custom = CustomSearchSpace(str(conf.custom_search_space), self.search_config())
        return seeds_as_replicates(conf, space, job)

    def dict_form_space(self, conf: DictConfig, space: SearchSpace, sweep_overrides: list[str],
                        plain: list[str]) -> SearchSpace:
        """hydra.sweeper.search_space, with hydra-optuna-sweeper's meaning: it defines the space
        when params are not given (the command line's sweeps still add to it and win per key), and
        is ignored with a warning when they are. Params that only the `search_space` config group
        gives are this project's default space, not yours: the dict form replaces them."""
        from sweeps.progress import console

        own = self.params_outside_group(plain)
        if own:
            console.print(
                f"[yellow]hydra.sweeper.search_space is ignored: hydra.sweeper.params is set too ({', '.join(own)}); "
                "as in hydra-optuna-sweeper, params define the search space. Move the search_space entries into "
                "params (override grammar), or give only search_space")
            return space
        group = str(self.config.hydra.runtime.choices.get("search_space", "none"))
        replaced = list(OmegaConf.to_container(conf.params, resolve=False) or {})
        if replaced:
            console.print(f"search space: hydra.sweeper.search_space (hydra-optuna-sweeper's dict form) in place of "
                          f"the search_space={group} group's keys ({', '.join(replaced)})")
        return merged(dict_search_space(OmegaConf.to_container(conf.search_space, resolve=True)),
                      parse_search_space({}, sweep_overrides))

    def params_outside_group(self, plain: list[str]) -> list[str]:
        """The keys of hydra.sweeper.params that your configs give (composed without the
        `search_space` group: an experiment file's params, a `hydra.sweeper.params.*` override)."""
        choices = self.config.hydra.runtime.choices
        params = self.config.hydra.sweeper.get("params") or {}
        if str(choices.get("search_space", "none")) in ("none", "None") or not params:
            return list(params)
        parser = OverridesParser.create()
        kept = [text for text, o in zip(plain, parser.parse_overrides(plain)) if o.key_or_group != "search_space"]
        cfg = self.config_loader.load_sweep_config(self.config, kept + ["search_space=none"])
        return list(cfg.hydra.sweeper.get("params") or {})

    def search_config(self) -> dict[str, Any]:
        """The config hydra-optuna-sweeper hands its custom_search_space function: the sweep's
        composed config, `hydra` node included, resolved here (workers have no Hydra context)."""
        cfg = copy.deepcopy(self.config)
        try:
            OmegaConf.resolve(cfg)
        except Exception:  # noqa: BLE001 - an interpolation that needs a trial's context stays as written
            pass
        return OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)

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


PROBES = 8  # draws of the custom_search_space function checked before the first trial


def check_custom_search_space(conf: DictConfig, space: SearchSpace, composer) -> None:
    """Before any trial: the custom_search_space function runs on a probe trial (an in-memory
    study) and the config it yields composes, so a wrong key or a function that raises is named
    here instead of failing every trial."""
    from sweeps.search.custom_space import OPTION, probe

    path = space.custom.path
    if str(conf.sampler) == "grid":
        raise SweeperConfigError(f"{OPTION}={path}: sampler=grid needs every value listed beforehand; a function's "
                                 "params cannot be gridded (use tpe, random, qmc, ...)")
    import trainer

    seen: set[frozenset[str]] = set()
    for seed in range(PROBES):  # several draws, so that more of a conditional space's branches are tried
        params, _ = probe(space.custom, space.distributions, dict(space.fixed), seed=seed)
        added = frozenset(k for k in params if k not in space.distributions)
        if added in seen:
            continue
        seen.add(added)
        where = f"{OPTION}={path}: the params it suggested ({', '.join(sorted(added)) or 'none'})"
        try:
            variant = composer({**space.fixed, **params})
        except Exception as exc:  # noqa: BLE001 - Hydra's composition error names the key
            raise SweeperConfigError(f"{where} do not apply to the config: {exc}. A key the config lacks needs a "
                                     "leading + (trial.suggest_float('+my.key', ...))") from None
        try:
            trainer.validate_config(variant)
        except trainer.ConfigError as exc:
            raise SweeperConfigError(f"{where} make an invalid config: {exc}") from None


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
    if space.custom is not None:  # another function is another problem (absent otherwise: names stay as they were)
        problem["custom_search_space"] = space.custom.path
    problem["objectives"] = [objectives, directions]
    return default_study_name(str(job.mlflow.experiment_name), json.loads(json.dumps(problem, default=str)))
