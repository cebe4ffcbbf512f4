"""The sweep process's side of the workers: start them, apply their MLflow events, watch them die.

It is the only MLflow writer of the sweep (see `tracking.RunBook`). When a worker dies (SIGKILL,
OOM killer, segfault) it fails the worker's RUNNING trial in Optuna, closes its MLflow run as
FAILED, re-enqueues the same params (up to `max_retry` times) and starts a replacement worker.
Ctrl-C or SIGTERM: workers get SIGTERM, checkpoint their trials and queue them to continue on the
next run; an abort stops them at once (their trials FAIL). Their runs end KILLED; anything they could
not close is closed here. Its Optuna and MLflow calls ride out a database blip (`storage.retry_call`);
if a store stays down past `hydra.sweeper.store_retry_s` it gives up, but stops its workers first:
no worker trains on with nobody recording its runs.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import queue
import signal
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import optuna

from sweeps.runtime.events import (EventError, MlflowSink, RunOpened, TrialEnd, TrialFinished, TrialStarted,
                                   WorkerDone)
from sweeps.search.storage import StoreUnavailable, retry_budget_cap
from sweeps.search.study import TrialBudget, count_finished, fail_trial, requeue, storage_of
from sweeps.tracking.runbook import RunBook
from sweeps.runtime.stop import ABORT_SIGNAL
from sweeps.runtime.worker import WorkerSpec, worker_main
from sweeps.runtime.worker_plan import DeviceOomPolicy, worker_context
from trainer import trace

log = logging.getLogger(__name__)
MAX_SKIPS_PER_TRIAL = 5


class SweepAborted(RuntimeError):
    """Too many trials failed (max_failure_rate) or the user interrupted the sweep."""


@dataclass
class Outcome:
    started: int = 0
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    retried: int = 0
    preempted: int = 0   # checkpointed on SIGTERM and queued to continue (not a failure)
    oom_requeued: int = 0  # out of memory on a shared GPU, queued again (not a failure)
    skipped: int = 0       # configs estimated over hydra.sweeper.max_memory_gb (never trained)
    retired_workers: list[str] = field(default_factory=list)  # "worker W on GPU D": fewer workers there
    dead_workers: int = 0
    interrupted: bool = False
    failures: list[str] = field(default_factory=list)


class Supervisor:
    def __init__(self, study: optuna.Study, runbook: RunBook | None, specs: list[WorkerSpec], *, n_trials: int,
                 max_retry: int, max_failure_rate: float, on_progress: Callable[[Outcome], None] | None = None,
                 poll_s: float = 0.2, budget: TrialBudget | None = None):
        self.study, self.runbook, self.specs = study, runbook, specs
        self.n_trials, self.max_retry, self.max_failure_rate = n_trials, max_retry, max_failure_rate
        self.on_progress = on_progress or (lambda outcome: None)
        self.poll_s = poll_s
        self.ctx = worker_context(on_gpu=any(spec.cuda_device is not None for spec in specs))
        self.events = self.ctx.Queue()
        self.procs: dict[int, mp.Process] = {}
        self.running: dict[int, TrialStarted] = {}  # worker id -> the trial it runs
        self.replies: dict[int, Any] = {}   # worker id -> queue for the MLflow run id of its trial
        self.run_ids: dict[str, str] = {}   # trial key -> MLflow run id
        self.outcome = Outcome()
        self._sink: MlflowSink | None = None
        self._next_id = max(s.worker_id for s in specs) + 1
        self._spec_by_id: dict[int, WorkerSpec] = {}
        self._stopping = False
        self._preempted_workers: set[int] = set()
        # failing a dead worker's trial and queueing its retry is one step for the other workers:
        # in between, a free worker would take a new trial in its place and fill the budget
        self.budget = budget
        self.oom_policy = DeviceOomPolicy({spec.worker_id: spec.cuda_device for spec in specs})
        self.retire: dict[int, Any] = {}    # worker id -> Event that ends it after its trial

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> "Supervisor":
        """Spawn the workers now: they import torch and load the base model while the sweep process
        does its own slow start-up (the MLflow store); their events wait in the queue meanwhile."""
        with trace.span("sweep.spawn_workers"):
            for spec in self.specs:
                self._start(spec)
        return self

    def attach(self, runbook: RunBook | None) -> None:
        """The MLflow runbook, once the sweep process has opened the store (after `start`): from
        then on the queued trial events are written; `stop_all` closes the runs opened so far."""
        self.runbook = runbook

    def run(self, on_progress: Callable[[Outcome], None] | None = None) -> Outcome:
        """Supervise the workers until they are done; `on_progress` hears the outcome so far."""
        if on_progress is not None:
            self.on_progress = on_progress
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            if not self.procs:
                self.start()
            while self.procs:
                self._drain(timeout=self.poll_s)
                self._reap()
                self.on_progress(self.outcome)
                self._check_failure_rate()
            self._drain_all()  # the workers are gone; what they sent last must still reach MLflow
            self._close_orphaned_runs()
        except KeyboardInterrupt:
            self.outcome.interrupted = True
            self.stop_all("interrupted: the sweep was stopped (Ctrl-C)", preempt=True)
        except SweepAborted as exc:
            self.stop_all(str(exc))
            raise
        except StoreUnavailable as exc:
            log.error("giving up: %s", exc)
            self.stop_all(f"the sweep gave up: {exc}", store_down=True)
            raise
        except Exception as exc:  # any other failure of the sweep process: no worker trains on unrecorded
            self.stop_all(f"the sweep process failed: {type(exc).__name__}: {exc}", store_down=True)
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
        return self.outcome

    def _start(self, spec: WorkerSpec) -> None:
        self.replies[spec.worker_id] = self.ctx.Queue()
        self.retire[spec.worker_id] = self.ctx.Event()
        proc = self.ctx.Process(target=worker_main, args=(spec, self.events, self.replies[spec.worker_id],
                                                          self.retire[spec.worker_id]),
                                name=f"lora-sweep-worker-{spec.worker_id}",
                                daemon=False)
        proc.start()
        self.procs[spec.worker_id] = proc
        self._spec_by_id[spec.worker_id] = spec

    # -- events -------------------------------------------------------------------------------
    @property
    def sink(self) -> MlflowSink | None:
        """Writes the workers' trial events (sweeps.runtime.events) to the current runbook, if any."""
        if self.runbook is None:
            return None
        if self._sink is None or self._sink.runbook is not self.runbook:
            self._sink = MlflowSink(self.runbook)
        return self._sink

    def _drain(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:  # returns by the deadline even when workers keep the queue full
            try:
                worker_id, message = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return
            self._handle(worker_id, message)
            if time.monotonic() >= deadline:
                return

    def _drain_all(self, quiet_s: float = 0.2, cap_s: float | None = None) -> None:
        """Apply every event already sent, however long MLflow takes over them. Used once senders
        have ended: a slow store must not leave a run RUNNING because its close event was still
        queued when the sweep ended. `cap_s` bounds it while other workers still send."""
        deadline = None if cap_s is None else time.monotonic() + cap_s
        while deadline is None or time.monotonic() < deadline:
            try:
                worker_id, message = self.events.get(timeout=quiet_s)
            except queue.Empty:
                return
            self._handle(worker_id, message)

    def _close_orphaned_runs(self) -> None:
        """Every worker ended normally, yet a run is still open: its worker never sent the close
        (a bug, or a process that died between tell and close). Close it rather than leave it RUNNING."""
        if self.runbook is not None and self.runbook.open_runs:
            keys = self.runbook.close_all("FAILED", "its worker ended without closing this run")
            log.warning("closed %d MLflow run(s) their workers left open: %s", len(keys), keys)

    def _handle(self, worker_id: int | None, message: Any) -> None:
        """One message from a worker: its own news (`WorkerMessage`) is counted here; anything
        else is a trial event for MLflow, and the sink fails an unknown one loudly (its run is
        closed FAILED with the reason)."""
        if isinstance(message, TrialStarted):
            self.running[worker_id] = message
            self.outcome.started += 1
        elif isinstance(message, TrialFinished):
            self._finished(worker_id, message)
        elif isinstance(message, WorkerDone):
            pass  # the process exit is handled in _reap
        else:
            run_id = None
            if self.sink is not None:
                try:
                    run_id = self.sink.apply(message)
                except EventError as exc:  # its run is closed FAILED; the sweep goes on with the others
                    log.error("MLflow: %s", exc)
                    self.outcome.failures.append(f"MLflow run of {getattr(message, 'key', '?')}: {exc}")
            if isinstance(message, RunOpened):
                self._reply_run_id(worker_id, message.key, run_id)

    def _finished(self, worker_id: int | None, message: TrialFinished) -> None:
        self.running.pop(worker_id, None)
        state = TrialEnd(message.state)
        if state is TrialEnd.COMPLETE:
            self.outcome.complete += 1
        elif state is TrialEnd.PRUNED:
            self.outcome.pruned += 1
        elif state is TrialEnd.PREEMPTED:
            self.outcome.preempted += 1
            self._preempted_workers.add(worker_id)
        elif state is TrialEnd.SKIPPED:
            self.outcome.skipped += 1
            self._check_skips()
        elif state is TrialEnd.OOM_REQUEUED:
            self.outcome.oom_requeued += 1
            self._oom_on_shared_device(worker_id)
        else:
            self.outcome.failed += 1
            self.outcome.failures.append(f"trial {message.number}: {message.reason}")
            if not self._stopping:
                self._check_failure_rate()  # at once: fast-failing workers must not run on

    def _oom_on_shared_device(self, worker_id: int) -> None:
        victim = self.oom_policy.record_oom(worker_id)
        if victim is None:
            return
        device = self.oom_policy.device_of[victim]
        left = len(self.oom_policy.active_on(device))
        note = f"worker {victim} on GPU {device}"
        log.warning("out of memory repeats on GPU %s: retiring %s after its trial (%d worker(s) left there)",
                    device, note, left)
        self.outcome.retired_workers.append(note)
        if victim in self.retire:
            self.retire[victim].set()

    def _reply_run_id(self, worker_id: int | None, key: str, run_id: str | None) -> None:
        """Send the worker its trial's MLflow run id: the worker records it on the Optuna trial
        before it tells the result (a finished trial's attributes can no longer change)."""
        if run_id:
            self.run_ids[key] = run_id
        if worker_id in self.replies:
            self.replies[worker_id].put((key, run_id))

    # -- dead workers ---------------------------------------------------------------------------
    def _reap(self) -> None:
        for worker_id, proc in list(self.procs.items()):
            if proc.is_alive():
                continue
            proc.join()
            del self.procs[worker_id]
            self.replies.pop(worker_id, None)
            self.retire.pop(worker_id, None)
            self._drain_all(cap_s=10.0)  # what it sent before it ended (its trial may have finished)
            running = self.running.pop(worker_id, None)
            if proc.exitcode == 0:  # budget used up, or stopped by us: it closed its own trial
                if worker_id in self._preempted_workers and not self._stopping \
                        and worker_id not in self.oom_policy.retired \
                        and count_finished(self.study) < self.n_trials:
                    # SIGTERM reached this worker alone: a replacement continues its checkpointed trial
                    self._replace(worker_id, f"worker {worker_id} was stopped by SIGTERM and checkpointed its trial")
                continue
            self.outcome.dead_workers += 1
            reason = f"worker {worker_id} died (exit code {proc.exitcode}) during trial"
            if running is not None:
                self._fail_dead_trial(running, reason)
            if count_finished(self.study) < self.n_trials and worker_id not in self.oom_policy.retired:
                self._replace(worker_id, reason)

    def _replace(self, worker_id: int, reason: str) -> None:
        spec = replace(self._spec_by_id[worker_id], worker_id=self._next_id)
        self._next_id += 1
        self.oom_policy.replaced(worker_id, spec.worker_id)
        log.warning("%s; starting worker %d", reason, spec.worker_id)
        self._start(spec)

    def _fail_dead_trial(self, running: TrialStarted, reason: str) -> None:
        frozen = storage_of(self.study).get_trial(running.trial_id)  # the params it had sampled by then
        if running.key in self.run_ids and "mlflow_run_id" not in frozen.user_attrs:
            try:
                storage_of(self.study).set_trial_user_attr(running.trial_id, "mlflow_run_id", self.run_ids[running.key])
            except optuna.exceptions.UpdateFinishedTrialError:
                return  # it finished after all
        with self.budget.locked() if self.budget is not None else contextlib.nullcontext():
            if not fail_trial(self.study, running.trial_id, reason):
                return  # it finished after all
            retried = requeue(self.study, frozen, self.max_retry)
        if self.runbook is not None:
            self.runbook.close_trial(running.key, "FAILED", tags={"optuna.state": "FAIL", "error": reason})
        self.outcome.failed += 1
        self.outcome.failures.append(f"trial {running.number}: {reason}")
        self.outcome.retried += int(retried)

    def _check_skips(self) -> None:
        """Skipped configs cost no training and no budget, so a sampler that keeps proposing them
        would never end the sweep: stop once they outnumber the budget `MAX_SKIPS_PER_TRIAL` times."""
        if self.outcome.skipped > MAX_SKIPS_PER_TRIAL * self.n_trials:
            raise SweepAborted(
                f"{self.outcome.skipped} configs were skipped as estimated over hydra.sweeper.max_memory_gb, more "
                f"than {MAX_SKIPS_PER_TRIAL} x n_trials={self.n_trials}: most of the search space does not fit. "
                "Raise the limit or narrow the space.")

    def _check_failure_rate(self) -> None:
        if self.outcome.failed > self.max_failure_rate * self.n_trials:
            raise SweepAborted(
                f"{self.outcome.failed} trials failed, more than hydra.sweeper.max_failure_rate="
                f"{self.max_failure_rate} of n_trials={self.n_trials}. Last failures:\n  "
                + "\n  ".join(self.outcome.failures[-5:])
            )

    # -- stopping -------------------------------------------------------------------------------
    def stop_all(self, reason: str, grace_s: float = 60.0, store_down: bool = False, preempt: bool = False) -> None:
        """Stop every worker, keep applying their events while they wind down, then clean up.

        `preempt` (Ctrl-C, SIGTERM of the sweep): SIGTERM, so each trial in flight checkpoints and
        is queued to continue on the next run. Otherwise (an abort, a failure) `ABORT_SIGNAL`:
        the trials in flight end FAIL at once and nothing is queued; the sweep is not going on.
        `store_down`: a store is unreachable; every call that still fails is logged, not raised,
        so the workers are stopped whatever happens (their trials stay RUNNING and the next run
        of the command recognises them as orphaned)."""
        self._stopping = True
        with retry_budget_cap(5.0) if store_down else contextlib.nullcontext():
            self._stop_all(reason, grace_s, store_down, preempt)

    def _stop_all(self, reason: str, grace_s: float, store_down: bool, preempt: bool) -> None:
        for proc in self.procs.values():
            if proc.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM if preempt else ABORT_SIGNAL)
        deadline = time.monotonic() + grace_s
        while self.procs and time.monotonic() < deadline:
            try:
                self._drain(timeout=0.2)
                for worker_id, proc in list(self.procs.items()):
                    if not proc.is_alive():
                        proc.join()
                        del self.procs[worker_id]
            except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
                break
            except StoreUnavailable as exc:
                if not store_down:
                    raise
                log.warning("while stopping: %s", exc)
        for proc in self.procs.values():
            proc.kill()
            proc.join()
        self.procs.clear()
        self._best_effort(self._drain_all, store_down)
        for running in self.running.values():
            self._best_effort(lambda: fail_trial(self.study, running.trial_id, reason), store_down)
        self.running.clear()
        if self.runbook is not None:
            self._best_effort(lambda: self.runbook.close_all("KILLED", reason), store_down)

    @staticmethod
    def _best_effort(call: Callable[[], Any], store_down: bool) -> None:
        try:
            call()
        except StoreUnavailable as exc:
            if not store_down:
                raise
            log.warning("while stopping: %s", exc)


def _raise_interrupt(signum, frame):  # noqa: ARG001
    raise KeyboardInterrupt
