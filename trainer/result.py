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
    samples: list[dict[str, str]] = field(default_factory=list)  # SFT: {prompt, reference, answer} rows

    def summary_metrics(self) -> dict[str, float]:
        """What a run logs when it ends: the final eval metrics plus what the trial cost. One
        definition for sweep trials and single runs, so both log the same fields."""
        cost = {"trainable_params": self.trainable_params, "total_params": self.total_params,
                "train_runtime_s": self.train_runtime_s, "samples_per_second": self.samples_per_second,
                "peak_memory_mb": self.peak_memory_mb}
        if self.resolved.get("train_padding_fraction") is not None:
            cost["train_padding_fraction"] = self.resolved["train_padding_fraction"]
        if self.resolved.get("train_packed_rows") is not None:  # train.packing: rows the examples were packed into
            cost["train_packed_rows"] = self.resolved["train_packed_rows"]
        for key in ("train_rows_truncated", "train_rows_dropped", "eval_rows_truncated", "eval_rows_dropped"):
            if key in self.resolved:  # SFT: conversations cut or skipped to fit train.max_seq_length
                cost[key] = self.resolved[key]
        return {**self.metrics, **cost}
