"""Exceptions the sweeper understands: a bad config stops the sweep at pre-flight (a trial that
meets one anyway fails), a non-finite loss fails its trial."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A config value that cannot work, found before (or instead of) spending compute on it.

    Carries the dotted key, the offending value and a human description of what is allowed,
    so a sweeper can report or prune the exact search-space point that is invalid.
    """

    def __init__(self, key: str, value: Any, allowed: str, detail: str | None = None) -> None:
        self.key = key
        self.value = value
        self.allowed = allowed
        message = f"{key}: must be {allowed}, got {value!r}"
        if detail:
            message += f" ({detail})"
        super().__init__(message)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN/inf: the trial diverged and further steps are wasted time."""

    def __init__(self, step: int, value: float) -> None:
        self.step = step
        self.value = value
        super().__init__(f"non-finite training loss {value} at optimizer step {step}")


class TrialPreempted(Exception):
    """The caller asked the trial to stop (SIGTERM: preemption, a time limit, Ctrl-C): the loop
    wrote a checkpoint after `step` into `checkpoint_dir` (None when the trial has no folder),
    from which the same trial continues bit for bit."""

    def __init__(self, step: int, checkpoint_dir: Any) -> None:
        self.step = step
        self.checkpoint_dir = checkpoint_dir
        where = f"checkpoint in {checkpoint_dir}" if checkpoint_dir is not None else "no checkpoint (no trial folder)"
        super().__init__(f"stopped on request after optimizer step {step}; {where}")
