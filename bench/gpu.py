"""GPU benchmark: `python bench/gpu.py --out DIR [--cpu-dry]` (also `python bench/run.py --gpu --out DIR`).

What one CUDA GPU gets out of our sweep on decoder LLM shapes, with nothing from the network:

- Models with random weights but real shapes: a Llama-3.2-1B shape (hidden 2048, 16 layers, 32
  heads, 8 kv heads, intermediate 8192, vocab 128256, tied embeddings) and a Llama-3-8B shape
  (hidden 4096, 32 layers, intermediate 14336, untied). Each is built on the GPU in bf16 (init on
  the device: seconds, where 8B on CPU takes minutes), saved once with `save_pretrained` (bf16
  safetensors in 5 GB shards: 2.5 + 16 GB of the machine's 64 GiB) beside a word-level tokenizer
  carrying the chatml template, and loaded by the sweep as users load a checkpoint
  (`model=custom model.name_or_path=<folder>`): 4-bit nf4 + double quant, bf16 compute and autocast.
- SFT data (`data=jsonl data.format=messages`) whose every conversation renders to exactly
  `seq_len` tokens, so every trial does the same work.
- Trials of fixed work through the real CLI (`python sweep.py -m`, a subprocess timed from outside):
  LoRA r=16 on all linear layers, the search over learning rate and seed only (neither changes the
  cost), no pruning, at `hydra.sweeper.workers_per_device` 1, 2, 4 and auto (1B) and 1 and auto
  (8B); then the first trials' params again through Hugging Face `Trainer.hyperparameter_search`
  with `model_init` (a fresh load and quantisation per trial, as bench/hf_search.py does for the
  classifier) and through a fresh `python sweep.py` process per trial.
- `pytest -m gpu` (tests/test_gpu_subset.py), run while the models are built and saved, so the
  measured sweeps have the GPU to themselves.

Budget (one H200, under 8 minutes; estimated, as no GPU was at hand when this was written): build
+ save and the GPU tests side by side (1-2 minutes), four 1B sweeps of 6 trials of 20 steps x
batch 8 x 512 tokens (30-50 s each, 10-20 s of it start-up; 6 trials so that auto's packing, about
6 workers by the pre-flight's 19 GB estimate, fills one round), 2 HF and 2 cold 1B trials, and the
8B arms kept to 2 trials of 10 steps each at workers_per_device 1 and auto (2 workers by its 55 GB
estimate; the 16 GB load dominates them). A wall-clock budget (`--budget-s`, 450 s) guards the
total: an arm that no longer fits is skipped and says so in the table, and a sweep gets
`hydra.sweeper.timeout` so no trial starts past the budget. Every sweep is pinned to the first
visible GPU (`hydra.sweeper.devices=[0]`).

`--cpu-dry` runs the same code on CPU with tiny shapes (hidden 64 and 128, 2 layers, the vocab the
tokenizer's size rounded up), 4 steps of batch 4 x 64 tokens, n_jobs 1 and 2 and the auto plan (the
8B stand-in at n_jobs 1 only; workers_per_device is a GPU setting: on CPU the sweeper plans workers
per core, so the worker count is set with n_jobs there), fp32 and the 4-bit quantisation the CPU
tests use. What needs a GPU (busy fraction, bf16) is written "n/a (CPU dry run)", never made up.

Every figure names its source in the output (SOURCES below).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    REPO,
    SWEEP,
    BenchError,
    Workspace,
    bench_env,
    fmt,
    log,
    machine,
    md_table,
    median,
    mlflow_runs,
    override_line,
    run,
    study_rows,
    versions,
)
from trace_phases import TRACE_ENV, sweep_records  # noqa: E402

NA_CPU = "n/a (CPU dry run)"
LOAD_PHASE = "model load + 4-bit quantisation (cached after the first trial)"  # bench/trace_phases's label of trainer.model_load
SPECIALS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
LR_SPACE = (1e-4, 5e-4)  # the searched learning rates (log scale); seeds 0..3
SOURCES = {
    "trials/hour (end to end)": "finished trials (COMPLETE + PRUNED in the sweep's Optuna journal) / wall seconds of "
                                "the `python sweep.py -m` process, timed from outside (start-up included)",
    "trials/hour (steady)": "Optuna trial datetime_start / datetime_complete from the study journal: finished trials / "
                            "(last completion - first start)",
    "workers": "the sweep's own line `search: N trials, W worker(s) ...` and its per-GPU plan lines",
    "GPU busy": "NVML nvmlDeviceGetUtilizationRates (pynvml / nvidia-ml-py; else `nvidia-smi --query-gpu=utilization.gpu`) "
                "polled every 0.25 s while the arm's processes ran: mean % of time a kernel was running, over the "
                "whole run and over the samples between the first trial's start and the last one's end (Optuna datetimes)",
    "GPU memory used (peak)": "NVML memory used on the device (all processes, CUDA contexts included), polled with "
                              "the busy fraction",
    "peak memory per worker": "MLflow child runs' `peak_memory_mb` metric (torch.cuda.max_memory_allocated on a GPU, "
                              "ru_maxrss on CPU), max per `sweep.worker_id` tag",
    "pre-flight estimate": "the sweep's MLflow parent run tag `sweep.largest_trial_estimate_mb`, the value "
                           "sweeps.preflight.preflight_sweep returned (largest trial; no CUDA context or runtime)",
    "model load cold / warm": "the runtime's trace (LORA_SWEEP_TRACE, phase trainer.model_load: trainer.models.loading.load_base_model) in "
                              "each worker: a trial that ran it loaded cold, one that did not got the worker's warm base "
                              "(the worker does not log TrialResult.resolved['model_load_s'] / ['warm_model'])",
    "rows truncated": "MLflow child runs' `train_rows_truncated` metric (0: every conversation fit seq_len)",
    "HF trials/hour": "trials COMPLETE in the in-memory Optuna study of `Trainer.hyperparameter_search` / wall seconds "
                      "of that process, timed from outside; per-trial seconds from its trials' datetimes, model_init "
                      "seconds from a timer in model_init",
    "cold trials/hour": "trials / summed wall seconds of one `python sweep.py` process per trial, timed from outside",
    "GPU tests": "JUnit XML of `python -m pytest -m gpu tests` (passed, skipped, failed, errors)",
    "model build": "timers in the build subprocess around construction (init on the device) and save_pretrained",
}


# -- sizes ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shape:
    """A decoder's shape (Llama architecture); vocab None: the tokenizer's size rounded up to 64."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int | None
    tie_embeddings: bool


