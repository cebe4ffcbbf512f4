"""How a worker is told to stop: SIGTERM (checkpoint, then stop), the sweep's abort signal, the
sweep process gone, and a trial taken away by another process."""

from __future__ import annotations

import signal


class Interrupted(BaseException):
    """The sweep stops this worker at once (SIGTERM between trials, `ABORT_SIGNAL` at any time):
    a trial in flight ends FAIL, its run KILLED, and nothing is queued to continue it."""


class SweepGone(Interrupted):
    """The sweep process died (kill -9, OOM killer): nobody records this worker's MLflow events any
    more, so it stops at once; its trial ends FAIL marked `orphaned`, and a rerun re-runs it."""


class TrialTakenAway(Exception):
    """Another process failed this worker's trial (stale heartbeat) and has re-queued it: the
    worker stops it and tells Optuna nothing (the trial is already finished)."""


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
        from sweeps.search.study import process_alive

        return self.sweep is None or process_alive(*self.sweep)


STOP = StopRequest()
ABORT_SIGNAL = signal.SIGUSR2  # the sweep aborts (max_failure_rate, a store gone): stop now, queue nothing
