"""The `hydra/sweeper: lora_optuna` config node (every `hydra.sweeper.*` key, with its default)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class ReproduceConf:
    top_k: int = 0               # after the search, re-run the K best configs ...
    n_seeds: int = 0             # ... on S^2 fresh (init, data-order) seed pairs shared by the configs (paired design)
    design: str = "paired"       # paired (the stronger lead test, no init/data split) | crossed (S init x S data-order seeds per config: splits init from data-order variance) | one_at_a_time (S runs per kind in seed_kinds); a study whose reproduction already ran keeps its design
    seed_kinds: List[str] = field(default_factory=lambda: ["seed", "data_seed", "both"])  # one_at_a_time only
    determinism_check: bool = True  # also re-run the winner with its own seeds (bitwise check)


@dataclass
class RaceConf:
    enabled: bool = False        # race the best configs on fresh seeds after the search (see sweeps/runtime/race.py)
    top_k: int = 3               # configs that enter the race
    max_runs: int = 24           # race runs at most (rounds = max_runs // top_k, one seed pair each)
    alpha: float = 0.05          # race-wide chance of dropping the best config (each of several tied for best)
    search_seeds: bool = False   # false: seed / data_seed leave the search space while the race is on (every
                                 # trial runs at the base config's seeds; the race's fresh seeds are the replicates)


@dataclass
class LoraOptunaSweeperConf:
    _target_: str = "hydra_plugins.lora_optuna_sweeper.lora_optuna_sweeper.LoraOptunaSweeper"
    # Hydra must not instantiate the nested `_target_` nodes (hydra-optuna-sweeper's sampler/pruner
    # form): the sweeper translates them to short names (sweeps.search.samplers.normalize_sampler_config).
    _recursive_: bool = False
    n_trials: int = 10                  # finished (complete + pruned) trials, across all workers and machines
    timeout: Optional[float] = None     # seconds of wall clock for the search: no trial starts after it, running ones finish
    n_jobs: Optional[int] = None        # worker processes on this machine; null = one per GPU, else one per CPU core
    workers_per_device: Any = 1         # GPU workers per device: 1 | N | auto (as many as the largest config's memory estimate fits)
    devices: Optional[List[Any]] = None # indices into this process's visible GPUs, one worker each; null = all (Any: the pre-flight explains a non-index)
    direction: Any = None               # maximize | minimize | a list for several objectives; null = task.direction
    objectives: Optional[List[str]] = None  # null = [eval_<task.metric>]; e.g. [eval_accuracy, trainable_params]
    study_name: Optional[str] = None    # null = <mlflow.experiment_name>-<hash of config + space>
    storage: Optional[str] = None       # null = journal file ./optuna-journal.log; or postgresql://...
    sampler: Any = "tpe"                # tpe | random | grid | cmaes | gp | nsgaii | qmc, or {_target_: optuna.samplers.TPESampler, seed: .., ...}
    sampler_seed: Optional[int] = 0
    sampler_kwargs: Any = None          # extra sampler arguments, e.g. {n_startup_trials: 5}
    pruner: Any = "median"              # median | hyperband | successive_halving | percentile | threshold | wilcoxon | conformal | none, or {_target_: optuna.pruners.MedianPruner, ...}
    prune_after: float = 0.5            # no trial is pruned before this fraction of its optimizer steps
    prune_min_trials: int = 4           # ... nor before this many trials completed
    prune_false_kill: float = 0.05      # pruner=conformal: target rate of pruned trials that would have beaten the incumbent
    prune_patience: Optional[int] = None  # also require this many evals without improvement (Optuna's PatientPruner)
    pruner_kwargs: Any = None           # extra pruner arguments, e.g. {min_resource: 2, reduction_factor: 3}
    include_base: bool = True           # the composed config (defaults + your overrides) runs as the first trial
    startup: str = "informed"           # informed: the first n_startup_trials (the base trial among them) train the prior's
                                        # config with the learning rate spread over its range, then the sampler takes over |
                                        # random: the sampler's own start-up (the default before 2026-12)
    objective_at: str = "best"          # best: a trial scores its best eval and keeps that eval's adapter | last
    max_retry: int = 1                  # retries of a trial whose worker died
    max_failure_rate: float = 0.5       # abort once failed trials exceed this fraction of n_trials
    max_memory_gb: Optional[float] = None  # per worker device: configs the pre-flight estimates over it are skipped
    oom_retry: bool = True              # on CUDA OOM retry once with half micro-batch, 2x accumulation
    heartbeat_interval: int = 30        # RDB storages: seconds between trial heartbeats
    store_retry_s: float = 120.0        # ride out a database/MLflow outage this long (retries with back-off), then stop the workers and fail
    dry_run: bool = False               # validate, print the space and samples, train nothing
    reproduce: ReproduceConf = field(default_factory=ReproduceConf)
    race: RaceConf = field(default_factory=RaceConf)
    params: Dict[str, Any] = field(default_factory=dict)  # the search space (Hydra override grammar)
    # hydra-optuna-sweeper's dict form, {key: {type: int|float|categorical, low, high, step, log, choices}}: the
    # space when your configs give no params (it then replaces the search_space group's keys); ignored, with a
    # warning, when they do (as there)
    search_space: Optional[Dict[str, Any]] = None
    custom_search_space: Optional[str] = None  # module.function(cfg, trial) suggesting more params (conditional spaces)


ConfigStore.instance().store(group="hydra/sweeper", name="lora_optuna", node=LoraOptunaSweeperConf, provider="lora_sweep")
