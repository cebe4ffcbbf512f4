"""The default worker plan: on CPU one single-threaded worker per core (bench table 5), capped by
the trials to run and by memory; an explicit n_jobs always wins."""

from __future__ import annotations

import os

import pytest

from sweeps.runtime.worker_plan import DeviceError, WorkerPlan, auto_cpu_workers, visible_devices


def _memory_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def test_auto_cpu_workers_is_one_per_core_capped_by_trials_and_memory():
    assert auto_cpu_workers(cores=4, n_trials=10, gib_per_worker=_memory_gib() / 8) == 4
    assert auto_cpu_workers(cores=8, n_trials=3, gib_per_worker=_memory_gib() / 16) == 3
    assert auto_cpu_workers(cores=8, n_trials=10, gib_per_worker=_memory_gib() / 2.5) == 2
    assert auto_cpu_workers(cores=8, n_trials=10, gib_per_worker=_memory_gib() * 2) == 1  # never zero


def test_cpu_plan_splits_the_cores_between_workers():
    cores = len(os.sched_getaffinity(0))
    explicit = WorkerPlan.make(n_jobs=1, devices=[], n_trials=10)
    assert explicit.cuda_devices == [None] and explicit.threads == cores and not explicit.on_gpu
    auto = WorkerPlan.make(n_jobs=None, devices=[], n_trials=1)
    assert len(auto.cuda_devices) == 1 and auto.threads == cores  # one trial: one worker with every core
    auto = WorkerPlan.make(n_jobs=None, devices=[], n_trials=100)
    assert len(auto.cuda_devices) == auto_cpu_workers(cores, 100) and auto.threads == max(1, cores // len(auto.cuda_devices))


def _gpus(monkeypatch, count: int, visible: str | None) -> None:
    """A faked device inventory: `count` GPUs seen through CUDA_VISIBLE_DEVICES=`visible`."""
    import sweeps.runtime.worker_plan as worker_plan

    monkeypatch.setattr(worker_plan, "cuda_device_count", lambda: count)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)


def test_gpu_plan_is_one_worker_per_device_unless_n_jobs_says_otherwise(monkeypatch):
    _gpus(monkeypatch, 2, None)
    plan = WorkerPlan.make(n_jobs=None, devices=[0, 1], n_trials=10)
    assert plan.cuda_devices == ["0", "1"] and plan.on_gpu and plan.threads is None
    assert WorkerPlan.make(n_jobs=4, devices=[0, 1]).cuda_devices == ["0", "1", "0", "1"]
    assert WorkerPlan.make(n_jobs=None, devices=None).cuda_devices == ["0", "1"]


def test_workers_get_the_gpus_the_scheduler_gave_not_absolute_indices(monkeypatch):
    """Under SLURM or on a shared box the sweep sees CUDA_VISIBLE_DEVICES=2,3: its worker 0 must
    get GPU 2 (not the absolute GPU 0, someone else's), and UUIDs and MIG slices pass through."""
    _gpus(monkeypatch, 2, "2,3")
    assert WorkerPlan.make(n_jobs=None, devices=None).cuda_devices == ["2", "3"]
    assert WorkerPlan.make(n_jobs=None, devices=[1]).cuda_devices == ["3"]
    uuids = "GPU-8f2c1a3e-0000-1111-2222-333344445555,GPU-1b7d9e2f-6666-7777-8888-999900001111"
    _gpus(monkeypatch, 2, uuids)
    assert WorkerPlan.make(n_jobs=3, devices=None).cuda_devices == [*uuids.split(","), uuids.split(",")[0]]
    mig = "MIG-4c5d6e7f-aaaa-bbbb-cccc-ddddeeeeffff"
    _gpus(monkeypatch, 1, mig)
    assert WorkerPlan.make(n_jobs=None, devices=[0]).cuda_devices == [mig]


def test_visible_devices_reads_cuda_visible_devices_as_cuda_does():
    assert visible_devices({}) is None
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "2, 3"}) == ["2", "3"]
    assert visible_devices({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "-1"}) == []
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "1,-1,2"}) == ["1"]  # CUDA stops at the first invalid entry


def test_devices_outside_the_visible_set_are_refused_with_what_is_visible(monkeypatch):
    _gpus(monkeypatch, 2, "2,3")
    with pytest.raises(DeviceError) as err:
        WorkerPlan.make(n_jobs=None, devices=[5])
    message = str(err.value)
    assert "hydra.sweeper.devices: 5" in message and "CUDA_VISIBLE_DEVICES=2,3" in message and "0..1" in message
    with pytest.raises(DeviceError, match="twice"):
        WorkerPlan.make(n_jobs=None, devices=[1, 1])
    with pytest.raises(DeviceError, match="is not a visible GPU"):
        WorkerPlan.make(n_jobs=None, devices=[-1])
    _gpus(monkeypatch, 0, None)
    with pytest.raises(DeviceError, match="no GPU is visible"):
        WorkerPlan.make(n_jobs=None, devices=[0])


def test_the_sweep_refuses_an_invisible_device_before_any_trial(tmp_path):
    """`hydra.sweeper.devices=[5]` on a machine that sees fewer GPUs: a clear error, exit != 0, no store written."""
    from sweep_helpers import run_sweep

    proc = run_sweep(tmp_path, "hydra.sweeper.devices=[5]", "hydra.sweeper.n_trials=1", check=False, timeout=300)
    assert proc.returncode != 0
    assert "hydra.sweeper.devices: 5 is not a visible GPU" in proc.stdout + proc.stderr
    assert not (tmp_path / "optuna-journal.log").exists() and not (tmp_path / "mlflow.db").exists()