@dataclass(frozen=True)
class Family:
    """One model and the arms run on it: our sweep at each worker setting, HF and cold trials."""

    key: str
    shape: Shape
    steps: int
    n_trials: int
    arms: tuple[Any, ...]       # workers_per_device values (1, 2, 4, "auto")
    n_hf: int
    n_cold: int
    min_arm_s: float            # below this much budget left, an arm is skipped


@dataclass(frozen=True)
class Plan:
    mode: str                   # gpu | cpu-dry
    families: tuple[Family, ...]
    seq_len: int
    batch: int
    answer_words: int           # assistant turn length (words = tokens)
    n_eval: int
    n_words: int                # word tokens in the tokenizer
    budget_s: float | None      # wall clock for everything; None: no guard

    @property
    def gpu(self) -> bool:
        return self.mode == "gpu"


LLAMA_1B = Shape("Llama-3.2-1B shape", 2048, 16, 32, 8, 8192, 128256, True)
LLAMA_8B = Shape("Llama-3-8B shape", 4096, 32, 32, 8, 14336, 128256, False)
TINY_A = Shape("tiny (1B stand-in)", 64, 2, 4, 2, 128, None, True)
TINY_B = Shape("tiny (8B stand-in)", 128, 2, 4, 2, 256, None, False)

PLANS = {
    "gpu": Plan("gpu", (Family("1b", LLAMA_1B, steps=20, n_trials=6, arms=(1, 2, 4, "auto"), n_hf=2, n_cold=2,
                               min_arm_s=40),
                        Family("8b", LLAMA_8B, steps=10, n_trials=2, arms=(1, "auto"), n_hf=0, n_cold=0, min_arm_s=75)),
                seq_len=512, batch=8, answer_words=32, n_eval=8, n_words=1000, budget_s=450),
    "cpu-dry": Plan("cpu-dry", (Family("a", TINY_A, steps=4, n_trials=4, arms=(1, 2, "auto"), n_hf=2, n_cold=2,
                                       min_arm_s=0),
                                Family("b", TINY_B, steps=4, n_trials=2, arms=(1,), n_hf=0, n_cold=0, min_arm_s=0)),
                    seq_len=64, batch=4, answer_words=8, n_eval=4, n_words=200, budget_s=None),
}


class Clock:
    """The run's wall-clock budget."""

    def __init__(self, budget_s: float | None):
        self.t0, self.budget_s = time.perf_counter(), budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return math.inf if self.budget_s is None else self.budget_s - self.elapsed()


# -- tokenizer, data, models ------------------------------------------------------------------------------
def build_tokenizer(folder: Path, n_words: int) -> None:
    """A word-level tokenizer (one token per word `w<i>`, the role names and the chatml markers)
    with the chatml template: lengths are exact, and it needs no download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from trainer.data.chat_templates import NAMED_TEMPLATES

    words = SPECIALS + ["system", "user", "assistant"] + [f"w{i}" for i in range(n_words)]
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   additional_special_tokens=SPECIALS[3:])
    fast.chat_template = NAMED_TEMPLATES["chatml"]
    fast.save_pretrained(folder)


def rendered_length(tok: Any, messages: list[dict[str, str]]) -> int:
    return len(tok(tok.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"])


def write_sft_data(folder: Path, tok_dir: Path, plan: Plan, n_train: int) -> dict[str, int]:
    """train/validation.jsonl in messages format: one user and one assistant turn per row, every
    row `plan.seq_len` tokens once rendered with the chat template (checked, not assumed)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    rng = random.Random(0)

    def words(n: int) -> str:
        return " ".join(f"w{rng.randrange(plan.n_words)}" for _ in range(n))

    def row(user_words: int) -> list[dict[str, str]]:
        return [{"role": "user", "content": words(user_words)}, {"role": "assistant", "content": words(plan.answer_words)}]

    frame = rendered_length(tok, row(1)) - 1 - plan.answer_words  # markers and role names
    user_words = plan.seq_len - frame - plan.answer_words
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("validation", plan.n_eval)):
        rows = [row(user_words) for _ in range(n)]
        lengths = {rendered_length(tok, r) for r in rows}
        if lengths != {plan.seq_len}:
            raise BenchError(f"generated conversations render to {sorted(lengths)} tokens, not {plan.seq_len}")
        (folder / f"{split}.jsonl").write_text("".join(json.dumps({"messages": r}) + "\n" for r in rows))
    return {"train_rows": n_train, "eval_rows": plan.n_eval, "tokens_per_row": plan.seq_len, "tokenizer_size": len(tok)}


