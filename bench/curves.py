"""Learning-curve tables: configs of a wide LoRA space, each trained once to its end with every eval recorded.

    python bench/curves.py record --table sst2|demo|chat --configs 300 [--shard 0/2] [--smoke]
    python bench/curves.py merge --table sst2            # bench/tables/<table>.shard*.jsonl -> <table>.jsonl.gz

Each row of a table is one real fine-tune through the product's own trainer (`trainer.run_trial`,
the code a sweep trial runs, with a warm cache as a sweep worker has): its config and seeds, its
eval accuracy and loss at every checkpoint, cumulative wall and CPU seconds at each checkpoint,
the test split's score of the kept model, and what the trial cost beside its steps (tokenize,
model load). `bench/replay.py` replays the product's samplers and pruners against these tables.

The configs are drawn at random (seeded) from a *table space* wider than any space the replay
compares, so that each arm's suggestions have tabulated neighbours: the union of the old and new
default spaces (rank 4-32, alpha 4-64 free, dropout 0-0.2, four target presets, learning rate
log-uniform over two and a half decades, three schedulers, seeds 0-3). The protocols:

- `sst2`: MiniLM (4-bit, the default model), 2,000 SST-2 train rows, 300 validation rows scored
  at every 6 of 30 steps (the benchmark's standard trial, bench/common.py `full`), 600 test rows
  at the end (sentences the benchmark never selects on);
- `demo`: the default sweep's trial as it ships (demo data, 600 train rows, 76 steps, evals at 19);
- `chat`: `task=sft search_space=llm`'s trial on the tiny chat model (demo_chat), eval loss.

Shards (`--shard i/n`) let several processes fill one table; each process is single-threaded
(OMP_NUM_THREADS=1) and appends one JSON line per finished config, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
TABLES = BENCH / "tables"
SST2_DIR = (REPO.parent / "shared" / "data" / "sst2").resolve()

# the table space: every dimension a compared space searches, wider than each of them
RANKS = (4, 8, 16, 32)
ALPHAS = (4, 8, 16, 32, 64)
TARGETS_CLS = ("qv", "attn", "attn_mlp", "all_linear")
TARGETS_LLM = ("qv", "attn", "all_linear")
SCHEDULERS = ("linear", "cosine", "constant_with_warmup")
SEEDS = (0, 1, 2, 3)


PROTOCOLS: dict[str, dict[str, Any]] = {
    "sst2": {"overrides": ["data=sst2", f"data.path={SST2_DIR}", "data.max_train_samples=2000",
                           "data.max_eval_samples=300", "data.max_test_samples=600", "train.max_steps=30",
                           "train.eval_every_steps=6", "train.batch_size=16", "train.max_seq_length=64"],
             "lr": (3e-4, 1e-1 / 3), "dropout": 0.2, "targets": TARGETS_CLS, "metric": "eval_accuracy"},
    "demo": {"overrides": ["data=demo"], "lr": (3e-4, 1e-1 / 3), "dropout": 0.2, "targets": TARGETS_CLS,
             "metric": "eval_accuracy"},
    "chat": {"overrides": ["task=sft", "data=demo_chat", "quant=none", "model=tiny_chat"],
             "lr": (3e-5, 1e-2), "dropout": 0.1, "targets": TARGETS_LLM, "metric": "eval_loss"},
}


def draw_configs(table: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` configs of the table space, the same list for every shard (seeded by the table's name)."""
    proto = PROTOCOLS[table]
    rng = random.Random(f"{table}:{seed}")
    lo, hi = proto["lr"]
    out = []
    for i in range(n):
        out.append({"lora.r": rng.choice(RANKS), "lora.lora_alpha": rng.choice(ALPHAS),
                    "lora.lora_dropout": round(rng.uniform(0.0, proto["dropout"]), 4),
                    "lora.target_modules": rng.choice(proto["targets"]),
                    "train.learning_rate": float(f"{math.exp(rng.uniform(math.log(lo), math.log(hi))):.4g}"),
                    "train.lr_scheduler_type": rng.choice(SCHEDULERS), "seed": rng.choice(SEEDS)})
    return out


class CurveRecorder:
    """The trainer's reporter: every eval with the wall and CPU seconds spent so far in the trial."""

    def __init__(self) -> None:
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        self.evals: list[dict[str, float]] = []
        self.total_steps: int | None = None

    def planned(self, total_steps: int) -> None:
        self.total_steps = total_steps

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def report(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, "wall_s": round(time.perf_counter() - self.t0, 3),
               "cpu_s": round(time.process_time() - self.c0, 3)}
        row.update({k: round(float(v), 5) for k, v in metrics.items() if k in ("eval_accuracy", "eval_loss", "eval_f1")})
        if not self.evals or self.evals[-1]["step"] != step:
            self.evals.append(row)


def base_params(cfg: Any) -> dict[str, Any]:
    """The table-space keys of a composed job config, `auto` values resolved as a trial resolves them."""
    from omegaconf import OmegaConf

    from trainer.llm_defaults import with_llm_defaults

    cfg = with_llm_defaults(cfg)
    keys = ("lora.r", "lora.lora_alpha", "lora.lora_dropout", "lora.target_modules", "train.learning_rate",
            "train.lr_scheduler_type", "seed")
    out = {k: OmegaConf.select(cfg, k) for k in keys}
    if OmegaConf.select(cfg, "lora.alpha_ratio") is not None:
        out["lora.lora_alpha"] = float(OmegaConf.select(cfg, "lora.alpha_ratio")) * out["lora.r"]
    return {k: (OmegaConf.to_container(v) if OmegaConf.is_config(v) else v) for k, v in out.items()}


