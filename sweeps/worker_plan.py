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
        if devices is None:
            devices = list(range(cuda_device_count()))
        if devices:
            n = int(n_jobs or len(devices))
            return cls([str(devices[i % len(devices)]) for i in range(n)], None)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        n = int(n_jobs or auto_cpu_workers(cores, n_trials))
        return cls([None] * n, max(1, cores // n))


def plan_for(conf: DictConfig, n_trials: int | None = None) -> WorkerPlan:
    """The plan of a sweep from its sweeper settings (`n_jobs`, `devices`)."""
    return WorkerPlan.make(conf.n_jobs, list(conf.devices) if conf.devices is not None else None, n_trials)


def cuda_device_count() -> int:
    """torch.cuda.device_count(), but on a Linux machine without a GPU driver it answers 0
    without importing torch (2 s the fork server would otherwise wait for)."""
    if sys.platform.startswith("linux") and not any(os.path.exists(node) for node in _GPU_DEVICE_NODES):
        return 0
    import torch

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
