"""A worker process: takes the next trial the moment its last one ends (no batch barrier),
fine-tunes it with a warm cache, and streams its MLflow events to the sweep process.

The path of one trial: `next_trial` (budget, under a cross-process lock) → sample params →
compose the trial config → `RunOpened` event → `trainer.run_trial` (reports eval metrics → pruning)
→ `study.tell` → `RunClosed` event (final metrics, curve PNG, adapter). docs/architecture.md draws it.
"""

from __future__ import annotations

import hashlib
import math
import os
import queue
import shutil
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeps.compose import ComposeSpec
from sweeps.events import MetricsLogged, RunClosed, RunOpened, TagsSet
from sweeps.pruning import PruneGuard
from sweeps.search_space import SearchSpace
from sweeps.storage import MEMORY_SKIP_ATTR, RACE_SUFFIX
from trainer import trace


class Interrupted(BaseException):
    """The sweep stops this worker at once (SIGTERM between trials, `ABORT_SIGNAL` at any time):
    a trial in flight ends FAIL, its run KILLED, and nothing is queued to continue it."""


class SweepGone(Interrupted):
    """The sweep process died (kill -9, OOM killer): nobody records this worker's MLflow events any
    more, so it stops at once; its trial ends FAIL marked `orphaned`, and a rerun re-runs it."""


class TrialTakenAway(Exception):
    """Another process failed this worker's trial (stale heartbeat) and has re-queued it: the
    worker stops it and tells Optuna nothing (the trial is already finished)."""


class NonFiniteObjectiveError(ValueError):
    """A trial trained but its objective is NaN/inf: Optuna would store it as FAIL, so the MLflow
    run must end FAILED too, with the reason."""


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


SAMPLES_TABLE = "sample_generations.json"  # SFT trials: prompt, reference, answer per logged eval row
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


class StopRequest:
    """SIGTERM in a worker (SLURM preemption or time limit, a spot instance, the sweep's Ctrl-C).
    During a trial it is a request: the trainer checkpoints at the next optimizer step and the
    trial ends preempted, to be continued from there by a rerun; the worker then exits. Between
    trials it stops the worker at once."""

    def __init__(self) -> None:
        self.in_trial = False
        self.requested = False
        self.sweep: tuple[int, float | None] | None = None  # (pid, start time) of the sweep process

    def sweep_alive(self) -> bool:
        from sweeps.study import process_alive

        return self.sweep is None or process_alive(*self.sweep)


STOP = StopRequest()
ABORT_SIGNAL = signal.SIGUSR2  # the sweep aborts (max_failure_rate, a store gone): stop now, queue nothing


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
            events.put(("worker_done", spec.worker_id, {}))


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
        from sweeps.study import process_alive

        return process_alive(self.pid, self.started)

    def _watch(self) -> None:
        while self.alive():
            time.sleep(self.interval_s)
        self.gone = True
        signal.pthread_kill(self._main, signal.SIGUSR1)


class RunLink:
    """Records a trial's MLflow run id (created by the sweep process) on the Optuna trial, which
    analysis and export follow. It must land before the trial is told: Optuna freezes finished trials."""

    def __init__(self, replies, key: str, trial):
        self.replies, self.key, self.trial, self.linked = replies, key, trial, False

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.linked:
            try:
                key, run_id = self.replies.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return  # the sweep process is busy or MLflow is down: the trial goes on unlinked
            if key != self.key:
                continue  # a late reply for an earlier trial of this worker
            if run_id:
                self.trial.set_user_attr("mlflow_run_id", run_id)
            self.linked = True


