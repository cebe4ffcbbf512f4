"""The sweep process plans and validates but never trains: it must not create a CUDA context,
which would hold memory on a GPU (GPU 0, someone else's under a scheduler) for the whole sweep."""

from __future__ import annotations

import pytest

from conftest import compose_cfg

# torch.cuda calls that initialise CUDA in the calling process (and with it a context on a GPU).
CONTEXT_MAKERS = ("init", "_lazy_init", "current_device", "set_device", "get_device_name", "get_device_properties",
                  "get_device_capability", "is_bf16_supported", "mem_get_info", "synchronize", "memory_allocated",
                  "max_memory_allocated", "reset_peak_memory_stats", "empty_cache")


@pytest.fixture
def two_gpus_no_context(monkeypatch):
    """A faked inventory of two bf16-capable GPUs; every context-making torch.cuda call raises.
    The libraries are imported first: with CUDA faked, bitsandbytes would load its CUDA kernels."""
    import bitsandbytes  # noqa: F401
    import peft  # noqa: F401
    import torch
    import transformers.optimization  # noqa: F401

    import trainer.prechecks  # noqa: F401

    import trainer.devices as devices

    def forbidden(name):
        def call(*args, **kwargs):
            raise AssertionError(f"the pre-flight called torch.cuda.{name}, which creates a CUDA context")
        return call

    for name in CONTEXT_MAKERS:
        monkeypatch.setattr(torch.cuda, name, forbidden(name), raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(devices, "cuda_properties", lambda index: {"name": f"Fake GPU {index}", "bf16": True})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")


def test_preflight_on_a_gpu_config_creates_no_cuda_context(two_gpus_no_context, tiny_bert_dir, monkeypatch):
    import sweeps.runtime.worker_plan as worker_plan
    import trainer
    from sweeps.runtime.worker_plan import WorkerPlan

    cfg = compose_cfg([f"model.name_or_path={tiny_bert_dir}", "train.device=cuda", "train.precision=bf16",
                       "quant=4bit", "quant.compute_dtype=auto", "data.max_train_samples=32", "data.max_eval_samples=16"])
    trainer.validate_config(cfg)
    trainer.preflight(cfg)
    monkeypatch.setattr(worker_plan, "cuda_device_count", lambda: 2)  # this machine has no GPU driver nodes
    assert WorkerPlan.make(n_jobs=None, devices=None).cuda_devices == ["2", "3"]


def test_a_refused_precision_names_the_gpu_without_a_context(two_gpus_no_context, tiny_bert_dir, monkeypatch):
    import trainer.devices as devices
    from trainer import ConfigError, validate_config

    monkeypatch.setattr(devices, "cuda_properties", lambda index: {"name": "Fake T4", "bf16": False})
    cfg = compose_cfg([f"model.name_or_path={tiny_bert_dir}", "train.device=cuda", "train.precision=bf16"])
    with pytest.raises(ConfigError, match=r"train.precision.*fp32, fp16 on device cuda:0 \[Fake T4\]"):
        validate_config(cfg)
