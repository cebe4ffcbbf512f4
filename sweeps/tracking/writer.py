"""The MLflow writer of a single run (`python sweep.py` without -m), in a process of its own.

Why a process: a single run spends its first seconds importing torch on one core. Meanwhile this
writer imports MLflow and matplotlib on the other core and opens the store if it already exists;
later it creates the run, logs the step metrics and draws the curve PNG off the training process:
the split a sweep already has between its workers and the sweep process, where the RunBook lives. The training
process pickles the trial events of a sweep worker (sweeps.runtime.events) on stdin, after one setup message
(store, working directory, experiment); the writer applies them with the same MlflowSink. Replies (the
run id, or the error that stopped the writer) are pickled on stdout.

If the training process dies without closing the run (SIGKILL, a crash), stdin reaches EOF and the
run is closed FAILED: nothing is left RUNNING. Ctrl-C is the training process's to handle (it
closes the run KILLED), so the writer ignores SIGINT.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sweeps.runtime.events import MlflowSink, RunOpened, TrialEvent
from trainer.trace import traced

KEY = "single"
_REPO = Path(__file__).resolve().parents[1]


class RunWriter:
    """The training process's handle on the writer process."""

    @traced("mlflow.writer_start")
    def __init__(self, uri: str | None, experiment: str, on_reply: Callable[[str, Any], None]):
        """Start the writer for the store at `uri` (the config's, unresolved) and `experiment`;
        `on_reply(kind, value)` hears ("run", (run_id, uri)) and ("error", message)."""
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(_REPO), os.environ.get("PYTHONPATH")) if p),
                   MPLBACKEND="Agg")
        self.proc = subprocess.Popen([sys.executable, "-m", "sweeps.tracking.writer"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env)
        self.error: str | None = None
        self.run_id: str | None = None
        self._on_reply = on_reply
        self._reader = threading.Thread(target=self._read, name="run-writer-replies", daemon=True)
        self._reader.start()
        self._write(_Setup(uri, os.getcwd(), experiment))

    @traced("mlflow.writer_send")
    def send(self, event: TrialEvent) -> None:
        """Queue a trial event (sweeps.runtime.events) in the writer; raises once the writer has stopped on an error."""
        self._write(event)

    def _write(self, message: Any) -> None:
        if self.error:
            raise RuntimeError(f"the MLflow writer stopped: {self.error}")
        try:
            pickle.dump(message, self.proc.stdin)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self._reader.join(timeout=10)
            raise RuntimeError(f"the MLflow writer stopped: {self.error or 'it exited'}") from None

    @traced("mlflow.writer_finish")
    def finish(self, timeout: float = 600) -> None:
        """Close stdin and wait until the writer has written everything it was sent."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        if self.error:
            raise RuntimeError(f"the MLflow writer stopped: {self.error}")

    def _read(self) -> None:
        while True:
            try:
                kind, value = pickle.load(self.proc.stdout)
            except (EOFError, OSError, pickle.UnpicklingError):
                return
            if kind == "error":
                self.error = value
            elif kind == "run":
                self.run_id = value[0]
            self._on_reply(kind, value)


@dataclass(frozen=True)
class _Setup:
    """The writer's first message: where the store is and which experiment the run goes to."""

    uri: str | None
    cwd: str
    experiment: str


def _serve(stdin: Any, stdout: Any) -> None:
    from sweeps.tracking.runbook import RunBook, tracking_uri

    def reply(kind: str, value: Any) -> None:
        pickle.dump((kind, value), stdout)
        stdout.flush()

    runbook: RunBook | None = None
    try:
        setup = pickle.load(stdin)
        uri = tracking_uri(setup.uri, setup.cwd)
        _warm_up(uri)
        sink = None
        while True:
            try:
                event = pickle.load(stdin)
            except EOFError:
                break
            if sink is None:  # the store is created with the run, after the pre-flight checks passed
                runbook = RunBook(uri, setup.experiment)
                sink = MlflowSink(runbook)
            run_id = sink.apply(event)
            if isinstance(event, RunOpened):
                reply("run", (run_id, uri))
    except BaseException as exc:
        from sweeps.tracking.redact import scrub_text

        reply("error", scrub_text(f"{type(exc).__name__}: {exc}"))  # a store error can quote its URL
        raise
    finally:
        if runbook is not None and runbook.open_runs:  # the training process ended without closing it
            runbook.close_all("FAILED", "the training process ended without closing its MLflow run")


def _warm_up(uri: str) -> None:
    """While the trainer imports torch: render one empty figure (fonts, PNG writer) and open the
    store if that writes nothing (an existing SQLite file or a tracking server). A new store is
    created only when the run is, after the config has passed the pre-flight checks."""
    import io

    from matplotlib.figure import Figure

    from sweeps.search.storage import sqlite_path

    Figure(figsize=(1, 1)).savefig(io.BytesIO(), format="png")
    database = sqlite_path(uri)
    if (database is not None and database.is_file()) or uri.startswith(("http://", "https://")):
        from mlflow.tracking import MlflowClient

        try:
            MlflowClient(tracking_uri=uri)  # builds and caches the store (schema check) for the RunBook
        except Exception:  # best effort: the RunBook opens it again, with retries and a clear error
            pass


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # library prints must not corrupt the reply stream
    try:
        _serve(stdin, stdout)
    except BaseException:
        from sweeps.tracking.redact import scrub_text

        sys.stderr.write(scrub_text(traceback.format_exc()))
        sys.stderr.flush()
        os._exit(1)
    os._exit(0)  # everything is committed; skip the interpreter's teardown of MLflow and SQLAlchemy


if __name__ == "__main__":
    main()