class TrialReporter:
    """trainer → Optuna (intermediate values, pruning) and → MLflow (events to the sweep process)."""

    def __init__(self, events, key: str, trial, objective: str, prune: bool, link: RunLink | None = None,
                 heartbeat: "_Heartbeat | None" = None, keep_rows: bool = False):
        self.events, self.key, self.trial, self.objective, self.prune = events, key, trial, objective, prune
        self.link, self.heartbeat = link, heartbeat
        self.keep_rows = keep_rows  # store the objective's eval-row scores (the wilcoxon pruner pairs them)
        self.rows: list[float] | None = None
        self.last_step = 0
        self.history: list[dict] = []  # kept here too, so a pruned trial still gets its curve PNG

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.heartbeat is not None:
            self.heartbeat.check()
        self.history.append({"step": step, **metrics})
        self.events.put(("event", None, MetricsLogged(self.key, step, metrics)))

    def should_stop(self) -> bool:
        """Asked by the trainer at every step boundary: SIGTERM arrived (checkpoint, then stop)."""
        return STOP.requested

    def planned(self, total_steps: int) -> None:
        """The trial's length, for the pruner's warm-up (hydra.sweeper.prune_after is a fraction of it)."""
        self.trial.set_user_attr("total_steps", int(total_steps))

    def eval_rows(self, rows: dict[str, list[float]]) -> None:
        """The coming evaluation's score on each eval row, per metric (trainer.reporting)."""
        self.rows = rows.get(self.objective)

    @trace.traced("worker.report")
    def report(self, step: int, metrics: dict[str, float]) -> None:
        import optuna

        from sweeps.pruning import row_scores_key

        self.last_step = step
        self.log_metrics(metrics, step)  # raises TrialTakenAway when another process failed the trial
        if self.link is not None:
            self.link.wait(timeout=0)
        rows, self.rows = self.rows, None
        if self.keep_rows and self.prune and rows is not None:
            self.trial.set_user_attr(row_scores_key(step), [round(float(v), 6) for v in rows])
        if not self.prune or self.objective not in metrics:
            return
        self.trial.report(float(metrics[self.objective]), step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} ({self.objective}={metrics[self.objective]:.4f})")


