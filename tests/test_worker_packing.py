"""hydra.sweeper.workers_per_device: several workers per GPU, `auto` packed by the pre-flight's
memory estimate of the largest trial. The device inventory is faked (the planner is what is
tested; no GPU here), the mapping to CUDA_VISIBLE_DEVICES entries is real."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from sweeps.runtime.worker_plan import CUDA_CONTEXT_MB, MEMORY_SAFETY, DeviceError, GpuInfo, WorkerPlan, pack_workers, plan_for

H200 = GpuInfo("GPU-aaaa", "NVIDIA H200", 143_000.0, 140_000.0)
T4 = GpuInfo("GPU-bbbb", "Tesla T4", 15_360.0, 15_000.0)


def test_auto_packs_what_the_memory_estimate_fits_capped_by_cores():
    assert pack_workers(H200, "auto", 20_000.0, cores=16) == int(140_000 * MEMORY_SAFETY // (20_000 + CUDA_CONTEXT_MB))
    assert pack_workers(H200, "auto", 2_000.0, cores=4) == 4  # room for 45, four cores to feed them
    assert pack_workers(T4, "auto", 20_000.0, cores=16) == 1  # too big even alone: one worker (OOM retry halves it)
    assert pack_workers(T4, 3, 20_000.0, cores=16) == 3  # an explicit count is taken as given


def test_two_workers_share_one_gpu_through_its_own_entry(monkeypatch):
    plan = WorkerPlan.make(None, None, per_device=2, inventory=[T4])
    assert plan.cuda_devices == ["GPU-bbbb", "GPU-bbbb"] and plan.on_gpu
    assert "2 worker(s)" in plan.lines[0] and "Tesla T4" in plan.lines[0]


def test_auto_plan_over_two_gpus_uses_each_gpus_free_memory(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    plan = WorkerPlan.make(None, None, per_device="auto", estimate_mb=30_000.0, inventory=[H200, T4])
    assert plan.cuda_devices == ["GPU-aaaa"] * 3 + ["GPU-bbbb"]
    assert plan.threads == 4  # 16 cores over 4 workers
    assert plan.lines[0].startswith("GPU 0 = GPU-aaaa (NVIDIA H200, 136.7 of 139.6 GiB free): 3 worker(s), about 29.3 GiB")
    only_second = WorkerPlan.make(None, [1], per_device="auto", estimate_mb=30_000.0, inventory=[H200, T4])
    assert only_second.cuda_devices == ["GPU-bbbb"]


def test_settings_are_checked():
    conf = OmegaConf.create({"n_jobs": None, "devices": [], "workers_per_device": 0})
    with pytest.raises(DeviceError, match="workers_per_device"):
        plan_for(conf)
    conf = OmegaConf.create({"n_jobs": 2, "devices": [], "workers_per_device": "auto"})
    with pytest.raises(DeviceError, match="set one of them"):
        plan_for(conf)
    with pytest.raises(DeviceError, match="not a visible GPU"):
        WorkerPlan.make(None, [3], per_device=2, inventory=[T4])
    cpu = plan_for(OmegaConf.create({"n_jobs": 2, "devices": [], "workers_per_device": 1}))
    assert cpu.cuda_devices == [None, None] and cpu.threads >= 1  # on CPU: processes and threads as before