def build_model(folder: Path, shape: Shape, tok_dir: Path, device: str) -> dict[str, Any]:
    """Random bf16 weights of `shape` initialised on `device`, saved as sharded safetensors with the tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    tok = AutoTokenizer.from_pretrained(tok_dir)
    vocab = shape.vocab or -(-len(tok) // 64) * 64
    config = LlamaConfig(vocab_size=vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                         num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                         num_key_value_heads=shape.kv_heads, max_position_embeddings=8192,
                         tie_word_embeddings=shape.tie_embeddings, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    built = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.save_pretrained(folder, max_shard_size="5GB")
    tok.save_pretrained(folder)
    saved = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    return {"shape": asdict(shape), "vocab": vocab, "params": sum(p.numel() for p in model.parameters()),
            "build_s": built, "save_s": saved, "bytes": size, "device": device}


def build_models_main(argv: list[str]) -> None:
    """`python bench/gpu.py build-models --spec FILE`: every model of a plan, in one process that exits
    afterwards (its CUDA memory goes back before any sweep plans its workers)."""
    p = argparse.ArgumentParser(prog="bench/gpu.py build-models")
    p.add_argument("--spec", type=Path, required=True)
    args = p.parse_args(argv)
    spec = json.loads(args.spec.read_text())
    out = {}
    for key, item in spec["models"].items():
        out[key] = build_model(Path(item["folder"]), Shape(**item["shape"]), Path(spec["tokenizer"]), spec["device"])
        print(f"built {key}: {out[key]['params'] / 1e9:.2f}B params in {out[key]['build_s']:.1f}s, saved "
              f"{out[key]['bytes'] / 2**30:.2f} GiB in {out[key]['save_s']:.1f}s", flush=True)
    print("BUILD_RESULT " + json.dumps(out), flush=True)


# -- GPU sampling ---------------------------------------------------------------------------------------
def nvml_index() -> Any:
    """The GPU the sweeps use, as NVML names it: CUDA_VISIBLE_DEVICES' first entry (index or UUID), else 0."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return visible if visible else 0


class GpuSampler:
    """Busy fraction and memory in use of the sweeps' GPU, polled in a thread while an arm runs:
    NVML through pynvml (nvidia-ml-py) when importable, else nvidia-smi; off on a CPU run."""

    def __init__(self, enabled: bool, interval: float = 0.25):
        self.enabled, self.interval = enabled, interval
        self.samples: list[tuple[float, float, float]] = []  # (epoch seconds, busy %, MiB used)
        self.source = gpu_source() if enabled else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def start(self) -> None:
        if self.enabled:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _poll(self) -> None:
        read = nvml_reader() if self.source == "nvml" else smi_reader() if self.source == "nvidia-smi" else None
        while read is not None and not self._stop.is_set():
            with contextlib.suppress(Exception):  # a missed sample is only a missed sample
                self.samples.append((time.time(), *read()))
            self._stop.wait(self.interval)

    def figures(self, window: tuple[float, float] | None = None) -> dict[str, Any]:
        """Mean busy % over the arm (and over `window`, the trials' span), peak MiB in use."""
        if not self.enabled:
            return {}
        inside = [b for t, b, _ in self.samples if window and window[0] <= t <= window[1]]
        return {"gpu_source": self.source, "gpu_samples": len(self.samples),
                "gpu_busy_pct": sum(b for _, b, _ in self.samples) / len(self.samples) if self.samples else None,
                "gpu_busy_trials_pct": sum(inside) / len(inside) if inside else None,
                "gpu_mem_peak_mb": max((m for _, _, m in self.samples), default=None)}


@contextlib.contextmanager
def gpu_sampling(enabled: bool) -> Iterator[GpuSampler]:
    """A GpuSampler polling for the duration of the block."""
    sampler = GpuSampler(enabled)
    sampler.start()
    try:
        yield sampler
    finally:
        sampler.stop()


def gpu_source() -> str | None:
    with contextlib.suppress(Exception):  # not installed, or no driver
        import pynvml

        pynvml.nvmlInit()
        return "nvml"
    return "nvidia-smi" if shutil.which("nvidia-smi") else None


def nvml_reader():
    import pynvml

    pynvml.nvmlInit()
    index = nvml_index()
    handle = (pynvml.nvmlDeviceGetHandleByUUID(index) if isinstance(index, str) and not index.isdigit()
              else pynvml.nvmlDeviceGetHandleByIndex(int(index)))

    def read() -> tuple[float, float]:
        return (float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu),
                pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20)

    return read


def smi_reader():
    def read() -> tuple[float, float]:
        out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                              "-i", str(nvml_index())], capture_output=True, text=True, timeout=10, check=True).stdout
        busy, used = (float(x) for x in out.strip().splitlines()[0].split(","))
        return busy, used

    return read


def gpu_description() -> str:
    """Name and memory of the sweeps' GPU as the driver reports it (no CUDA context here)."""
    source = gpu_source()
    try:
        if source == "nvml":
            import pynvml

            index = nvml_index()
            handle = (pynvml.nvmlDeviceGetHandleByUUID(index) if isinstance(index, str) and not index.isdigit()
                      else pynvml.nvmlDeviceGetHandleByIndex(int(index)))
            name = pynvml.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else name
            return f"{name}, {pynvml.nvmlDeviceGetMemoryInfo(handle).total / 2**30:.0f} GiB"
        if source == "nvidia-smi":
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader",
                                  "-i", str(nvml_index())], capture_output=True, text=True, timeout=10, check=True).stdout
            return out.strip().splitlines()[0]
    except Exception as exc:  # noqa: BLE001
        return f"unknown ({type(exc).__name__})"
    return "none visible to NVML / nvidia-smi"


