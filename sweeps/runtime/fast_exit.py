"""Ending the CLI process without the interpreter's module teardown."""

from __future__ import annotations

import atexit
import os
import sys

exit_code: int | None = None  # what `exit_now` was given (the exit status, for an atexit hook such as bench/probe_trial.py)


def exit_now(code: object) -> None:
    """Run the atexit handlers (logging, MLflow and multiprocessing flush and join there), flush the
    streams, then end the process without tearing down the imported modules: for a process that
    has loaded torch, transformers and mlflow that teardown takes seconds and changes nothing."""
    global exit_code
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message")
        print(code, file=sys.stderr)
        code = 1
    exit_code = code
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
