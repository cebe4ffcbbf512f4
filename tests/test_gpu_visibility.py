"""GPUs as the scheduler gave them: counting what this process sees without a CUDA context,
refusing `hydra.sweeper.devices` it cannot see before any trial, and logging what determinism
torch really enforced."""

from __future__ import annotations

import os

import pandas as pd
import pytest
from omegaconf import OmegaConf

from conftest import CONF, compose_cfg

# torch.cuda calls that initialise CUDA in the calling process (and with it a context on a GPU).
CONTEXT_MAKERS = ("init", "_lazy_init", "current_device", "set_device", "get_device_name", "get_device_properties",
                  "get_device_capability", "is_bf16_supported", "mem_get_info", "synchronize", "memory_allocated",
                  "max_memory_allocated", "reset_peak_memory_stats", "empty_cache")


def _forbid_context(monkeypatch) -> None:
    import torch

    def forbidden(name):
        def call(*args, **kwargs):
            raise AssertionError(f"called torch.cuda.{name}, which creates a CUDA context")
        return call

    for name in CONTEXT_MAKERS:
        monkeypatch.setattr(torch.cuda, name, forbidden(name), raising=False)


def _gpu_machine(monkeypatch, visible: str | None, nvml_count: int) -> None:
    """A faked inventory: a GPU driver is installed, torch is a CUDA build, and torch.cuda.device_count()
    (NVML, honouring CUDA_VISIBLE_DEVICES) answers `nvml_count`; context-making calls raise."""
    import torch

    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda path: path == "/dev/nvidiactl" or real_exists(path))
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: nvml_count)
    _forbid_context(monkeypatch)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)


def test_each_mig_slice_gets_a_worker_though_one_process_enumerates_one(monkeypatch):
    from sweeps.runtime.worker_plan import WorkerPlan, cuda_device_count

    mig = ["MIG-4c5d6e7f-aaaa-bbbb-cccc-ddddeeeeffff", "MIG-0a1b2c3d-1111-2222-3333-444455556666"]
    _gpu_machine(monkeypatch, ",".join(mig), nvml_count=1)  # CUDA in the sweep process sees only the first slice
    assert cuda_device_count() == 2
    assert WorkerPlan.make(n_jobs=None, devices=None).cuda_devices == mig
    assert WorkerPlan.make(n_jobs=None, devices=[1]).cuda_devices == [mig[1]]


def test_indices_and_uuids_are_counted_as_cuda_sees_them(monkeypatch):
    from sweeps.runtime.worker_plan import DeviceError, WorkerPlan, cuda_device_count

    _gpu_machine(monkeypatch, None, nvml_count=4)  # unset: every GPU, numbered absolutely
    assert WorkerPlan.make(n_jobs=None, devices=[1, 3]).cuda_devices == ["1", "3"]
    _gpu_machine(monkeypatch, "2,3", nvml_count=1)  # a 3-GPU box: "3" names no GPU, CUDA stops there
    assert cuda_device_count() == 1
    with pytest.raises(DeviceError) as err:
        WorkerPlan.make(n_jobs=None, devices=[1])
    assert "CUDA ignores the entries from '3' on, which names no GPU here" in str(err.value)
    assert "allowed: indices 0..0 (0 = 2)" in str(err.value)
    for hidden in ("", "-1"):
        _gpu_machine(monkeypatch, hidden, nvml_count=4)
        assert cuda_device_count() == 0
        plan = WorkerPlan.make(n_jobs=1, devices=None)
        assert plan.cuda_devices == [None] and not plan.on_gpu  # CPU workers
    monkeypatch.setattr("torch.backends.cuda.is_built", lambda: False)  # a CPU build of torch
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-4c5d6e7f-aaaa-bbbb-cccc-ddddeeeeffff")
    assert cuda_device_count() == 0


def _sweeper_conf(**settings):
    from sweeps.sweeper_config import LoraOptunaSweeperConf

    return OmegaConf.structured(LoraOptunaSweeperConf(**settings))


@pytest.mark.parametrize("devices, says", [
    ([5], "hydra.sweeper.devices: 5 is not a visible GPU; this process sees 2 GPU(s) (CUDA_VISIBLE_DEVICES=2,3); "
          "allowed: indices 0..1 (0 = 2, 1 = 3), as numbered within the visible set"),
    ([-1], "hydra.sweeper.devices: -1 is not a visible GPU"),
    ([0, 0], "hydra.sweeper.devices: [0, 0] lists a GPU twice"),
    (["GPU-8f2c1a3e"], "hydra.sweeper.devices: 'GPU-8f2c1a3e' is not a GPU index; this process sees 2 GPU(s) "
                       "(CUDA_VISIBLE_DEVICES=2,3); allowed: indices 0..1 (0 = 2, 1 = 3)"),
    ([1.5], "hydra.sweeper.devices: 1.5 is not a GPU index"),
    ([True], "hydra.sweeper.devices: True is not a GPU index"),
])
def test_the_preflight_refuses_devices_it_cannot_see(monkeypatch, devices, says):
    """The sweeper's pre-flight (before any store or worker): the key, the visible GPUs as the
    parent's CUDA_VISIBLE_DEVICES entries, and the indices allowed."""
    from sweeps.preflight import check_sweeper_settings
    from sweeps.search.samplers import SweeperConfigError
    from sweeps.search.space import parse_search_space

    _gpu_machine(monkeypatch, "2,3", nvml_count=2)
    space = parse_search_space({}, ["lora.r=4,8"])
    with pytest.raises(SweeperConfigError) as err:
        check_sweeper_settings(_sweeper_conf(devices=devices), space, ["eval_accuracy"])
    assert says in str(err.value)