def record(table: str, n_configs: int, shard: tuple[int, int], out: Path, smoke: bool, base_only: bool = False) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    sys.path.insert(0, str(REPO))
    import torch

    torch.set_num_threads(1)
    from sweeps.runtime.compose import ComposeSpec, compose_job
    from trainer import run_trial
    from trainer.cache import WarmCache

    proto = PROTOCOLS[table]
    overrides = list(proto["overrides"])
    if smoke:
        overrides += ["data.max_train_samples=32", "data.max_eval_samples=16", "data.max_test_samples=16",
                      "train.max_steps=4", "train.eval_every_steps=2"]
    done = {json.loads(line)["index"] for line in out.read_text().splitlines()} if out.exists() else set()
    cache = WarmCache()
    todo = [(i, p) for i, p in enumerate(draw_configs(table, n_configs)) if i % shard[1] == shard[0]]
    if shard[0] == 0:  # the base config (what a sweep enqueues as trial #0) is row -1, recorded first
        todo.insert(0, (-1, base_params(compose_job(ComposeSpec(str(REPO / "conf"), "sweep", tuple(overrides)), {}))))
    if base_only and shard[0] != 0:
        raise SystemExit("bench/curves.py record --base-only: the base config is shard 0's row (--shard 0/N)")
    for index, params in todo[:1] if base_only else todo:
        if index in done:
            continue
        job = overrides + [f"{k}={v}" for k, v in params.items()] + ["train.save_adapter=false"]
        cfg = compose_job(ComposeSpec(str(REPO / "conf"), "sweep", tuple(job)), {})
        recorder = CurveRecorder()
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            result = run_trial(cfg, recorder, cache, evaluate_test=True)
            error = None
        except Exception as exc:  # noqa: BLE001 - a config that fails is a row too (diverged / non-finite)
            result, error = None, f"{type(exc).__name__}: {exc}"[:300]
        row = {"index": index, "params": params, "evals": recorder.evals, "total_steps": recorder.total_steps,
               "wall_s": round(time.perf_counter() - t0, 3), "cpu_s": round(time.process_time() - c0, 3),
               "error": error}
        if result is not None:
            r = result.resolved
            row.update(test={k: round(float(v), 5) for k, v in result.metrics.items() if k.startswith("test_")},
                       final={k: round(float(v), 5) for k, v in result.metrics.items() if k.startswith("eval_")},
                       overhead_s={k: round(float(r.get(k) or 0.0), 3) for k in ("tokenize_s", "model_load_s")},
                       train_s=round(float(r["train_s"]), 3), eval_s=round(float(r["eval_s"]), 3),
                       warm_model=bool(r.get("warm_model")), trainable_params=result.trainable_params)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"[{table} {shard[0]}/{shard[1]}] #{index} {row.get('final', {}).get(proto['metric'])} "
              f"{row['wall_s']:.1f}s {error or ''}", flush=True)


def merge(table: str) -> Path:
    """The shards of a table, one gzipped JSON-lines file ordered by config index, plus its protocol."""
    rows = []
    for shard in sorted(TABLES.glob(f"{table}.shard*.jsonl")):
        rows += [json.loads(line) for line in shard.read_text().splitlines() if line.strip()]
    rows.sort(key=lambda r: r["index"])
    out = TABLES / f"{table}.jsonl.gz"
    header = {"table": table, "protocol": PROTOCOLS[table]["overrides"], "metric": PROTOCOLS[table]["metric"],
              "space": {"r": RANKS, "lora_alpha": ALPHAS, "dropout": [0, PROTOCOLS[table]["dropout"]],
                        "target_modules": PROTOCOLS[table]["targets"], "learning_rate": PROTOCOLS[table]["lr"],
                        "lr_scheduler_type": SCHEDULERS, "seed": SEEDS},
              "rows": len(rows)}
    with gzip.open(out, "wt") as f:
        f.write(json.dumps({"header": header}) + "\n")
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("--table", choices=sorted(PROTOCOLS), required=True)
    rec.add_argument("--configs", type=int, default=300)
    rec.add_argument("--shard", default="0/1")
    rec.add_argument("--out", type=Path, default=None)
    rec.add_argument("--smoke", action="store_true")
    rec.add_argument("--base-only", action="store_true", help="record only the base config (row -1; shard 0)")
    mer = sub.add_parser("merge")
    mer.add_argument("--table", choices=sorted(PROTOCOLS), required=True)
    args = parser.parse_args(argv)
    if args.cmd == "merge":
        print(merge(args.table))
        return 0
    i, n = (int(x) for x in args.shard.split("/"))
    TABLES.mkdir(exist_ok=True)
    out = args.out or TABLES / f"{args.table}.shard{i}of{n}.jsonl"
    record(args.table, args.configs, (i, n), out, args.smoke, args.base_only)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
