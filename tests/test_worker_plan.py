"""The default worker plan: on CPU one single-threaded worker per core (bench table 5), capped by
the trials to run and by memory; an explicit n_jobs always wins."""

from __future__ import annotations

import os

from sweeps.worker_plan import WorkerPlan, auto_cpu_workers


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


def test_gpu_plan_is_one_worker_per_device_unless_n_jobs_says_otherwise():
    plan = WorkerPlan.make(n_jobs=None, devices=[0, 1], n_trials=10)
    assert plan.cuda_devices == ["0", "1"] and plan.on_gpu and plan.threads is None
    assert WorkerPlan.make(n_jobs=4, devices=[0, 1]).cuda_devices == ["0", "1", "0", "1"]