@pytest.fixture
def gpu_sweep(monkeypatch, tiny_bert_dir):
    """A GPU-ish sweep on a faked two-GPU inventory (CUDA_VISIBLE_DEVICES=2,3), everything that
    would create a CUDA context in this process made to raise. The libraries are imported first:
    with CUDA faked, bitsandbytes would try to load its CUDA kernels."""
    import bitsandbytes  # noqa: F401
    import peft  # noqa: F401
    import torch
    import transformers.optimization  # noqa: F401

    import trainer
    import trainer.prechecks  # noqa: F401
    from sweeps.runtime.compose import ComposeSpec
    from sweeps.search.space import parse_search_space

    _gpu_machine(monkeypatch, "2,3", nvml_count=2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    base = [f"model.name_or_path={tiny_bert_dir}", "train.device=cuda", "quant=4bit", "quant.compute_dtype=auto",
            "data.max_train_samples=32", "data.max_eval_samples=16"]
    space = parse_search_space({}, ["lora.r=4,8", "train.precision=fp16,bf16"])
    composer = lambda params: compose_cfg(base + [f"{k}={v}" for k, v in params.items()])  # noqa: E731
    return {"job": compose_cfg(base), "space": space, "compose": ComposeSpec(str(CONF), "sweep"), "composer": composer,
            "trainer": trainer}


def test_the_sweep_preflight_creates_no_cuda_context(gpu_sweep, monkeypatch):
    """Sweeper settings, every search-space extreme through validate_config and the meta-model
    pre-flight, and the worker plan, with the GPU properties from a (faked) probe."""
    import trainer.devices as devices
    from sweeps.preflight import preflight_sweep
    from sweeps.runtime.worker_plan import plan_for

    monkeypatch.setattr(devices, "cuda_properties", lambda index: {"name": f"Fake GPU {index}", "bf16": True},
                        raising=False)
    conf = _sweeper_conf(devices=[1, 0])
    preflight_sweep(conf, gpu_sweep["job"], gpu_sweep["space"], gpu_sweep["compose"], ["eval_accuracy"],
                   gpu_sweep["composer"])
    assert plan_for(conf).cuda_devices == ["3", "2"]


def test_the_gpu_probe_runs_in_a_child_process(gpu_sweep):
    """Unfaked, the device's properties come from a child process (whose context dies with it): on
    a GPU machine the pre-flight completes; without one it fails with our train.device error, and
    never by calling a context-making function here."""
    from sweeps.preflight import preflight_sweep
    from sweeps.search.samplers import SweeperConfigError

    gpu_sweep["trainer"].devices.cuda_properties.cache_clear()
    try:
        preflight_sweep(_sweeper_conf(), gpu_sweep["job"], gpu_sweep["space"], gpu_sweep["compose"], ["eval_accuracy"],
                       gpu_sweep["composer"])
    except (gpu_sweep["trainer"].ConfigError, SweeperConfigError) as exc:
        assert "train.device: must be a GPU this process can use, got 'cuda:0'" in str(exc)
        assert "creates a CUDA context" not in str(exc)
    finally:
        gpu_sweep["trainer"].devices.cuda_properties.cache_clear()


def test_determinism_is_logged_as_enforced(monkeypatch):
    """On CPU every op has a deterministic kernel: strict. Where CUDA is available seed_everything
    only warns, and the fingerprint says so before any trial runs."""
    import torch

    from trainer.fingerprint import environment_fingerprint
    from trainer.seeding import determinism_mode, seed_everything

    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        seed_everything(0)
        assert determinism_mode() == "strict" and environment_fingerprint()["deterministic"] == "strict"
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Fake GPU")
        seed_everything(0)
        assert determinism_mode() == "warn_only" and environment_fingerprint()["deterministic"] == "warn_only"
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def test_old_studies_boolean_reads_as_what_was_enforced():
    """Older runs stored `deterministic_algorithms: True` on CUDA too, where torch only warned."""
    from analysis.reproducibility import determinism_of

    rows = [({"deterministic_algorithms": True, "env.cuda": "12.8"}, "warn_only"),
            ({"deterministic_algorithms": True, "env.cuda": "none"}, "strict"),
            ({"deterministic_algorithms": False, "env.cuda": "12.8"}, "off"),
            ({"deterministic_algorithms": True}, "on (strict on CPU, warn_only on CUDA; device not recorded)"),
            ({"deterministic": "warn_only", "deterministic_algorithms": True, "env.cuda": "none"}, "warn_only"),
            ({"seed": 1}, None)]
    assert [determinism_of(pd.Series(row)) for row, _ in rows] == [mode for _, mode in rows]