# -- the arms -----------------------------------------------------------------------------------------------
@dataclass
class Bench:
    """Everything the arms share: the plan, the scratch space, the models and data, the budget."""

    plan: Plan
    ws: Workspace
    clock: Clock
    models: dict[str, Path] = field(default_factory=dict)
    data_dir: Path | None = None

    def base_overrides(self, family: Family) -> list[str]:
        """The job config of every trial of `family` (sweeps, HF and cold runs alike)."""
        gpu = self.plan.gpu
        return ["model=custom", f"model.name_or_path={self.models[family.key]}", "task=sft",
                "data=jsonl", f"data.path={self.data_dir}", "data.format=messages",
                "quant=4bit", "quant.quant_type=nf4", "quant.double_quant=true",
                f"quant.compute_dtype={'bfloat16' if gpu else 'float32'}",
                f"train.precision={'bf16' if gpu else 'fp32'}", f"train.device={'cuda' if gpu else 'cpu'}",
                "lora.r=16", "lora.lora_alpha=32", "lora.lora_dropout=0.05", "lora.target_modules=all_linear",
                f"train.batch_size={self.plan.batch}",
                f"train.max_seq_length={self.plan.seq_len}", f"train.max_steps={family.steps}",
                "train.eval_every_steps=0", "train.log_every_steps=5", "task.max_new_tokens=4",
                "task.num_logged_samples=4"]

    def sweep_overrides(self, family: Family, workers: Any, study: str, timeout: float | None) -> list[str]:
        out = self.base_overrides(family) + [
            "search_space=none", f"train.learning_rate=tag(log, interval({LR_SPACE[0]}, {LR_SPACE[1]}))",
            "seed=range(0, 4)", f"hydra.sweeper.n_trials={family.n_trials}", "hydra.sweeper.sampler=random",
            "hydra.sweeper.sampler_seed=0", "hydra.sweeper.pruner=none", "hydra.sweeper.include_base=false",
            f"hydra.sweeper.study_name={study}"]
        if self.plan.gpu:  # one GPU: the first this process sees
            out += [f"hydra.sweeper.workers_per_device={workers}", "hydra.sweeper.devices=[0]"]
        elif workers == "auto":  # CPU workers even where a GPU is visible
            out += [f"hydra.sweeper.workers_per_device={workers}", "hydra.sweeper.devices=[]"]
        else:  # on CPU the arm's worker count is n_jobs (workers_per_device applies to GPUs)
            out += [f"hydra.sweeper.n_jobs={workers}", "hydra.sweeper.devices=[]"]
        if timeout is not None:
            out.append(f"hydra.sweeper.timeout={timeout:.0f}")
        return out

    def budget_for(self, family: Family, what: str) -> tuple[float | None, str | None]:
        """(subprocess timeout, skip reason): None/None without a budget."""
        left = self.clock.left()
        if math.isinf(left):
            return None, None
        if left < family.min_arm_s:
            return None, (f"skipped: {left:.0f}s of the {self.plan.budget_s:.0f}s budget left, {what} needs about "
                          f"{family.min_arm_s:.0f}s")
        return left, None


def probe_env(workdir: Path) -> dict[str, str]:
    """The runtime's per-phase trace (trainer/trace.py) in the sweep and its workers."""
    env = bench_env()
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env[TRACE_ENV] = str(workdir / "trace.jsonl")
    return env


def ours(bench: Bench, family: Family, workers: Any) -> dict[str, Any]:
    name = f"{family.key}-wpd-{workers}"
    timeout, skip = bench.budget_for(family, f"a {family.shape.name} sweep")
    if skip:
        return {"skipped": skip}
    workdir = bench.ws.new(name)
    sweep_timeout = None if timeout is None else max(10.0, timeout - 60)
    log(f"{name}: python sweep.py -m ... workers {workers}")
    with gpu_sampling(bench.plan.gpu) as gpu:
        proc = run([sys.executable, str(SWEEP), "-m", *bench.sweep_overrides(family, workers, name, sweep_timeout)],
                   workdir, "sweep", timeout=timeout or 3600, env=probe_env(workdir), sample_rss=False)
    rows = study_rows(workdir, name)
    finished = [r for r in rows if r.state in ("COMPLETE", "PRUNED")]
    timed = [r for r in finished if r.start and r.complete]
    window = (min(r.start for r in timed), max(r.complete for r in timed)) if timed else None
    span = window[1] - window[0] if window else 0.0
    out = {"wall_s": proc.wall_s, "trials_finished": len(finished), "trials_failed": sum(r.state == "FAIL" for r in rows),
           "trials_per_hour": len(finished) / proc.wall_s * 3600,
           "steady_trials_per_hour": len(timed) / span * 3600 if span > 0 else None,
           "params": [r.params for r in finished], **worker_plan(proc.out), **mlflow_figures(workdir),
           **load_figures(workdir / "trace.jsonl"), **gpu.figures(window)}
    log(f"{name}: {len(finished)} trials in {proc.wall_s:.0f}s, {out['workers']} worker(s)")
    return out


def worker_plan(out: str) -> dict[str, Any]:
    """Worker count and per-GPU plan lines, as the sweep printed them."""
    found = re.search(r"search: \d+ trials.*?(\d+) worker\(s\)", out)
    lines = [line.strip() for line in out.splitlines() if re.match(r"\s+GPU \d+ = ", line)]
    return {"workers": int(found.group(1)) if found else None, "plan_lines": lines}


def mlflow_figures(workdir: Path) -> dict[str, Any]:
    """Peak memory per worker, the pre-flight estimate and truncated rows, read back from MLflow."""
    runs = mlflow_runs(workdir)
    parent = next((r for r in runs if r.data.tags.get("sweep.role") == "parent"), None)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    peaks: dict[str, float] = {}
    for child in children:
        worker, peak = child.data.tags.get("sweep.worker_id", "?"), child.data.metrics.get("peak_memory_mb")
        if peak is not None:
            peaks[worker] = max(peaks.get(worker, 0.0), peak)
    estimate = parent.data.tags.get("sweep.largest_trial_estimate_mb") if parent else None
    truncated = [c.data.metrics["train_rows_truncated"] for c in children if "train_rows_truncated" in c.data.metrics]
    return {"peak_memory_mb_per_worker": dict(sorted(peaks.items())),
            "estimate_mb": float(estimate) if estimate not in (None, "-") else None,
            "rows_truncated": max(truncated) if truncated else None}


def load_figures(trace: Path) -> dict[str, Any]:
    """Cold loads (seconds each) and warm trials, from the trace's per-trial records."""
    records = sweep_records(trace)
    trials = [r for r in records if r.get("kind") == "trial"]
    cold = [r for r in trials if LOAD_PHASE in r["phases"]]
    return {"cold_loads_s": [r["phases"][LOAD_PHASE] for r in cold], "warm_trials": len(trials) - len(cold),
            "cold_trial_s": [r["seconds"] for r in cold],
            "warm_trial_s": [r["seconds"] for r in trials if LOAD_PHASE not in r["phases"]]}


