"""Opt-in trace of where a run's time goes, written by the runtime itself.

With `LORA_SWEEP_TRACE=<file>` in the environment (inherited by workers and the MLflow writer),
each traced phase appends one JSON line to that file when it ends:
`{"phase", "start", "end", "pid", "id", "parent", ...}` (epoch seconds; `parent` is the id of
the enclosing phase in the same process, so a reader can take a phase's time exclusive of the
phases nested in it). Without the variable nothing is written and a traced call costs one
environment lookup. Phase names are stable identifiers (`trainer.train`, `worker.trial`, ...);
`bench/` turns them into its tables.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

TRACE_ENV = "LORA_SWEEP_TRACE"

F = TypeVar("F", bound=Callable[..., Any])

_ids = itertools.count(1)
_open = threading.local()  # the ids of this thread's open phases, innermost last


def trace_path() -> str | None:
    """The file this process traces to, or None when tracing is off."""
    return os.environ.get(TRACE_ENV) or None


def _write(record: dict[str, Any]) -> None:
    # one write() of one line on an O_APPEND file: lines from several processes do not interleave
    line = (json.dumps(record, default=str) + "\n").encode()
    fd = os.open(trace_path(), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


@contextmanager
def span(phase: str, **fields: Any) -> Iterator[None]:
    """Trace the block as `phase` (extra `fields`, e.g. `trial=3`, go into its line)."""
    if trace_path() is None:
        yield
        return
    stack = _open.__dict__.setdefault("ids", [])
    ident, parent = f"{os.getpid()}.{next(_ids)}", stack[-1] if stack else None
    stack.append(ident)
    start = time.time()
    try:
        yield
    finally:
        stack.pop()
        _write({"phase": phase, "start": start, "end": time.time(), "pid": os.getpid(), "id": ident,
                "parent": parent, **fields})


def traced(phase: str) -> Callable[[F], F]:
    """Decorator: every call of the function is a `phase` span."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            if trace_path() is None:
                return fn(*args, **kwargs)
            with span(phase):
                return fn(*args, **kwargs)

        return call  # type: ignore[return-value]

    return wrap


def process_started() -> float | None:
    """When this process started (epoch seconds; a forked process: when it was forked), where
    the OS says so (Linux /proc), else None."""
    try:
        with open("/proc/self/stat") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return time.time() - (uptime - start_ticks / os.sysconf("SC_CLK_TCK"))


def mark(phase: str, start: float | None = None, **fields: Any) -> None:
    """A phase that began at `start` (default: when this process started) and ends now, outside
    any open phase: start-up before the first traced call, e.g. imports and the fork itself."""
    if trace_path() is None:
        return
    start = process_started() if start is None else start
    if start is None:
        return
    _write({"phase": phase, "start": start, "end": time.time(), "pid": os.getpid(), "id": f"{os.getpid()}.{next(_ids)}",
            "parent": None, **fields})
