"""Where and how the worker processes run: which device and how many CPU threads each worker
gets, and how its process starts (spawn on GPUs, a warm fork server on CPU).

Kept free of torch, MLflow and the supervisor on purpose: the sweep process calls it before it
imports torch or MLflow, so the CPU workers' fork server starts importing at once.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from dataclasses import dataclass

from omegaconf import DictConfig

# What the fork server imports once for all CPU workers (about 8 s of CPU per process otherwise).
# `trainer` first: it quiets a bitsandbytes import-time warning (see trainer/__init__.py).
WORKER_PRELOAD = ["trainer", "torch", "transformers", "transformers.optimization", "peft", "bitsandbytes", "datasets",
                  "matplotlib.figure", "matplotlib.backends.backend_agg", "sweeps.worker", "trainer.recipe"]

# Device nodes of the GPU drivers torch.cuda can use on Linux (NVIDIA, ROCm, WSL2).
_GPU_DEVICE_NODES = ("/dev/nvidiactl", "/dev/kfd", "/dev/dxg")


class DeviceError(ValueError):
    """hydra.sweeper.devices names a GPU this process cannot see (the message says which it can)."""


def visible_devices(environ: dict[str, str] | None = None) -> list[str] | None:
    """The GPUs this process was given, as the entries of its CUDA_VISIBLE_DEVICES (indices,
    `GPU-<uuid>`, `MIG-<uuid>`), in the order CUDA numbers them; None when the variable is unset
    (every GPU, numbered absolutely). As CUDA does, the list ends at the first empty or negative
    entry, so "" and "-1" hide every GPU."""
    raw = (os.environ if environ is None else environ).get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return None
    entries = []
    for entry in (e.strip() for e in raw.split(",")):
        if not entry or entry.startswith("-"):
            break
        entries.append(entry)
    return entries


def worker_devices(devices: list, n_workers: int, visible: list[str] | None, count: int) -> list[str]:
    """CUDA_VISIBLE_DEVICES of each worker. `devices` are indices as this process numbers its GPUs
    (0..count-1); a worker gets the parent's own entry for its GPU, so under SLURM, on a shared
    box or with MIG slices (CUDA_VISIBLE_DEVICES=2,3 or UUIDs) it lands on a GPU it was given."""
    check_devices(devices, count, visible)
    chosen = [devices[i % len(devices)] for i in range(n_workers)]
    return [visible[d] if visible is not None else str(d) for d in chosen]


def check_devices(devices: list, count: int, visible: list[str] | None) -> None:
    """Every entry of hydra.sweeper.devices must be an index of a GPU this process sees, given once."""
    seen = f"CUDA_VISIBLE_DEVICES={','.join(visible)}" if visible is not None else "CUDA_VISIBLE_DEVICES unset"
    if visible and not count:
        seen += "; none of them is a GPU CUDA can use here"
    elif visible is not None and count < len(visible):
        seen += f"; CUDA ignores the entries from {visible[count]!r} on, which names no GPU here"
    if not count:
        allowed = "none (no GPU is visible; leave devices null or [] to run on CPU)"
    elif visible is not None:
        allowed = (f"indices 0..{count - 1} ({', '.join(f'{i} = {visible[i]}' for i in range(count))}), "
                   "as numbered within the visible set")
    else:
        allowed = f"indices 0..{count - 1}"
    for device in devices:
        if isinstance(device, bool) or not isinstance(device, int):
            raise DeviceError(f"hydra.sweeper.devices: {device!r} is not a GPU index; this process sees {count} "
                              f"GPU(s) ({seen}); allowed: {allowed}. To pick GPUs by UUID or MIG id, list them "
                              "in CUDA_VISIBLE_DEVICES and leave devices null")
        if not 0 <= device < count:
            raise DeviceError(f"hydra.sweeper.devices: {device!r} is not a visible GPU; this process sees {count} "
                              f"GPU(s) ({seen}); allowed: {allowed}")
    if len(set(devices)) != len(devices):
        raise DeviceError(f"hydra.sweeper.devices: {devices} lists a GPU twice; give each index once "
                          "(use hydra.sweeper.n_jobs for several workers over the listed GPUs)")


@dataclass
class WorkerPlan:
    """Which worker gets which device and how many CPU threads."""

    cuda_devices: list[str | None]
    threads: int | None

    @property
    def on_gpu(self) -> bool:
        return any(device is not None for device in self.cuda_devices)

    @classmethod
    def make(cls, n_jobs: int | None, devices: list[int] | None, n_trials: int | None = None) -> "WorkerPlan":
        count = cuda_device_count() if devices is None or devices else 0
        if devices is None:
            devices = list(range(count))
        if devices:
            n = int(n_jobs or len(devices))
            return cls(list(worker_devices(devices, n, visible_devices(), count)), None)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        n = int(n_jobs or auto_cpu_workers(cores, n_trials))
        return cls([None] * n, max(1, cores // n))


def plan_for(conf: DictConfig, n_trials: int | None = None) -> WorkerPlan:
    """The plan of a sweep from its sweeper settings (`n_jobs`, `devices`)."""
    return WorkerPlan.make(conf.n_jobs, list(conf.devices) if conf.devices is not None else None, n_trials)


def gpu_driver_present() -> bool:
    """False on a Linux machine without a GPU driver (no device node): no GPU, no torch import."""
    return not sys.platform.startswith("linux") or any(os.path.exists(node) for node in _GPU_DEVICE_NODES)


def cuda_device_count() -> int:
    """How many GPUs this process can hand to workers, without creating a CUDA context.

    CUDA_VISIBLE_DEVICES="" or "-1": none, answered without importing torch. MIG slices: one per
    entry, as each worker gets its own slice (torch skips NVML for MIG ids, and one CUDA process may
    enumerate only one slice, so the parent's own count would be too low). Otherwise
    torch.cuda.device_count(): it counts through NVML, honours CUDA_VISIBLE_DEVICES (indices and
    GPU UUIDs, stopping at an entry that names no GPU) and creates no context (it falls back to
    cudaGetDeviceCount, which creates none either, only where NVML fails).
    """
    visible = visible_devices()
    if visible == [] or not gpu_driver_present():
        return 0
    import torch

    if not torch.backends.cuda.is_built():
        return 0
    if visible is not None and any(entry.startswith("MIG-") for entry in visible):
        return len(visible)
    return torch.cuda.device_count()


def auto_cpu_workers(cores: int, n_trials: int | None, gib_per_worker: float = 3.0) -> int:
    """CPU default: one single-threaded worker per core. Small models scale better across
    processes than across the threads of one (BENCHMARKS.md, table 5: on 2 cores 2 x 1 runs about
    1.5x the trials per hour of 1 x 2). Capped by the trials to run and by memory (a worker with
    a small 4-bit model peaks near 1.4 GiB; 3 GiB leaves room). Set hydra.sweeper.n_jobs for big models."""
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return max(1, min(cores, n_trials or cores, int(memory_gib // gib_per_worker)))


def worker_context(on_gpu: bool):
    """How worker processes start. With GPUs: spawn (CUDA and fork do not mix). On CPU: forked
    from a fork server that has imported torch, transformers, peft and bitsandbytes once, so each
    worker starts warm instead of paying the imports itself; `start_fork_server` starts that
    server early, so its imports overlap the sweep process's pre-flight."""
    if on_gpu:
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(WORKER_PRELOAD)
    return ctx


def start_fork_server() -> None:
    """Start the CPU workers' fork server now (it imports in the background; returns at once)."""
    from multiprocessing import forkserver

    from sweeps.worker import quiet_environment

    quiet_environment()  # the libraries read these when the server imports them
    worker_context(on_gpu=False)
    forkserver.ensure_running()
