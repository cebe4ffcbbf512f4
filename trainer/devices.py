"""Which device a trial runs on and which precisions that device can actually train in."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from trainer.errors import ConfigError

PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16")


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """CPU feature flags from /proc/cpuinfo (empty where unavailable)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def resolve_device(spec: str) -> Any:
    """`auto` -> cuda when available else cpu; an explicit cuda device must exist."""
    import torch

    spec = str(spec)
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError as e:
        raise ConfigError("train.device", spec, "auto, cpu, cuda or cuda:N", str(e)) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device", spec, "auto or cpu on this machine", "CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError("train.device", spec, f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
        device = torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
    elif device.type != "cpu":
        raise ConfigError("train.device", spec, "auto, cpu, cuda or cuda:N")
    return device


def supported_precisions(device: Any) -> list[str]:
    """fp16 needs CUDA; bf16 needs an Ampere+ GPU, or a CPU with native bf16 (AVX512-BF16/AMX),
    since emulated bf16 on CPU is slower than fp32 and not what a sweep wants to measure."""
    import torch

    if device.type == "cuda":
        return ["fp32", "fp16"] + (["bf16"] if torch.cuda.is_bf16_supported() else [])
    return ["fp32"] + (["bf16"] if cpu_flags() & {"avx512_bf16", "amx_bf16"} else [])


def device_name(device: Any) -> str:
    import torch

    from trainer.fingerprint import cpu_model

    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({cpu_model()})"