def hf(bench: Bench, family: Family, params: list[dict[str, Any]]) -> dict[str, Any]:
    timeout, skip = bench.budget_for(family, "the HF arm")
    if skip:
        return {"skipped": skip}
    workdir = bench.ws.new(f"{family.key}-hf")
    (workdir / "params.json").write_text(json.dumps(params))
    (workdir / "overrides.json").write_text(json.dumps(bench.base_overrides(family)))
    log(f"{family.key}-hf: Trainer.hyperparameter_search, {len(params)} trials")
    env = {**bench_env(), "PYTHONPATH": str(REPO)}
    if bench.plan.gpu:  # one GPU, as our arms (the Trainer would wrap the model in DataParallel over several)
        env["CUDA_VISIBLE_DEVICES"] = str(nvml_index())
    with gpu_sampling(bench.plan.gpu) as gpu:
        proc = run([sys.executable, str(Path(__file__).resolve()), "hf-search", "--params-json",
                    str(workdir / "params.json"), "--overrides-json", str(workdir / "overrides.json")], workdir, "hf",
                   timeout=timeout or 3600, env=env, sample_rss=False)
    res = proc.json_line("HF_RESULT ")
    done = [t for t in res["trials"] if t["state"] == "COMPLETE"]
    return {"wall_s": proc.wall_s, "trials_finished": len(done), "trials_per_hour": len(done) / proc.wall_s * 3600,
            "trial_s": [t["seconds"] for t in res["trials"]], "model_init_s": res["model_init_s"],
            "in_process_s": res["in_process_s"], **gpu.figures()}


def cold(bench: Bench, family: Family, params: list[dict[str, Any]]) -> dict[str, Any]:
    timeout, skip = bench.budget_for(family, "the cold arm")
    if skip:
        return {"skipped": skip}
    workdir = bench.ws.new(f"{family.key}-cold")
    walls: list[float] = []
    with gpu_sampling(bench.plan.gpu) as gpu:
        for i, p in enumerate(params):
            left = None if timeout is None else timeout - sum(walls)
            if left is not None and left < family.min_arm_s / 2:
                break
            log(f"{family.key}-cold: python sweep.py (trial {i})")
            proc = run([sys.executable, str(SWEEP), *bench.base_overrides(family),
                        *(override_line(k, v) for k, v in p.items())], workdir, f"cold_{i}", timeout=left or 3600,
                       sample_rss=False)
            walls.append(proc.wall_s)
    return {"wall_s": sum(walls), "trials_finished": len(walls), "trial_s": walls,
            "trials_per_hour": len(walls) / sum(walls) * 3600 if walls else None, **gpu.figures()}


