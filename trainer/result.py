"""What one fine-tune returns to its caller."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrialResult:
    """Final eval metrics plus the cost and the resolved settings needed to compare trials."""

    metrics: dict[str, float]
    objective: float
    trainable_params: int
    total_params: int
    steps: int
    train_runtime_s: float
    samples_per_second: float
    peak_memory_mb: float
    history: list[dict[str, Any]] = field(default_factory=list)
    adapter_dir: Path | None = None
    resolved: dict[str, Any] = field(default_factory=dict)
