"""Trial checkpoints: what the training loop needs to continue a trial bit for bit.

A checkpoint holds the trainable weights (LoRA and any trained head), the optimizer, scheduler
and grad-scaler states, every RNG state (Python, NumPy, torch CPU and CUDA), the data position
(the optimizer step: the data order is a function of `data_seed` alone, so it is replayed up to
that step), the loop's running figures and the best-eval selection. Restored into the same
config, the rest of the trial is the one an uninterrupted run would have had.

`train.checkpoint_every_steps`: 0 writes a checkpoint only when asked to stop (SIGTERM: the
caller's reporter says so at a step boundary), N every N optimizer steps as well, `auto` every
few minutes of training once the trial's projected length says it is long enough to be worth it.
The file is replaced atomically, so a kill while writing leaves the previous one intact.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATE_FILE = "trainer_state.pt"
AUTO = "auto"
AUTO_MIN_TRIAL_S = 300.0  # auto: only trials projected to train longer than this are checkpointed
AUTO_EVERY_S = 120.0      # ... about this often
AUTO_PROBE_STEPS = 3      # steps timed before `auto` decides
# what a checkpoint may be continued under: the sections that decide a trial's numbers
DIGEST_KEYS = ("model", "data", "task", "lora", "quant", "train", "seed", "data_seed")


def config_digest(config: dict[str, Any]) -> str:
    """Hash of the resolved config sections that decide a trial's numbers (how often it is
    checkpointed does not)."""
    picked = {k: config.get(k) for k in DIGEST_KEYS}
    picked["train"] = {k: v for k, v in (picked["train"] or {}).items() if k != "checkpoint_every_steps"}
    return hashlib.sha256(json.dumps(picked, sort_keys=True, default=str).encode()).hexdigest()


def has_checkpoint(directory: str | Path | None) -> bool:
    return directory is not None and (Path(directory) / STATE_FILE).is_file()


def checkpoint_step(directory: str | Path) -> int:
    """The optimizer step a checkpoint continues after."""
    return int(_read(Path(directory))["step"])


def _read(directory: Path) -> dict[str, Any]:
    import torch

    # our own file (RNG states hold NumPy arrays and tuples, which the weights-only loader refuses)
    return torch.load(directory / STATE_FILE, map_location="cpu", weights_only=False)


def rng_states() -> dict[str, Any]:
    import numpy as np
    import torch

    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def restore_rng_states(states: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


@dataclass
class Checkpointer:
    """Where and how often one trial writes its checkpoint; `digest` ties it to its config."""

    directory: Path | None
    every: int | str = AUTO
    digest: str = ""
    resume: bool = False
    written: list[int] = field(default_factory=list)  # steps checkpointed in this process

    def __post_init__(self) -> None:
        self.directory = Path(self.directory) if self.directory is not None else None
        if self.every != AUTO and not (isinstance(self.every, int) and self.every >= 0):
            raise ValueError(f"train.checkpoint_every_steps: {self.every!r}; allowed: an integer >= 0 or 'auto'")

    def settle(self, steps_done: int, train_s: float, total_steps: int) -> None:
        """`auto`: once a few steps are timed, checkpoint every ~AUTO_EVERY_S of training if the
        trial is projected to train longer than AUTO_MIN_TRIAL_S, else only on request."""
        if self.every != AUTO or steps_done < AUTO_PROBE_STEPS or train_s <= 0:
            return
        per_step = train_s / steps_done
        self.every = max(1, math.ceil(AUTO_EVERY_S / per_step)) if per_step * total_steps > AUTO_MIN_TRIAL_S else 0

    def due(self, step: int, total_steps: int) -> bool:
        """A periodic checkpoint after `step` (never after the last: the trial is then done)."""
        return (self.directory is not None and isinstance(self.every, int) and self.every > 0
                and step % self.every == 0 and step < total_steps)

    def save(self, state: dict[str, Any]) -> Path | None:
        import torch

        if self.directory is None:
            return None
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / (STATE_FILE + ".tmp")
        torch.save({**state, "digest": self.digest}, tmp)
        os.replace(tmp, self.directory / STATE_FILE)
        self.written.append(int(state["step"]))
        return self.directory

    def load(self) -> dict[str, Any]:
        """The checkpoint to continue from; refused when it was written under another config."""
        if not has_checkpoint(self.directory):
            raise FileNotFoundError(f"no trial checkpoint to resume from in {self.directory}")
        state = _read(self.directory)
        if state.get("digest") != self.digest:
            raise ValueError(f"the checkpoint in {self.directory} was written for another config "
                             "(model, data, task, lora, quant, train or seeds differ); it cannot continue this trial")
        return state

    def remove(self) -> None:
        """The trial ended: its checkpoint (optimizer state included) is no longer needed."""
        if self.directory is not None and self.directory.is_dir():
            shutil.rmtree(self.directory, ignore_errors=True)