def attempt(label: str, fn, *args: Any) -> dict[str, Any]:
    """One arm; a failure is recorded with its reason instead of hiding the other arms."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001
        log(f"{label} failed: {type(exc).__name__}: {str(exc)[:2000]}")
        return {"error": f"{type(exc).__name__}: {str(exc)[-1500:]}"}


def run_family(bench: Bench, family: Family) -> list[dict[str, Any]]:
    arms = []
    for workers in family.arms:
        arm = attempt(f"{family.key} workers {workers}", ours, bench, family, workers)
        arms.append({"family": family.key, "model": family.shape.name, "arm": "ours", "workers_per_device": workers, **arm})
    done = next((a for a in arms if a.get("params")), None)
    params = done["params"] if done else [{"train.learning_rate": 2e-4, "seed": 0}]
    params = [{k: p[k] for k in ("train.learning_rate", "seed") if k in p} for p in params]
    if family.n_hf:
        arm = attempt(f"{family.key} HF", hf, bench, family, params[:family.n_hf])
        arms.append({"family": family.key, "model": family.shape.name, "arm": "hf", **arm})
    if family.n_cold:
        arm = attempt(f"{family.key} cold", cold, bench, family, params[:family.n_cold])
        arms.append({"family": family.key, "model": family.shape.name, "arm": "cold", **arm})
    return arms


# -- the HF baseline (a subprocess) ---------------------------------------------------------------------------
def hf_search_main(argv: list[str]) -> None:
    """`python bench/gpu.py hf-search`: the same trials through `Trainer.hyperparameter_search`
    (backend optuna) with `model_init` building a fresh 4-bit model + LoRA per trial, as the
    transformers docs tune a model (bench/hf_search.py does the same for the classifier). Data is
    our tokenisation of the same files (trainer.data.encoding), so both see identical tokens."""
    t_start = time.perf_counter()
    p = argparse.ArgumentParser(prog="bench/gpu.py hf-search")
    p.add_argument("--params-json", type=Path, required=True, help="our trials' params, enqueued in order")
    p.add_argument("--overrides-json", type=Path, required=True, help="the trials' job overrides")
    args = p.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import optuna
    import torch
    from peft import (
        LoraConfig,
        TaskType,
        get_peft_model,
        prepare_model_for_kbit_training,
    )
    from transformers import (
        AutoModelForCausalLM,
        BitsAndBytesConfig,
        Trainer,
        TrainingArguments,
    )
    from transformers.utils import logging as hf_logging

    from sweeps.runtime.compose import ComposeSpec, compose_job
    from trainer.config import get
    from trainer.data.splits import load_raw
    from trainer.data.encoding import encode, make_collator
    from trainer.models.loading import keep_4bit_layout_on_cpu, load_tokenizer
    from trainer.models.targets import resolve_target_modules

    hf_logging.set_verbosity_error()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = compose_job(ComposeSpec(str(REPO / "conf"), "sweep", tuple(json.loads(args.overrides_json.read_text()))), {})
    model_cfg, task, train, lora, quant = (get(cfg, k) for k in ("model", "task", "train", "lora", "quant"))
    tok = load_tokenizer(model_cfg, task)
    data = encode(load_raw(get(cfg, "data"), "sft"), tok, get(cfg, "data"), task, train["max_seq_length"])
    device = torch.device(train["device"])
    compute = getattr(torch, quant["compute_dtype"])
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant["quant_type"],
                             bnb_4bit_use_double_quant=bool(quant["double_quant"]), bnb_4bit_compute_dtype=compute,
                             llm_int8_skip_modules=["lm_head"])
    loads: list[float] = []

    def space(trial: Any) -> dict[str, Any]:
        """Our sweep's space, as Optuna suggest calls (same names, same distributions)."""
        return {"train.learning_rate": trial.suggest_float("train.learning_rate", *LR_SPACE, log=True),
                "seed": trial.suggest_int("seed", 0, 3)}

    def model_init(trial: Any = None) -> Any:
        t0 = time.perf_counter()
        seed = space(trial)["seed"] if trial is not None else 0
        model = AutoModelForCausalLM.from_pretrained(model_cfg["name_or_path"], quantization_config=bnb,
                                                     device_map={"": str(device)}, dtype=compute)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        if device.type == "cpu":
            keep_4bit_layout_on_cpu(model)
        model.config.use_cache = False
        torch.manual_seed(seed)
        config = LoraConfig(r=lora["r"], lora_alpha=lora["lora_alpha"], lora_dropout=lora["lora_dropout"],
                            target_modules=resolve_target_modules(model, lora["target_modules"]),
                            task_type=TaskType.CAUSAL_LM)
        model = get_peft_model(model, config)
        if device.type == "cuda":
            torch.cuda.synchronize()
        loads.append(time.perf_counter() - t0)
        return model

    def hp_space(trial: Any) -> dict[str, Any]:
        p = space(trial)
        return {"learning_rate": p["train.learning_rate"], "seed": p["seed"]}

    targs = TrainingArguments(
        output_dir="hf_out", per_device_train_batch_size=train["batch_size"],
        per_device_eval_batch_size=train["batch_size"], max_steps=train["max_steps"],
        warmup_steps=math.ceil(train["warmup_ratio"] * train["max_steps"]), lr_scheduler_type=train["lr_scheduler_type"],
        weight_decay=train["weight_decay"], max_grad_norm=train["max_grad_norm"], eval_strategy="no", logging_steps=5,
        save_strategy="no", report_to="none", use_cpu=device.type == "cpu", bf16=train["precision"] == "bf16",
        disable_tqdm=True, dataloader_num_workers=0, data_seed=0, remove_unused_columns=False,
        prediction_loss_only=True)
    trainer = Trainer(model_init=model_init, args=targs, train_dataset=data.train.features,
                      eval_dataset=data.eval.features, data_collator=make_collator(tok, "sft"))
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="hf", direction="minimize")
    params = json.loads(args.params_json.read_text())
    for params_i in params:
        study.enqueue_trial(params_i)
    t_search = time.perf_counter()
    trainer.hyperparameter_search(hp_space=hp_space, compute_objective=lambda m: m["eval_loss"], n_trials=len(params),
                                  direction="minimize", backend="optuna", storage=storage, study_name="hf",
                                  load_if_exists=True, sampler=optuna.samplers.TPESampler(seed=0),
                                  pruner=optuna.pruners.NopPruner())
    search_s = time.perf_counter() - t_search
    trials = [{"number": t.number, "value": t.value, "state": t.state.name, "params": t.params,
               "seconds": (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None}
              for t in optuna.load_study(study_name="hf", storage=storage).trials]
    print("HF_RESULT " + json.dumps({"trials": trials, "search_s": search_s, "model_init_s": loads,
                                     "in_process_s": time.perf_counter() - t_start}), flush=True)


# -- the GPU tests ---------------------------------------------------------------------------------------------------
def start_gpu_tests(workdir: Path) -> tuple[subprocess.Popen, Path, float]:
    """`pytest -m gpu` in the background (it runs while the models are built and saved)."""
    xml = workdir / "pytest-gpu.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}"]
    with open(workdir / "pytest-gpu.log", "w") as log_file:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, cwd=REPO, env={**bench_env(), "PYTHONPATH": str(REPO)}, stdout=log_file,
                                stderr=subprocess.STDOUT, text=True)
    return proc, xml, time.perf_counter()


def finish_gpu_tests(proc: subprocess.Popen, xml: Path, started: float, timeout: float) -> dict[str, Any]:
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return {"rc": None, "seconds": time.perf_counter() - started, "error": f"timed out after {timeout:.0f}s"}
    counts = junit_counts(xml) if xml.is_file() else {}
    return {"rc": rc, "seconds": time.perf_counter() - started, **counts}


def junit_counts(xml: Path) -> dict[str, int]:
    """passed / skipped / failed / errors of a pytest JUnit XML report."""
    counts = {"passed": 0, "skipped": 0, "failed": 0, "errors": 0}
    for case in ET.parse(xml).getroot().iter("testcase"):
        kinds = {child.tag for child in case}
        key = ("failed" if "failure" in kinds else "errors" if "error" in kinds else
               "skipped" if "skipped" in kinds else "passed")
        counts[key] += 1
    return counts


