"""A worker process: takes the next trial the moment its last one ends (no batch barrier),
runs it with a warm cache (`sweeps/runtime/trial.py` `run_one`), and streams its MLflow events
to the sweep process. This module is the process around the trials: its spec, pinning, signals,
the watchdog on the sweep process and the trial loop. docs/architecture.md draws it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field

from sweeps.runtime.compose import ComposeSpec
from sweeps.runtime.events import WorkerDone
from sweeps.runtime.stop import ABORT_SIGNAL, STOP, Interrupted, SweepGone
from sweeps.runtime.trial import run_one
from sweeps.search.pruning import PruneGuard
from sweeps.search.space import SearchSpace
from trainer import trace


@dataclass
class WorkerSpec:
    worker_id: int
    study_name: str
    storage_url: str
    n_trials: int
    space: SearchSpace
    compose: ComposeSpec
    objectives: list[str]
    trial_root: str
    sampler: str = "tpe"
    sampler_seed: int | None = 0
    sampler_kwargs: dict = field(default_factory=dict)
    pruner: str = "median"
    pruner_kwargs: dict = field(default_factory=dict)
    cuda_device: str | None = None   # value for CUDA_VISIBLE_DEVICES; None = leave as is
    threads: int | None = None       # torch CPU threads for this worker
    oom_retry: bool = True
    heartbeat_interval: int | None = None
    replay_only: bool = False        # reproduce mode: run only enqueued trials, sample nothing
    session_index: int = 0           # how many sweep processes ran on this study before this one
    deadline: float | None = None    # epoch seconds (hydra.sweeper.timeout): ask for no trial after it
    sweep_pid: int | None = None     # the sweep process (owner of this worker's trials); None = parent
    sweep_started: float | None = None  # its start time: a reused pid is not mistaken for it
    store_retry_s: float | None = None  # hydra.sweeper.store_retry_s: ride out a database blip this long
    objective_at: str = "best"       # hydra.sweeper.objective_at: best (that eval's adapter is kept) | last
    prune_guard: PruneGuard = field(default_factory=PruneGuard)  # prune_after, prune_min_trials, prune_patience
    base_total_steps: int | None = None  # the base config's optimizer steps (Hyperband's first rung)
    shares_device: bool = False      # other workers train on this worker's GPU: an OOM may be theirs
    max_memory_gb: float | None = None  # hydra.sweeper.max_memory_gb: skip configs estimated over it
    failure_limit: float | None = None  # max_failure_rate x n_trials: past it the sweep aborts, and a worker
                                        # that alone failed more stops asking (the sweep may not be reading yet)


WORKER_ENV = {"TRANSFORMERS_VERBOSITY": "error", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
              "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_WAIT_POLICY": "PASSIVE",
              "MPLBACKEND": "Agg"}


def quiet_environment() -> None:
    """Worker environment defaults; read by the libraries when they load, so also set before the
    fork server (see worker_plan.worker_context) imports them."""
    for var, value in WORKER_ENV.items():
        os.environ.setdefault(var, value)


def _pin(spec: WorkerSpec) -> None:
    """Device and thread pinning, quiet libraries; must happen before torch is imported here."""
    # OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep instead of spinning, so a trial does not
    # slow down several-fold when the cores are shared (other workers, other jobs).
    quiet_environment()
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    if spec.cuda_device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = spec.cuda_device
    if spec.threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(spec.threads)


def _on_sigterm(signum, frame):  # noqa: ARG001
    if not STOP.sweep_alive():  # PR_SET_PDEATHSIG: nobody would record a checkpointed trial
        raise SweepGone("interrupted: the sweep process died")
    if STOP.in_trial:
        STOP.requested = True
        return
    raise Interrupted("stopped by the sweep (interrupt)")


def _on_abort(signum, frame):  # noqa: ARG001
    raise Interrupted("stopped: the sweep aborted")


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the sweep process dies, even by SIGKILL: no orphan keeps training."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # elsewhere the parent-pid check in the trial loop still catches it


def worker_main(spec: WorkerSpec, events, replies, retire=None) -> None:
    """Process entry point (forked from the fork server on CPU, spawned on GPU). `events` go to
    the sweep process; `replies` bring back the MLflow run id of each trial this worker opens;
    `retire` (an Event) set by the sweep process ends the worker after its trial in flight (its
    GPU has too many workers)."""
    _pin(spec)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the sweep process decides; it sends SIGTERM
    STOP.sweep = (spec.sweep_pid or os.getppid(), spec.sweep_started)
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(ABORT_SIGNAL, _on_abort)
    _die_with_parent()
    watchdog = SweepWatchdog(spec.sweep_pid or os.getppid(), spec.sweep_started).start()
    try:
        worker = Worker(spec, events, replies, retire)
        trace.mark("worker.startup")  # fork or spawn, imports, study and sampler
        worker.loop()
    except Interrupted:
        pass
    finally:
        if watchdog.gone:
            events.cancel_join_thread()  # nobody reads the queue any more: exit without flushing it
        else:
            events.put((spec.worker_id, WorkerDone()))


def _on_sweep_gone(signum, frame):  # noqa: ARG001
    raise SweepGone("interrupted: the sweep process died")


class SweepWatchdog:
    """Watches the sweep process from inside a worker (once a second): CPU workers are children
    of the fork server, not of the sweep process, so neither PR_SET_PDEATHSIG nor the parent pid
    notices a kill -9 of the sweep. When it is gone the main thread gets `SweepGone`."""

    def __init__(self, pid: int, started: float | None, interval_s: float = 1.0):
        self.pid, self.started, self.interval_s = pid, started, interval_s
        self.gone = False
        self._main = threading.main_thread().ident

    def start(self) -> "SweepWatchdog":
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGUSR1, _on_sweep_gone)
        threading.Thread(target=self._watch, name="sweep-watchdog", daemon=True).start()
        return self

    def alive(self) -> bool:
        from sweeps.search.study import process_alive

        return process_alive(self.pid, self.started)

    def _watch(self) -> None:
        while self.alive():
            time.sleep(self.interval_s)
        self.gone = True
        signal.pthread_kill(self._main, signal.SIGUSR1)


class Worker:
    """One worker's study (its own sampler, seeded per worker), trial budget, warm cache and
    environment fingerprint; `loop` asks for trials until the budget, the deadline or the sweep ends."""

    def __init__(self, spec: WorkerSpec, events, replies=None, retire=None):
        import optuna
        import torch

        import trainer
        from sweeps.search.samplers import make_pruner, make_sampler, sampler_seed
        from sweeps.search.storage import open_storage
        from sweeps.search.study import TrialBudget

        if spec.threads:
            torch.set_num_threads(spec.threads)
        self.spec, self.events, self.replies, self.trainer = spec, events, replies, trainer
        self.retire = retire
        storage = open_storage(spec.storage_url, heartbeat_interval=spec.heartbeat_interval, retry_s=spec.store_retry_s)
        seed = sampler_seed(spec.sampler, spec.sampler_seed, spec.study_name, spec.worker_id, spec.session_index)
        sampler = make_sampler(spec.sampler, seed, spec.space, len(spec.objectives), spec.sampler_kwargs)
        self.study = optuna.load_study(study_name=spec.study_name, storage=storage, sampler=sampler,
                                       pruner=make_pruner(spec.pruner, spec.pruner_kwargs, spec.prune_guard,
                                                          spec.base_total_steps))
        self.storage = storage
        self.budget = TrialBudget(self.study, spec.storage_url, spec.n_trials, retry_s=spec.store_retry_s)
        self.cache = trainer.WarmCache()
        self.fingerprint = trainer.environment_fingerprint()
        self.failed = 0  # trials of this worker that ended FAIL

    def loop(self) -> None:
        import optuna

        from sweeps.search.study import owner_attrs, process_alive

        spec = self.spec
        sweep_pid = spec.sweep_pid or os.getppid()
        while process_alive(sweep_pid, spec.sweep_started):  # the sweep process is still there
            if STOP.requested:
                return  # SIGTERM during the last trial: it was checkpointed (or it finished)
            if self.retire is not None and self.retire.is_set():
                return  # the sweep lowered this GPU's worker count
            if self.spec.heartbeat_interval:
                # RDB storages: trials of a machine that died silently (no heartbeat for
                # 2 x interval) become FAIL and are re-queued once (Optuna's stale-trial callback).
                optuna.storages.fail_stale_trials(self.study)
            if self.spec.deadline is not None and time.time() >= self.spec.deadline:
                return  # the sweep's time budget is spent; the trials already running have finished
            if spec.failure_limit is not None and self.failed > spec.failure_limit:
                # the sweep aborts on these failures once it reads them; while it opens the MLflow
                # store it reads nothing, and a trial that fails at once would otherwise repeat unchecked
                return
            owner = owner_attrs(spec.worker_id, sweep_pid, spec.sweep_started)
            with trace.span("worker.ask"):
                trial = self.budget.next_trial(owner, waiting_only=spec.replay_only)
            if trial is None:
                return
            with trace.span("worker.trial", trial=trial.number):
                run_one(self, trial)
