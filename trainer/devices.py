"""Which device a trial runs on and which precisions that device can actually train in."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from trainer.errors import ConfigError

PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16", "pure_bf16")
OPTIMIZERS: tuple[str, ...] = ("adamw_torch", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit")


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
        if device.index is None:  # current_device() would initialise CUDA; a fresh process is on 0
            device = torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_initialized() else 0)
    elif device.type != "cpu":
        raise ConfigError("train.device", spec, "auto, cpu, cuda or cuda:N")
    return device


def supported_precisions(device: Any) -> list[str]:
    """fp16 needs CUDA; bf16 needs an Ampere+ GPU, or a CPU with native bf16 (AVX512-BF16/AMX),
    since emulated bf16 on CPU is slower than fp32 and not what a sweep wants to measure."""
    if device.type == "cuda":
        return ["fp32", "fp16"] + (["bf16", "pure_bf16"] if cuda_properties(device.index or 0)["bf16"] else [])
    return ["fp32"] + (["bf16", "pure_bf16"] if cpu_flags() & {"avx512_bf16", "amx_bf16"} else [])


_PROBE = """
import json, sys, torch
i = int(sys.argv[1])
free, total = torch.cuda.mem_get_info(i)
print(json.dumps({"name": torch.cuda.get_device_name(i), "bf16": torch.cuda.get_device_capability(i)[0] >= 8,
                  "free_mb": free / 2**20, "total_mb": total / 2**20}))
"""


@lru_cache(maxsize=16)
def cuda_properties(index: int) -> dict[str, Any]:
    """Name, native-bf16 support and memory (free, total MiB) of a visible GPU, without a CUDA
    context in this process.

    Asking torch here (get_device_name, is_bf16_supported) would initialise CUDA: the sweep
    process, which only plans and validates, would then hold a context and its memory on that GPU
    for the whole sweep. Where this process already uses CUDA (a worker) torch is asked directly;
    elsewhere a short child process asks and exits, taking its context with it.
    """
    import torch

    if torch.cuda.is_initialized():
        free, total = torch.cuda.mem_get_info(index)
        return {"name": torch.cuda.get_device_name(index), "bf16": torch.cuda.get_device_capability(index)[0] >= 8,
                "free_mb": free / 2**20, "total_mb": total / 2**20}
    import json
    import subprocess
    import sys

    try:
        out = subprocess.run([sys.executable, "-c", _PROBE, str(index)], capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        raise ConfigError("train.device", f"cuda:{index}", "a GPU this process can use",
                          "asking CUDA for the GPU's name took over 300 s (a hung driver?)") from None
    if out.returncode != 0:
        raise ConfigError("train.device", f"cuda:{index}", "a GPU this process can use",
                          (out.stderr.strip().splitlines() or ["the CUDA probe failed"])[-1])
    return json.loads(out.stdout.strip().splitlines()[-1])


def resolve_compute_dtype(compute_dtype: str, device: Any) -> str:
    """quant.compute_dtype=auto: bfloat16 where the device computes in bf16 natively, else float32."""
    if compute_dtype != "auto":
        return compute_dtype
    return "bfloat16" if "bf16" in supported_precisions(device) else "float32"


def supported_optimizers(device: Any) -> list[str]:
    """Paged optimizers page GPU optimizer state out to host memory under pressure: on CPU there is
    nothing to page (bitsandbytes silently runs the unpaged one), so only CUDA offers them."""
    return list(OPTIMIZERS) if device.type == "cuda" else ["adamw_torch", "adamw_8bit"]


def device_name(device: Any) -> str:
    from trainer.fingerprint import cpu_model

    return cuda_properties(device.index or 0)["name"] if device.type == "cuda" else f"cpu ({cpu_model()})"