class Worker:
    def __init__(self, spec: WorkerSpec, events, replies=None, retire=None):
        import optuna
        import torch

        import trainer
        from sweeps.samplers import make_pruner, make_sampler, sampler_seed
        from sweeps.storage import open_storage
        from sweeps.study import TrialBudget

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

    def loop(self) -> None:
        import optuna

        from sweeps.study import owner_attrs, process_alive

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
            owner = owner_attrs(spec.worker_id, sweep_pid, spec.sweep_started)
            with trace.span("worker.ask"):
                trial = self.budget.next_trial(owner, waiting_only=spec.replay_only)
            if trial is None:
                return
            with trace.span("worker.trial", trial=trial.number):
                self.run_one(trial)

    # -- one trial ---------------------------------------------------------------------------
    @trace.traced("worker.sample_params")
    def _params(self, trial) -> dict[str, Any]:
        from sweeps.search_space import suggest

        params = {key: suggest(trial, key, dist) for key, dist in self.spec.space.distributions.items()}
        params.update(trial.user_attrs.get("overrides", {}))  # reproduce: fixed config + new seeds
        return {**self.spec.space.fixed, **params}

    def run_one(self, trial) -> None:
        import optuna
        import torch
        from omegaconf import OmegaConf

        from sweeps.compose import compose_job
        from sweeps.curves import plot_curves
        from sweeps.study import trial_folder, trial_id

        spec, number = self.spec, trial.number
        key = f"{spec.study_name}:{number}"
        kind = "race" if spec.study_name.endswith(RACE_SUFFIX) else "reproduce" if spec.replay_only else "trial"
        trial_dir = trial_folder(spec.trial_root, kind, number)
        self.events.put(("trial_started", spec.worker_id, {"key": key, "trial_id": trial_id(trial), "number": number,
                                                          "params": dict(trial.params), "user_attrs": dict(trial.user_attrs)}))
        heartbeat = _Heartbeat(self.storage, trial_id(trial), spec.heartbeat_interval)
        reporter, told = None, False
        opened, link = False, None
        STOP.in_trial = True
        try:
            checkpoint_dir, resume = self._checkpoint(trial, trial_dir)
            params = self._params(trial)
            cfg = compose_job(spec.compose, params)
            if self._over_memory(trial, key, cfg):
                return
            config = OmegaConf.to_container(cfg, resolve=True)
            tags = {"optuna.study_name": spec.study_name, "optuna.trial_number": str(number),
                    "sweep.kind": kind, "sweep.worker_id": str(spec.worker_id),
                    **{f"env.{k}": str(v) for k, v in self.fingerprint.items()},
                    **{f"trial.{k}": str(v) for k, v in trial.user_attrs.items() if k in
                       ("retry_of", "replicates_trial", "seed_kind")}}
            if resume:
                tags["sweep.continues_trial"] = str(trial.user_attrs.get("resumes_trial", trial.user_attrs.get("retry_of")))
            self.events.put(("event", spec.worker_id, RunOpened(
                key, f"{kind}-{number}", config, tags, OmegaConf.to_yaml(cfg),
                reopen_run_id=trial.user_attrs.get("resume_run_id") if resume else None)))
            opened = True
            link = RunLink(self.replies, key, trial) if self.replies is not None else None
            reporter = TrialReporter(self.events, key, trial, spec.objectives[0],
                                     prune=len(spec.objectives) == 1 and not spec.replay_only, link=link,
                                     heartbeat=heartbeat, keep_rows=str(spec.pruner).lower() == "wilcoxon")
            result = self._run_with_oom_retry(cfg, reporter, trial_dir, trial, checkpoint_dir, resume)
            values = [self._objective_value(name, result) for name in spec.objectives]
            bad = {name: value for name, value in zip(spec.objectives, values) if not math.isfinite(value)}
            if bad:  # Optuna would store FAIL; say so with the reason instead of a FINISHED run
                raise NonFiniteObjectiveError(f"non-finite objective: {', '.join(f'{k}={v}' for k, v in bad.items())}")
            sha = adapter_sha256(result.adapter_dir)
            attrs = {"metrics": result.metrics, "trainable_params": result.trainable_params,
                     "total_params": result.total_params, "train_runtime_s": result.train_runtime_s,
                     "adapter_sha256": sha, "seed": int(cfg.seed), "data_seed": int(cfg.data_seed),
                     "environment": self.fingerprint,
                     "deterministic": self.trainer.determinism_mode()}
            for name, value in attrs.items():
                trial.set_user_attr(name, value)
            curves = plot_curves(result.history, trial_dir / "curves.png", f"{spec.study_name} #{number}")
            _link(link)
            heartbeat.check()
            try:
                self.study.tell(trial, values)
            except Exception:
                # Optuna stores the state even when a sampler's after_trial hook then raises (the
                # grid sampler calls study.stop() outside optimize once its grid is done): the
                # trial is COMPLETE, and must be closed as such, not failed.
                if self.storage.get_trial(trial_id(trial)).state != optuna.trial.TrialState.COMPLETE:
                    raise
            told = True
            final = {**result.summary_metrics(), "objective": values[0]}
            artifacts = [(str(curves), None)] if curves else []
            if result.adapter_dir:
                artifacts.append((str(result.adapter_dir), "adapter"))
            self._close(key, "FINISHED", final, {"optuna.state": "COMPLETE", "adapter_sha256": sha or "",
                                                 "deterministic": attrs["deterministic"]}, artifacts,
                        step=result.steps, tables={SAMPLES_TABLE: result.samples})
            self._finished(key, number, "COMPLETE", values[0])
        except optuna.TrialPruned as exc:
            if heartbeat.taken_away(refresh=True):
                self._taken_away(trial, key, opened, heartbeat)
                return
            trial.set_user_attr("pruned_at_step", reporter.last_step)
            _link(link)
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            curves = plot_curves(reporter.history, trial_dir / "curves.png", f"{spec.study_name} #{number} (pruned: {exc})")
            self._close(key, "KILLED", None, {"optuna.state": "PRUNED", "pruned": "true",
                                              "pruned_at_step": str(reporter.last_step)},
                        [(str(curves), None)] if curves else [])
            self._finished(key, number, "PRUNED", None)
        except self.trainer.TrialPreempted as exc:
            self._preempted(trial, key, exc, opened, link)
        except TrialTakenAway:
            self._taken_away(trial, key, opened, heartbeat)
        except SweepGone as exc:
            heartbeat.stop()
            if not heartbeat.taken_away():
                trial.set_user_attr("orphaned", True)  # the rerun re-runs it (study.fail_orphaned_trials)
                self._fail(trial, key, str(exc), "KILLED", opened, None)
            raise
        except Interrupted as exc:
            self._fail(trial, key, str(exc), "KILLED", opened, link)
            raise
        except torch.OutOfMemoryError as exc:
            reason = f"out of memory: {exc}".splitlines()[0][:500]
            if not (spec.shares_device and self._oom_requeued(trial, key, reason, opened, link)):
                self._fail(trial, key, reason, "FAILED", opened, link, oom=True)
        except self.trainer.NonFiniteLossError as exc:
            self._fail(trial, key, f"non-finite loss: {exc}", "FAILED", opened, link)
        except NonFiniteObjectiveError as exc:
            self._fail(trial, key, str(exc), "FAILED", opened, link)
        except Exception as exc:  # any other failure ends this trial only; the sweep goes on
            if not told and heartbeat.taken_away(refresh=True):  # e.g. tell refused: failed elsewhere meanwhile
                self._taken_away(trial, key, opened, heartbeat)
                return
            reason = f"{type(exc).__name__}: {exc}"
            self._fail(trial, key, reason, "FAILED", opened, link, detail=traceback.format_exc())
        finally:
            heartbeat.stop()
            STOP.in_trial = False

    def _checkpoint(self, trial, trial_dir: Path) -> tuple[Path, bool]:
        """Where this trial checkpoints, and whether it continues a checkpoint: a preempted
        trial's continuation (`resumes_trial`) or the retry of one whose worker or sweep died
        (`retry_of`) resumes from the folder it inherited when a checkpoint is there; the
        intermediate values up to that step are copied from the attempt before, so the pruner
        sees the whole curve. A new trial starts from a clean folder."""
        from trainer.checkpoint import checkpoint_step, has_checkpoint

        attrs = trial.user_attrs
        folder = Path(attrs.get("checkpoint_dir") or trial_dir / "checkpoint")
        before = attrs.get("resumes_trial", attrs.get("requeued_from"))
        if before is None or not has_checkpoint(folder):
            shutil.rmtree(folder, ignore_errors=True)
            trial.set_user_attr("checkpoint_dir", str(folder))
            return folder, False
        step = checkpoint_step(folder)
        earlier = next(t for t in self.study.get_trials(deepcopy=False) if t.number == int(before))
        for at, value in sorted(earlier.intermediate_values.items()):
            if at <= step:
                trial.report(value, at)
        trial.set_user_attr("resumed_from_step", step)
        return folder, True

    def _preempted(self, trial, key: str, exc, opened: bool, link: RunLink | None) -> None:
        """SIGTERM during training: the trial was checkpointed after `exc.step`. It ends FAIL
        marked `preempted_at_step`, its MLflow run KILLED, and a continuation with the same params
        is queued (the next worker or rerun resumes it and reopens the same run)."""
        import optuna

        from sweeps.study import enqueue_continuation, trial_id

        reason = f"preempted after step {exc.step} (SIGTERM); a new trial continues it from its checkpoint"
        trial.set_user_attr("preempted_at_step", int(exc.step))
        trial.set_user_attr("fail_reason", reason)
        # the continuation reopens this run by its id: wait for it a while (a busy sweep process can be
        # seconds late with it), yet well inside a scheduler's grace period before SIGKILL
        _link(link, timeout=15.0)
        with self.budget.locked():
            enqueue_continuation(self.study, self.storage.get_trial(trial_id(trial)))
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        if opened:
            self._close(key, "KILLED", None, {"optuna.state": "FAIL", "sweep.preempted": "true",
                                              "sweep.preempted_at_step": str(exc.step), "sweep.end_reason": reason}, [])
        self._finished(key, trial.number, "PREEMPTED", None, reason)

    def _over_memory(self, trial, key: str, cfg) -> bool:
        """hydra.sweeper.max_memory_gb: a config the pre-flight estimates over the limit is not
        trained. It ends PRUNED with its excess as an Optuna constraint (samplers that read
        constraints steer away from it) and `skipped_over_memory` saying why; the budget is not
        charged for it. Every trial carries its estimate, so the choice can be checked."""
        import optuna

        limit = self.spec.max_memory_gb
        if limit is None:
            return False
        device = "cpu" if self.spec.cuda_device is None else "cuda"
        estimate_gb = self.trainer.preflight(cfg).estimate_memory_mb(cfg, device=device) / 1024
        trial.set_user_attr("memory_estimate_gb", round(estimate_gb, 3))
        trial.set_constraint("max_memory_gb", estimate_gb - limit)
        if estimate_gb <= limit:
            return False
        reason = f"estimated {estimate_gb:.2f} GiB, over hydra.sweeper.max_memory_gb={limit:g}"
        trial.set_user_attr(MEMORY_SKIP_ATTR, reason)
        self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        self._finished(key, trial.number, "SKIPPED", None, reason)
        return True

    def _oom_requeued(self, trial, key: str, reason: str, opened: bool, link: RunLink | None) -> bool:
        """Out of memory on a GPU shared with other workers, after the halved-batch retry: the
        neighbours may be to blame, so the config is queued again rather than counted as failed
        (up to `OOM_REQUEUE_LIMIT` times), and the sweep process counts the OOM against this device."""
        import optuna

        from sweeps.study import requeue_after_oom, trial_id

        trial.set_user_attr("fail_reason", f"{reason}; queued again (the GPU is shared)")
        _link(link)
        with self.budget.locked():  # the copy takes the freed place in the budget, not a new trial
            if not requeue_after_oom(self.study, self.storage.get_trial(trial_id(trial))):
                return False
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        if opened:
            self._close(key, "FAILED", None, {"optuna.state": "FAIL", "error": reason, "oom": "true",
                                              "sweep.oom_requeued": "true"}, [])
        self._finished(key, trial.number, "OOM_REQUEUED", None, reason)
        return True

    def _taken_away(self, trial, key: str, opened: bool, heartbeat: "_Heartbeat") -> None:
        """The trial was failed by another process (stale heartbeat) and re-queued there: close
        our MLflow run once, FAILED with that reason, and tell Optuna nothing (it is finished)."""
        heartbeat.stop()
        reason = "taken away: another process failed this trial as stale and re-queued it; stopped here"
        if opened:
            self._close(key, "FAILED", None, {"optuna.state": "FAIL", "error": reason}, [])
        self._finished(key, trial.number, "FAIL", None, reason)

    def _run_with_oom_retry(self, cfg, reporter, trial_dir, trial, checkpoint_dir: Path, resume: bool):
        import torch

        try:
            return self.trainer.run_trial(cfg, reporter=reporter, cache=self.cache, output_dir=trial_dir,
                                          checkpoint_dir=checkpoint_dir, resume=resume, **self._selection(trial))
        except torch.OutOfMemoryError:
            if not self.spec.oom_retry or cfg.train.batch_size < 2:
                raise
            torch.cuda.empty_cache()
            shutil.rmtree(checkpoint_dir, ignore_errors=True)  # another batch size: a fresh run
            cfg.train.batch_size = cfg.train.batch_size // 2
            cfg.train.gradient_accumulation_steps = cfg.train.gradient_accumulation_steps * 2
            trial.set_user_attr("oom_retry", {"batch_size": int(cfg.train.batch_size),
                                              "gradient_accumulation_steps": int(cfg.train.gradient_accumulation_steps)})
            self.events.put(("event", None, TagsSet(f"{self.spec.study_name}:{trial.number}", {"oom_retry": "true"})))
            return self.trainer.run_trial(cfg, reporter=reporter, cache=self.cache, output_dir=trial_dir,
                                          checkpoint_dir=checkpoint_dir, **self._selection(trial))

    def _selection(self, trial) -> dict[str, Any]:
        """hydra.sweeper.objective_at for a single eval-metric objective (the last eval otherwise);
        seed replicates are also scored on data.test_split."""
        held_out = {"evaluate_test": trial.user_attrs.get("replicates_trial") is not None}
        name = self.spec.objectives[0]
        if len(self.spec.objectives) != 1 or not name.startswith("eval_"):
            return held_out
        return {"objective": (name, self.study.directions[0].name.lower()), "objective_at": self.spec.objective_at,
                **held_out}

    @staticmethod
    def _objective_value(name: str, result) -> float:
        if name in result.metrics:
            return float(result.metrics[name])
        if name in ("trainable_params", "total_params"):
            return float(getattr(result, name))
        raise KeyError(f"hydra.sweeper.objectives: {name!r} is not a metric of this trial; have {sorted(result.metrics)}")

    def _fail(self, trial, key: str, reason: str, run_status: str, opened: bool, link: RunLink | None,
              oom: bool = False, detail: str = "") -> None:
        import optuna

        from sweeps.redact import scrub_text

        # exception text can carry a token (an HTTP error's URL or header): mask before it is stored
        reason, detail = scrub_text(reason), scrub_text(detail)
        trial.set_user_attr("fail_reason", reason[:2000])
        _link(link, timeout=5.0 if run_status == "KILLED" else 60.0)
        self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        if opened:
            self._close(key, run_status, None, {"optuna.state": "FAIL", "error": reason[:4000], "oom": str(oom).lower(),
                                                "traceback": detail[-4000:]}, [])
        self._finished(key, trial.number, "FAIL", None, reason)

    def _close(self, key, status, metrics, tags, artifacts, step: int | None = None, tables=None) -> None:
        self.events.put(("event", None, RunClosed(key, status, metrics, tags, list(artifacts), step, tables)))

    def _finished(self, key, number, state, value, reason: str = "") -> None:
        self.events.put(("trial_finished", self.spec.worker_id, {"key": key, "number": number, "state": state,
                                                                 "value": value, "reason": reason}))


