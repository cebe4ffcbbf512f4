"""Where and how the worker processes run: which device and how many CPU threads each worker
gets, and how its process starts (spawn on GPUs, a warm fork server on CPU).

Kept free of torch, MLflow and the supervisor on purpose: the sweep process calls it before it
imports torch or MLflow, so the CPU workers' fork server starts importing at once.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from dataclasses import dataclass, field

from omegaconf import DictConfig

# What the fork server imports once for all CPU workers (otherwise each worker pays the imports again).
# `trainer` first: it quiets a bitsandbytes import-time warning (see trainer/__init__.py).
WORKER_PRELOAD = ["trainer", "torch", "transformers", "transformers.optimization", "peft", "bitsandbytes", "datasets",
                  "matplotlib.figure", "matplotlib.backends.backend_agg", "sweeps.runtime.worker", "trainer.recipe"]

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


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as the planner sees it: the CUDA_VISIBLE_DEVICES entry a worker gets, and memory."""

    entry: str
    name: str
    total_mb: float
    free_mb: float


CUDA_CONTEXT_MB = 600.0  # per worker process on a GPU: CUDA context, cuBLAS workspace, allocator slack
MEMORY_SAFETY = 0.85     # share of a GPU's free memory the packed workers may plan to use


def pack_workers(gpu: GpuInfo, per_device: int | str, estimate_mb: float | None, cores: int) -> int:
    """Workers on one GPU: `per_device` as given, or for `auto` as many as the largest config's
    estimated peak (plus a CUDA context each) fits in MEMORY_SAFETY of the free memory, capped by
    the CPU cores that feed them; at least one."""
    if per_device != "auto":
        return int(per_device)
    if not estimate_mb:
        return 1
    fit = int(gpu.free_mb * MEMORY_SAFETY // (estimate_mb + CUDA_CONTEXT_MB))
    return max(1, min(fit, cores))


@dataclass
class WorkerPlan:
    """Which worker gets which device and how many CPU threads."""

    cuda_devices: list[str | None]
    threads: int | None
    lines: list[str] = field(default_factory=list)  # the plan in words, per GPU

    @property
    def on_gpu(self) -> bool:
        return any(device is not None for device in self.cuda_devices)

    @classmethod
    def make(cls, n_jobs: int | None, devices: list[int] | None, n_trials: int | None = None,
             per_device: int | str = 1, estimate_mb: float | None = None,
             inventory: list[GpuInfo] | None = None) -> "WorkerPlan":
        """`inventory`: the visible GPUs (probed when None and needed); `per_device` (1, N or auto)
        packs several workers on each GPU; `estimate_mb`: the search space's largest trial."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        count = (len(inventory) if inventory is not None else cuda_device_count()) if devices is None or devices else 0
        if devices is None:
            devices = list(range(count))
        if devices and per_device == 1:
            n = int(n_jobs or len(devices))
            visible = [g.entry for g in inventory] if inventory is not None else visible_devices()
            return cls(list(worker_devices(devices, n, visible, count)), None)
        if devices:
            visible = [g.entry for g in inventory] if inventory is not None else visible_devices()
            check_devices(devices, count, visible)
            gpus = inventory if inventory is not None else gpu_inventory(count, visible)
            share = max(1, cores // len(devices))
            out, lines = [], []
            for d in devices:
                k = pack_workers(gpus[d], per_device, estimate_mb, share)
                out += [gpus[d].entry] * k
                estimate = f", about {estimate_mb / 1024:.1f} GiB each (estimated, largest config)" if estimate_mb else ""
                lines.append(f"GPU {d} = {gpus[d].entry} ({gpus[d].name}, {gpus[d].free_mb / 1024:.1f} of "
                             f"{gpus[d].total_mb / 1024:.1f} GiB free): {k} worker(s){estimate}")
            return cls(out, max(1, cores // len(out)), lines)
        n = int(n_jobs or auto_cpu_workers(cores, n_trials))
        return cls([None] * n, max(1, cores // n))


def gpu_inventory(count: int, visible: list[str] | None) -> list[GpuInfo]:
    """Name and memory of each visible GPU, asked in a child process (no CUDA context here)."""
    from trainer.devices import cuda_properties

    out = []
    for i in range(count):
        props = cuda_properties(i)
        out.append(GpuInfo(visible[i] if visible is not None else str(i), props["name"], props["total_mb"],
                           props["free_mb"]))
    return out


def plan_for(conf: DictConfig, n_trials: int | None = None, estimate_mb: float | None = None) -> WorkerPlan:
    """The plan of a sweep from its sweeper settings (`n_jobs`, `devices`, `workers_per_device`)."""
    per_device = conf.get("workers_per_device", 1)
    if per_device != "auto" and (isinstance(per_device, bool) or not isinstance(per_device, int) or per_device < 1):
        raise DeviceError(f"hydra.sweeper.workers_per_device: must be an integer >= 1 or auto, got {per_device!r}")
    if per_device != 1 and conf.n_jobs is not None:
        raise DeviceError("hydra.sweeper.workers_per_device and hydra.sweeper.n_jobs: set one of them "
                          "(workers_per_device decides the number of GPU workers)")
    return WorkerPlan.make(conf.n_jobs, list(conf.devices) if conf.devices is not None else None, n_trials,
                           per_device, estimate_mb)


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

    from sweeps.runtime.worker import quiet_environment

    quiet_environment()  # the libraries read these when the server imports them
    worker_context(on_gpu=False)
    forkserver.ensure_running()


class DeviceOomPolicy:
    """Lowers a GPU's worker count when out-of-memory failures repeat on it. One OOM on a shared
    GPU may be a neighbour's peak (the trial is queued again); `repeats` of them since the last
    change mean the device holds too many workers: one of them is retired after its trial in
    flight. A device never goes below one worker."""

    def __init__(self, devices: dict[int, str | None], repeats: int = 2):
        self.repeats = repeats
        self.device_of = dict(devices)            # worker id -> CUDA device (None: CPU)
        self.retired: set[int] = set()
        self.ooms: dict[str, int] = {}            # device -> OOMs since its last reduction

    def active_on(self, device: str | None) -> list[int]:
        return sorted(w for w, d in self.device_of.items() if d == device and w not in self.retired)

    def replaced(self, old: int, new: int) -> None:
        """A dead worker's replacement takes its place on the same device."""
        self.device_of[new] = self.device_of.pop(old)

    def record_oom(self, worker_id: int) -> int | None:
        """An OOM on `worker_id`'s device: the worker to retire now, or None."""
        device = self.device_of.get(worker_id)
        if device is None:
            return None
        self.ooms[device] = self.ooms.get(device, 0) + 1
        active = self.active_on(device)
        if self.ooms[device] < self.repeats or len(active) < 2:
            return None
        self.ooms[device] = 0
        victim = worker_id if worker_id in active else active[-1]
        self.retired.add(victim)
        return victim
