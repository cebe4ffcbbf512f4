"""A trial's lines back to the sweep: its reporter (trainer → Optuna intermediate values and
pruning, → MLflow events), the link that records its MLflow run id, and its heartbeat."""

from __future__ import annotations

import queue
import threading
import time

from sweeps.runtime.events import MetricsLogged
from sweeps.runtime.stop import STOP, TrialTakenAway
from trainer import trace


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
                 heartbeat: "Heartbeat | None" = None, keep_rows: bool = False):
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
        self.events.put((None, MetricsLogged(self.key, step, metrics)))

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

        from sweeps.search.pruning import row_scores_key

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


def wait_for_link(link: RunLink | None, timeout: float = 60.0) -> None:
    """The trial's MLflow run id on the Optuna trial before it is told (no-op without a link)."""
    if link is not None:
        link.wait(timeout)



class Heartbeat:
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