def _link(link: RunLink | None, timeout: float = 60.0) -> None:
    if link is not None:
        link.wait(timeout)


@trace.traced("worker.adapter_sha256")
def adapter_sha256(adapter_dir) -> str | None:
    """One hash over the adapter weights: the determinism check compares it across runs."""
    if not adapter_dir:
        return None
    digest = hashlib.sha256()
    for path in sorted(Path(adapter_dir).glob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


class _Heartbeat:
    """Keeps the trial's heartbeat fresh on RDB storages, so another machine's sweep can tell a
    dead host's trial from a live one (Optuna's stale-trial detection), and notices when the
    trial was taken away all the same (failed as stale by another process: a long stall, a
    database outage longer than the grace period). A failed beat is retried on the next tick,
    never fatal: a thread that died on its first error would get a live trial failed as stale."""

    def __init__(self, storage, trial_id: int, interval: int | None, check_s: float = 2.0):
        self._stop = threading.Event()
        self._thread = None
        self.storage, self.trial_id = storage, trial_id
        self._taken = False
        if interval and hasattr(storage, "get_heartbeat_interval") and storage.get_heartbeat_interval():
            storage.record_heartbeat(trial_id)  # the first one through the retrying storage
            self._thread = threading.Thread(target=self._run, args=(float(interval), min(check_s, interval)),
                                            name="trial-heartbeat", daemon=True)
            self._thread.start()

    def _beat(self) -> bool:
        # The storage itself, not its retrying wrapper: a failed beat is tried again at the next
        # tick (seconds), not after a back-off that could outlast the grace period.
        storage = getattr(self.storage, "inner", self.storage)
        try:
            storage.record_heartbeat(self.trial_id)
            return True
        except Exception as exc:  # noqa: BLE001 - a heartbeat must never kill the thread
            import logging

            logging.getLogger(__name__).warning("heartbeat of trial id %d failed (retrying): %s", self.trial_id,
                                                str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
            return False

    def _run(self, interval: float, check_s: float) -> None:
        last = time.monotonic()
        while not self._stop.wait(check_s):
            if time.monotonic() - last >= interval and self._beat():
                last = time.monotonic()
            self.taken_away(refresh=True)
            if self._taken:
                return

    def taken_away(self, refresh: bool = False) -> bool:
        """True once the trial is no longer RUNNING in the storage although this worker still runs
        it (call only before this worker told its result). `refresh`: ask the storage now."""
        if refresh and not self._taken:
            import optuna

            try:
                self._taken = self.storage.get_trial(self.trial_id).state != optuna.trial.TrialState.RUNNING
            except Exception:  # noqa: BLE001 - unknown is not taken; the next tick asks again
                pass
        return self._taken

    def check(self) -> None:
        """Raise TrialTakenAway in the training thread (called at every logged step)."""
        if self._taken:
            raise TrialTakenAway("another process failed this trial as stale")

    def stop(self) -> None:
        self._stop.set()