# -- main ---------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python bench/gpu.py", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for BENCHMARKS.md and results.json")
    p.add_argument("--cpu-dry", action="store_true", help="the same code path on CPU with tiny shapes (2-4 minutes)")
    p.add_argument("--budget-s", type=float, default=None, help="wall-clock budget (default: 450 on a GPU, none dry)")
    p.add_argument("--keep-work", action="store_true", help="keep OUT/work (models, stores, logs)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    sys.path.insert(0, str(REPO))
    if argv[:1] == ["build-models"]:
        build_models_main(argv[1:])
        return 0
    if argv[:1] == ["hf-search"]:
        hf_search_main(argv[1:])
        return 0
    args = parse_args(argv)
    plan = PLANS["cpu-dry" if args.cpu_dry else "gpu"]
    if args.budget_s is not None:
        plan = replace(plan, budget_s=args.budget_s)
    from sweeps.runtime.worker_plan import cuda_device_count

    if plan.gpu and not cuda_device_count():
        print("error: no CUDA GPU is visible; run `python bench/gpu.py --out DIR --cpu-dry` on CPU", file=sys.stderr)
        return 2
    out_dir = args.out.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc)
    bench = Bench(plan, Workspace(out_dir / "work"), Clock(plan.budget_s))
    log(f"mode {plan.mode}, work dir {bench.ws.root}")
    results: dict[str, Any] = {"mode": plan.mode, "date": started.isoformat(timespec="seconds"),
                               "plan": asdict(plan), "machine": machine(), "versions": versions(),
                               "gpu": gpu_description() if plan.gpu else NA_CPU, "sources": SOURCES}
    tests = start_gpu_tests(bench.ws.root)
    try:
        results["setup"] = prepare(bench)
    finally:
        results["gpu_tests"] = finish_gpu_tests(*tests, timeout=max(60.0, min(600.0, bench.clock.left())))
    log(f"GPU tests: {results['gpu_tests']}")
    results["arms"] = [arm for family in plan.families for arm in run_family(bench, family)]
    results["total_seconds"] = bench.clock.elapsed()
    results["summary"] = summary(results["arms"])
    table = render(results, " ".join(["python bench/gpu.py", *argv]))
    (out_dir / "BENCHMARKS.md").write_text(table)
    (out_dir / "results.json").write_text(json.dumps(clean(results), indent=2, sort_keys=True, default=str) + "\n")
    print(table, flush=True)  # it ends with where each figure comes from
    log(f"wrote {out_dir / 'BENCHMARKS.md'} and {out_dir / 'results.json'} ({results['total_seconds'] / 60:.1f} min)")
    if not args.keep_work:
        shutil.rmtree(bench.ws.root, ignore_errors=True)
    tests = results["gpu_tests"]
    failed = any(a.get("error") for a in results["arms"]) or tests.get("failed") or tests.get("errors") or "error" in tests
    return 1 if failed else 0


def prepare(bench: Bench) -> dict[str, Any]:
    """Tokenizer, data and models (built in a subprocess, on the GPU when there is one)."""
    root, plan = bench.ws.root, bench.plan
    tok_dir = root / "tokenizer"
    build_tokenizer(tok_dir, plan.n_words)
    n_train = max(f.steps for f in plan.families) * plan.batch
    bench.data_dir = root / "data"
    data = write_sft_data(bench.data_dir, tok_dir, plan, n_train)
    spec = {"tokenizer": str(tok_dir), "device": "cuda" if plan.gpu else "cpu",
            "models": {f.key: {"folder": str(root / "models" / f.key), "shape": asdict(f.shape)} for f in plan.families}}
    (root / "models.json").write_text(json.dumps(spec))
    log("building the models")
    proc = run([sys.executable, str(Path(__file__).resolve()), "build-models", "--spec", str(root / "models.json")],
               root, "build-models", timeout=1200, env={**bench_env(), "PYTHONPATH": str(REPO)}, sample_rss=False)
    bench.models = {k: Path(v["folder"]) for k, v in spec["models"].items()}
    return {"data": data, "models": proc.json_line("BUILD_RESULT "), "build_wall_s": proc.wall_s}


# -- results -----------------------------------------------------------------------------------------------------
def summary(arms: list[dict[str, Any]]) -> dict[str, Any]:
    """Per model: our one-worker rate against HF and cold, and the best worker setting against one worker."""
    out: dict[str, Any] = {}
    for key in dict.fromkeys(a["family"] for a in arms):
        mine = [a for a in arms if a["family"] == key and a["arm"] == "ours" and a.get("trials_per_hour")]
        one = next((a for a in mine if a["workers_per_device"] == 1), None)
        best = max(mine, key=lambda a: a["trials_per_hour"], default=None)
        rate = {a["arm"]: a.get("trials_per_hour") for a in arms if a["family"] == key and a["arm"] != "ours"}
        out[key] = {
            "best_workers_per_device": best["workers_per_device"] if best else None,
            "best_trials_per_hour": best["trials_per_hour"] if best else None,
            "best_vs_one_worker": best["trials_per_hour"] / one["trials_per_hour"] if best and one else None,
            **{f"one_worker_vs_{arm}": one["trials_per_hour"] / r if one and r else None for arm, r in rate.items()},
            **{f"best_vs_{arm}": best["trials_per_hour"] / r if best and r else None for arm, r in rate.items()}}
    return out


