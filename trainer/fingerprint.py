"""Versions and hardware that a result depends on, logged with every trial for reproducibility."""

from __future__ import annotations

import importlib.metadata
import os
import platform

from trainer.seeding import determinism_policy
from trainer.trace import traced


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux), else platform's best guess."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


@traced("trainer.fingerprint")
def environment_fingerprint() -> dict[str, str]:
    """Library versions, accelerator and CPU description as flat strings (MLflow tag friendly)."""
    import torch

    info: dict[str, str] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda) if torch.cuda.is_available() else "none",
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": str(os.cpu_count()),
    }
    for dist in ("transformers", "peft", "bitsandbytes", "accelerate", "datasets", "optuna", "mlflow"):
        version = _version(dist)
        if version is not None:
            info[dist] = version
    info["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else info["cpu"]
    info["deterministic"] = determinism_policy()  # warn_only: re-runs need not be bitwise equal
    return info
