"""The GPU subset of the suite (`pytest -m gpu`; bench/gpu.py runs it): what only a CUDA device can
show. bf16 compute, the paged 8-bit optimizer, the worker's OOM retry under a per-process memory
cap, two workers sharing one GPU, a warm base reused after other target modules equal to a cold
one, and export + merge on CUDA. Tiny random models, seconds each; every test is skipped, with the
reason, where torch sees no CUDA device."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import chat_tokenizer, compose_cfg
from optuna.trial import TrialState
from sweep_helpers import REPO, SWEEP, env, only_study, run_sweep, runs

# cuBLAS is deterministic only with this set before its first call in the process (trainer.seeding)
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(600),
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="needs a CUDA GPU: torch.cuda.is_available() is False on this machine")]

SFT = ["task=sft", "data=demo_chat", "data.demo_train_size=32", "data.demo_eval_size=8", "quant=4bit",
       "train.device=cuda", "train.batch_size=8", "train.max_seq_length=128", "train.max_steps=4",
       "train.eval_every_steps=2", "train.log_every_steps=1", "task.max_new_tokens=4", "task.num_logged_samples=2"]
SWEEP_SFT = ["task=sft", "data=demo_chat", "data.demo_train_size=64", "data.demo_eval_size=8", "search_space=llm",
             "quant=4bit", "train.device=cuda", "train.max_steps=10", "train.eval_every_steps=5",
             "train.batch_size=8", "train.max_seq_length=128", "task.max_new_tokens=4", "task.num_logged_samples=2",
             "hydra.sweeper.pruner=none", "hydra.sweeper.devices=[0]"]
DIFF = re.compile(r"max abs logit difference: (\S+) \(tolerance (\S+)\)")

# Imported by every process started with its folder on PYTHONPATH: caps the CUDA caching allocator
# of each sweep worker at GPU_TEST_CAP_MB once the worker has its device (after Worker.__init__).
CAP_HOOK = '''
import importlib.abc, importlib.util, os, sys

class _CapWorkers(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "sweeps.runtime.worker":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            init = module.Worker.__init__

            def capped(self, *args, **kwargs):
                init(self, *args, **kwargs)
                import torch
                total = torch.cuda.get_device_properties(0).total_memory
                torch.cuda.set_per_process_memory_fraction(float(os.environ["GPU_TEST_CAP_MB"]) * 2**20 / total, 0)

            module.Worker.__init__ = capped

        spec.loader.exec_module = exec_module
        return spec

if os.environ.get("GPU_TEST_CAP_MB"):
    sys.meta_path.insert(0, _CapWorkers())
'''


def overrides(*groups: list[str] | tuple[str, ...]) -> list[str]:
    """Override lists joined, a later value of a key replacing an earlier one (Hydra refuses duplicates)."""
    out: dict[str, str] = {}
    for group in groups:
        out.update((item.partition("=")[0], item) for item in group)
    return list(out.values())


def cfg(model_dir: Path, *extra: str):
    return compose_cfg(overrides([f"model.name_or_path={model_dir}"], SFT, extra))


def finite_losses(result) -> list[float]:
    losses = [row["train_loss"] for row in result.history if "train_loss" in row]
    assert losses and all(math.isfinite(x) for x in losses), losses
    return losses


@pytest.fixture(scope="module")
def big_vocab_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny chat Llama whose 32k-entry vocabulary makes the logits most of a step's memory, so
    halving the batch halves the memory (the chat tokenizer uses the first 400 ids)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("big_vocab_llama")
    chat_tokenizer(path)
    tok = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32768, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory, tiny_chat_llama_dir: Path) -> tuple[Path, str]:
    """A sweep of 4 trials with hydra.sweeper.workers_per_device=2 on GPU 0 (fp32 compute)."""
    cwd = tmp_path_factory.mktemp("two_workers")
    proc = run_sweep(cwd, f"model.name_or_path={tiny_chat_llama_dir}", *SWEEP_SFT, "hydra.sweeper.workers_per_device=2",
                     "hydra.sweeper.n_trials=4")
    return cwd, proc.stdout


def test_bf16_compute_and_autocast_on_cuda(tiny_chat_llama_dir: Path, tmp_path: Path) -> None:
    """quant.compute_dtype=bfloat16 + train.precision=bf16: the 4-bit layers compute in bf16 and
    every other linear layer (LoRA, lm_head) runs under bf16 autocast."""
    import bitsandbytes as bnb

    from trainer import run_trial

    compute, outputs = set(), set()

    def tap(module, args, output):
        if isinstance(module, bnb.nn.Linear4bit):
            compute.add(module.compute_dtype)
        elif isinstance(module, torch.nn.Linear) and isinstance(output, torch.Tensor) and output.is_cuda:
            outputs.add(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(tap)
    try:
        result = run_trial(cfg(tiny_chat_llama_dir, "quant.compute_dtype=bfloat16", "train.precision=bf16"),
                           output_dir=tmp_path)
    finally:
        handle.remove()
    assert compute == {torch.bfloat16} and outputs == {torch.bfloat16}
    assert result.resolved["device"].startswith("cuda") and result.resolved["compute_dtype"] == "bfloat16"
    assert result.resolved["precision"] == "bf16"
    finite_losses(result)
    assert math.isfinite(result.metrics["eval_loss"]) and result.peak_memory_mb > 0


def test_paged_adamw_8bit_trains_and_pages_its_8bit_state(tiny_chat_llama_dir: Path, tmp_path: Path) -> None:
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from trainer import run_trial
    from trainer.training.loop import make_optimizer

    seen: list[tuple[str, set[str]]] = []
    handle = register_optimizer_step_post_hook(lambda opt, args, kwargs: seen.append(
        (type(opt).__name__, {str(v.dtype) for s in opt.state.values() for v in s.values()
                              if isinstance(v, torch.Tensor) and v.dim() > 0})))
    try:  # r=128 on hidden 32: LoRA A has 4096 elements, the size from which bitsandbytes keeps 8-bit state
        result = run_trial(cfg(tiny_chat_llama_dir, "train.optim=paged_adamw_8bit", "lora.r=128", "lora.lora_alpha=128"),
                           output_dir=tmp_path)
    finally:
        handle.remove()
    assert {name for name, _ in seen} == {"PagedAdamW8bit"} and "torch.uint8" in seen[-1][1]
    assert result.resolved["optim"] == "paged_adamw_8bit"
    finite_losses(result)

    # bitsandbytes pages the state of tensors from 1e5 elements on: the trainer's optimizer does
    param = torch.nn.Parameter(torch.randn(512, 256, device="cuda"))
    optimizer = make_optimizer({"optim": "paged_adamw_8bit", "learning_rate": 1e-3, "weight_decay": 0.0}, [param])
    param.grad = torch.randn_like(param)
    optimizer.step()
    state = optimizer.state[param]
    assert state["state1"].dtype == torch.uint8 and getattr(state["state1"], "is_paged", False)


def _trial_peak_mb(model_dir: Path, tmp_path: Path, *extra: str) -> float:
    """Peak CUDA memory of one trial in this process, above what was allocated before it."""
    import gc

    from trainer import run_trial

    gc.collect()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated() / 2**20
    return run_trial(cfg(model_dir, *extra), output_dir=tmp_path).peak_memory_mb - before


def test_oom_retry_halves_the_batch_under_a_memory_cap(big_vocab_llama_dir: Path, tmp_path: Path) -> None:
    """A worker capped (torch.cuda.set_per_process_memory_fraction) between the peak of batch 64
    and that of 32 x 2 accumulation steps runs out of memory at 64 and completes the trial at 32."""
    batch = ["data.demo_train_size=128", "train.max_steps=2", "train.eval_every_steps=0"]
    full = _trial_peak_mb(big_vocab_llama_dir, tmp_path / "full", *batch, "train.batch_size=64")
    half = _trial_peak_mb(big_vocab_llama_dir, tmp_path / "half", *batch, "train.batch_size=32",
                          "train.gradient_accumulation_steps=2")
    assert full > 1.3 * half, (full, half)  # the logits dominate: halving the batch must show
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(CAP_HOOK)
    cwd = tmp_path / "sweep"
    cwd.mkdir()
    cmd = [sys.executable, str(SWEEP), "-m", *overrides(
        [f"model.name_or_path={big_vocab_llama_dir}"], SFT, batch,
        ["train.batch_size=64", "search_space=none", "seed=range(0, 2)", "hydra.sweeper.n_trials=1",
         "hydra.sweeper.pruner=none", "hydra.sweeper.include_base=false", "hydra.sweeper.devices=[0]"])]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, check=False,
                          env={**env(), "PYTHONPATH": os.pathsep.join([str(hook), str(REPO)]),
                               "GPU_TEST_CAP_MB": f"{(full + half) / 2:.0f}"})
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
    (trial,) = only_study(cwd).get_trials()
    assert trial.state == TrialState.COMPLETE, trial.user_attrs.get("fail_reason")
    assert trial.user_attrs["oom_retry"] == {"batch_size": 32, "gradient_accumulation_steps": 2}
    _, _, (child,) = runs(cwd)
    assert child.data.tags.get("oom_retry") == "true" and child.data.metrics["peak_memory_mb"] < (full + half) / 2


def test_two_workers_share_one_gpu(two_workers: tuple[Path, str]) -> None:
    cwd, stdout = two_workers
    assert "2 worker(s) on GPUs" in stdout, stdout[-2000:]
    trials = only_study(cwd).get_trials()
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    _, (parent,), children = runs(cwd)
    assert "2 worker(s)" in parent.data.tags["sweep.worker_plan"]
    assert {c.data.tags["sweep.worker_id"] for c in children} == {"0", "1"}  # both workers trained
    assert all(c.data.tags["env.cuda"] != "none" and c.data.metrics["peak_memory_mb"] > 0 for c in children)


def test_warm_base_after_other_target_modules_equals_cold(tiny_chat_llama_dir: Path, tmp_path: Path) -> None:
    """A base that served an all_linear trial, its LoRA taken off, trains a qv trial bit for bit as a
    fresh load does (attention on the math kernel: the fused ones have nondeterministic backwards)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from sweeps.runtime.trial import adapter_sha256
    from trainer import WarmCache, run_trial

    cache = WarmCache()
    target = cfg(tiny_chat_llama_dir, "lora.target_modules=qv", "seed=1", "lora.lora_dropout=0.1")
    with sdpa_kernel(SDPBackend.MATH):
        other = run_trial(cfg(tiny_chat_llama_dir, "lora.target_modules=all_linear", "seed=5", "lora.r=16"),
                          cache=cache, output_dir=tmp_path / "other")
        warm = run_trial(target, cache=cache, output_dir=tmp_path / "warm")
        cold = run_trial(target, cache=WarmCache(), output_dir=tmp_path / "cold")
    assert warm.resolved["warm_model"] and not cold.resolved["warm_model"]
    assert warm.resolved["target_modules"] == cold.resolved["target_modules"]
    assert set(warm.resolved["target_modules"]) < set(other.resolved["target_modules"])
    assert adapter_sha256(warm.adapter_dir) == adapter_sha256(cold.adapter_dir)
    assert warm.metrics == cold.metrics and warm.history == cold.history


def test_export_and_merge_on_cuda(two_workers: tuple[Path, str], tmp_path: Path) -> None:
    """The best trial merged into the dequantized base on the GPU reproduces the trained model."""
    cwd, _ = two_workers
    out = tmp_path / "merged"
    proc = subprocess.run([sys.executable, "-m", "sweeps.export", "--out", str(out), "--merge"], cwd=cwd,
                          capture_output=True, text=True, timeout=600, check=False,
                          env={**env(), "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
    diff, tol = (float(x) for x in DIFF.search(proc.stdout).groups())
    assert diff <= tol
    best = only_study(cwd).best_trial
    from sweeps.runtime.trial import adapter_sha256

    assert adapter_sha256(out / "adapter") == best.user_attrs["adapter_sha256"]
    assert list(out.glob("*.safetensors")) and "quantization_config" not in (out / "config.json").read_text()
    assert "dequantized" in (out / "README.md").read_text()