def clean(value: Any) -> Any:
    """JSON-safe numbers (no NaN/inf)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def gpu_cell(arm: dict[str, Any], key: str, gpu: bool, nd: int = 0) -> str:
    if not gpu:
        return NA_CPU
    if arm.get(key) is None:
        return f"n/a (no samples: {arm.get('gpu_source') or 'no NVML / nvidia-smi'})"
    return f"{arm[key]:.{nd}f}"


def status(arm: dict[str, Any]) -> str | None:
    if arm.get("skipped"):
        return arm["skipped"]
    if arm.get("error"):
        return f"failed: `{arm['error'][:300]}`"
    return None


def ours_rows(results: dict[str, Any], gpu: bool) -> list[list[Any]]:
    rows = []
    for a in (a for a in results["arms"] if a["arm"] == "ours"):
        head = [a["model"], a["workers_per_device"]]
        if status(a):
            rows.append(head + [status(a)] + [""] * 14)
            continue
        peaks = a["peak_memory_mb_per_worker"]
        top = max(peaks.values(), default=None)
        ratio = fmt(top / a["estimate_mb"], 2) if top and a.get("estimate_mb") else "-"
        loads = a["cold_loads_s"]
        rows.append(head + [
            a["workers"], a["trials_finished"], fmt(a["wall_s"], 1), fmt(a["trials_per_hour"], 0),
            fmt(a.get("steady_trials_per_hour"), 0), gpu_cell(a, "gpu_busy_pct", gpu),
            gpu_cell(a, "gpu_busy_trials_pct", gpu), gpu_cell(a, "gpu_mem_peak_mb", gpu),
            " / ".join(f"{w}: {v:.0f}" for w, v in peaks.items()) or "-", fmt(a.get("estimate_mb"), 0),
            ratio if gpu else NA_CPU, f"{len(loads)} x {fmt(median(loads), 2)}" if loads else "-", a["warm_trials"],
            f"{fmt(median(a['cold_trial_s']), 1)} / {fmt(median(a['warm_trial_s']), 1)}", fmt(a.get("rows_truncated"), 0)])
    return rows


def baseline_rows(results: dict[str, Any], gpu: bool) -> list[list[Any]]:
    rows = []
    names = {"ours": "ours, `sweep.py -m`, workers_per_device=1", "hf": "HF `Trainer.hyperparameter_search` + `model_init`",
             "cold": "a fresh `python sweep.py` per trial"}
    one = {a["family"]: a for a in results["arms"] if a["arm"] == "ours" and a["workers_per_device"] == 1}
    for a in results["arms"]:
        if a["arm"] == "ours" and a["workers_per_device"] != 1:
            continue
        if a["family"] not in {b["family"] for b in results["arms"] if b["arm"] != "ours"}:
            continue
        head = [a["model"], names[a["arm"]]]
        if status(a):
            rows.append(head + [status(a)] + [""] * 6)
            continue
        base = one.get(a["family"], {}).get("trials_per_hour")
        n = a["trials_finished"]
        per = a["wall_s"] / n if n else None
        inits = a.get("model_init_s")
        rows.append(head + [n, fmt(a["wall_s"], 1), fmt(per, 1), fmt(a["trials_per_hour"], 0),
                            fmt(base / a["trials_per_hour"], 2) + "x" if base and a.get("trials_per_hour") else "-",
                            gpu_cell(a, "gpu_busy_pct", gpu)]
                    + [" / ".join(fmt(x, 1) for x in inits) if inits else "-"])
    return rows


def render(results: dict[str, Any], command: str) -> str:
    gpu, plan, m = results["mode"] == "gpu", results["plan"], results["machine"]
    setup, tests = results.get("setup", {}), results["gpu_tests"]
    models = setup.get("models", {})
    model_rows = [[v["shape"]["name"], f"{v['params']:,}", v["vocab"], fmt(v["build_s"], 1), fmt(v["save_s"], 1),
                   f"{v['bytes'] / 2**30:.2f}", v["device"]] for v in models.values()]
    steps = ", ".join(f"{f['shape']['name']}: {f['steps']} steps, {f['n_trials']} trials per sweep" for f in plan["families"])
    lines = [
        "# GPU benchmark", "",
        f"Generated by `{command}` on {results['date']} ({results['total_seconds'] / 60:.1f} min). Mode **{results['mode']}**"
        + (" (tiny shapes on CPU: the machinery, not GPU numbers)" if not gpu else "") + ".", "",
        md_table(["machine", ""], [["GPU", results["gpu"]], ["CPU", m["cpu"]], ["cores", m["cores"]],
                                   ["RAM", f"{m['ram_gib']} GiB"], ["OS / Python", f"{m['platform']} / {m['python']}"]]),
        "", md_table(["versions", ""], [[k, v] for k, v in results["versions"].items()]), "",
        (f"Trials: QLoRA SFT (4-bit nf4 + double quant, {'bf16 compute + autocast' if gpu else 'fp32 compute'}), "
         f"LoRA r=16 on all linear layers, batch {plan['batch']} x {plan['seq_len']} tokens (every conversation renders "
         f"to exactly {plan['seq_len']}), {steps}; the search varies learning rate and seed only, so every trial does "
         f"the same work. Models have random weights ({'real shapes' if gpu else 'tiny shapes'}), saved once as bf16 "
         "safetensors and loaded by the sweep from that folder."), "",
        md_table(["model", "params", "vocab", "build s", "save s", "GiB on disk", "built on"], model_rows), "",
        "## 1. Our sweep by worker setting", "",
        md_table(["model", "workers_per_device" if gpu else "workers (n_jobs; auto = default plan)", "workers",
                  "trials", "wall s", "trials/h (end to end)", "trials/h (steady)", "GPU busy % (whole run)",
                  "GPU busy % (first trial start to last end)", "GPU mem peak MiB",
                  "peak MiB per worker", "pre-flight estimate MiB", "peak / estimate", "cold loads (n x median s)",
                  "warm trials", "trial s, cold load / warm (median)", "rows truncated"], ours_rows(results, gpu)), "",
        "## 2. Against Hugging Face and a fresh process per trial (the same params)", "",
        md_table(["model", "arm", "trials", "wall s", "s / trial", "trials/h", "ours (1 worker) / arm", "GPU busy %",
                  "HF model_init s (each call; the first is Trainer's own)"], baseline_rows(results, gpu)), "",
        "## 3. GPU tests (`pytest -m gpu`)", "",
        md_table(["passed", "skipped", "failed", "errors", "seconds", "exit"],
                 [[tests.get("passed", "-"), tests.get("skipped", "-"), tests.get("failed", "-"), tests.get("errors", "-"),
                   fmt(tests.get("seconds"), 0), tests.get("rc", tests.get("error"))]]), "",
        "## Where each figure comes from", "", *[f"- **{k}**: {v}" for k, v in results["sources"].items()], ""]
    if not gpu:
        lines += [("On CPU the peak memory is the worker's resident set (Python, torch and the libraries included), "
                   "the estimate counts the trial's tensors only."), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
