"""Learning-curve tables: configs of a wide LoRA space, each trained once to its end with every eval recorded.

    python bench/curves.py record --table sst2|demo|chat --configs 300 [--shard 0/2] [--smoke]
    python bench/curves.py record --table demo --informed --out bench/tables/demo.shard-informed.jsonl
    python bench/curves.py merge --table sst2            # <table>.jsonl.gz + <table>.shard*.jsonl -> <table>.jsonl.gz

A table is extended, never re-run: `record --configs N` skips the rows the merged table beside its
shard file holds (configs are drawn in a fixed order, so the first N are the same for any N), and
`merge` adds the new shards' rows to it.

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

Besides the drawn configs a table holds the configs a sweep asks for by construction, so a replay
answers them exactly rather than with a neighbour: the base config (row -1, `--base-only`) and the
configs informed start-up enqueues on the old and the new space (rows -2, -3, ..., `--informed`;
the real sweeps of that arm landed two points above the replay when a neighbour answered them).

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


TABLE_KEYS = ("lora.r", "lora.lora_alpha", "lora.lora_dropout", "lora.target_modules", "train.learning_rate",
              "train.lr_scheduler_type", "seed")


def protocol_job(table: str, extra: tuple[str, ...] = ()) -> Any:
    """The job config a trial of the table's protocol composes (plus `extra` overrides)."""
    sys.path.insert(0, str(REPO))
    from sweeps.runtime.compose import ComposeSpec, compose_job

    return compose_job(ComposeSpec(str(REPO / "conf"), "sweep", (*PROTOCOLS[table]["overrides"], *extra)), {})


def spaces_of(table: str) -> tuple[str, str]:
    """(old, new) default spaces for the table's task: classification's default_v1 / default, the
    LLM's llm_v1 / llm (the old ones kept verbatim beside the prior-centred ones)."""
    return ("llm_v1", "llm") if table == "chat" else ("default_v1", "default")


def space_setup(space_name: str, table: str) -> tuple[Any, dict[str, Any] | None, dict[str, Any]]:
    """What a sweep of conf/search_space/<space_name>.yaml on the table's protocol starts from, as the
    sweeper's pre-flight builds it: the space (lr_prior resolved for the protocol's model), the base
    trial's params (None when the base lies outside the space: the sweeper skips it then), and the
    job's values of the table's keys (what a trial that does not search a key trains with)."""
    import yaml
    from omegaconf import OmegaConf

    from sweeps.search.priors import resolve_lr_prior
    from sweeps.search.space import base_params as space_base_params
    from sweeps.search.space import parse_search_space
    from trainer.llm_defaults import with_llm_defaults

    job = with_llm_defaults(protocol_job(table))
    params = yaml.safe_load((REPO / "conf" / "search_space" / f"{space_name}.yaml").read_text()) or {}
    space, _ = resolve_lr_prior(parse_search_space(params), job)
    base, outside = space_base_params(job, space)
    defaults = {k: OmegaConf.select(job, k) for k in TABLE_KEYS}
    defaults = {k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for k, v in defaults.items()}
    if OmegaConf.select(job, "lora.alpha_ratio") is not None:
        defaults["lora.lora_alpha"] = float(OmegaConf.select(job, "lora.alpha_ratio")) * defaults["lora.r"]
    return space, None if outside else base, defaults


def lookup_params(params: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """A trial's config in the table's keys: the job's values, overlaid with what the trial searched
    (an alpha ratio becomes alpha = ratio x r)."""
    out = {**defaults, **{k: v for k, v in params.items() if k in TABLE_KEYS}}
    if "lora.alpha_ratio" in params:
        out["lora.lora_alpha"] = float(params["lora.alpha_ratio"]) * float(out["lora.r"])
    return out


def informed_configs(table: str, n: int | None = None) -> list[tuple[int, dict[str, Any]]]:
    """The configs `hydra.sweeper.startup=informed` enqueues first on each compared space (old, new),
    as (index, params): rows -2, -3, ... A replayed sweep asks for these exact configs, so the table
    holds them rather than answering them with a neighbour (as the base config is row -1)."""
    from sweeps.search.startup import default_startup_trials, informed_startup_params

    n = default_startup_trials() if n is None else n  # what a sweep with the default sampler enqueues
    out: list[tuple[int, dict[str, Any]]] = []
    seen = [base_params(protocol_job(table))]
    for space_name in spaces_of(table):
        space, base, defaults = space_setup(space_name, table)
        for params in informed_startup_params(space, n, base):
            row = lookup_params(params, defaults)
            if row not in seen:
                seen.append(row)
                out.append((-2 - len(out), row))
    return out


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


def record(table: str, n_configs: int, shard: tuple[int, int], out: Path, smoke: bool, base_only: bool = False,
           informed: bool = False) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    sys.path.insert(0, str(REPO))
    import torch

    torch.set_num_threads(1)
    from trainer import run_trial
    from trainer.cache import WarmCache

    proto = PROTOCOLS[table]
    smoke_sizes = ("data.max_train_samples=32", "data.max_eval_samples=16", "data.max_test_samples=16",
                   "train.max_steps=4", "train.eval_every_steps=2") if smoke else ()
    done = {json.loads(line)["index"] for line in out.read_text().splitlines()} if out.exists() else set()
    done |= {row["index"] for row in merged_rows(table, out.parent)}  # the table beside the shard is extended, never re-run
    cache = WarmCache()
    if base_only and shard[0] != 0:
        raise SystemExit("bench/curves.py record --base-only: the base config is shard 0's row (--shard 0/N)")
    if informed:  # the informed start-up's configs (rows -2, -3, ...), split over the shards
        todo = [(i, p) for i, p in informed_configs(table) if -i % shard[1] == shard[0]]
    else:
        todo = [(i, p) for i, p in enumerate(draw_configs(table, n_configs)) if i % shard[1] == shard[0]]
        if shard[0] == 0:  # the base config (what a sweep enqueues as trial #0) is row -1, recorded first
            todo.insert(0, (-1, base_params(protocol_job(table, smoke_sizes))))
    for index, params in todo[:1] if base_only else todo:
        if index in done:
            continue
        cfg = protocol_job(table, (*smoke_sizes, *(f"{k}={v}" for k, v in params.items()), "train.save_adapter=false"))
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


def read_table(table: str, where: Path = TABLES) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The merged table (<where>/<table>.jsonl.gz): its header and its rows; ({}, []) when there is none yet."""
    path = where / f"{table}.jsonl.gz"
    if not path.exists():
        return {}, []
    with gzip.open(path, "rt") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    header = rows.pop(0)["header"] if rows and "header" in rows[0] else {}
    return header, rows


def merged_rows(table: str, where: Path = TABLES) -> list[dict[str, Any]]:
    """The rows of the merged table, none when there is none yet."""
    return read_table(table, where)[1]


def merge(table: str, where: Path = TABLES) -> Path:
    """The merged table and its new shards, one gzipped JSON-lines file ordered by config index."""
    by_index = {row["index"]: row for row in merged_rows(table, where)}
    for shard in sorted(where.glob(f"{table}.shard*.jsonl")):
        by_index.update({row["index"]: row for row in map(json.loads, shard.read_text().splitlines())})
    rows = sorted(by_index.values(), key=lambda r: r["index"])
    out = where / f"{table}.jsonl.gz"
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
    rec.add_argument("--informed", action="store_true",
                     help="record only the configs informed start-up enqueues on the old and new spaces (rows -2, -3, ...)")
    mer = sub.add_parser("merge")
    mer.add_argument("--table", choices=sorted(PROTOCOLS), required=True)
    mer.add_argument("--dir", type=Path, default=TABLES, help="where the table and its shards are")
    args = parser.parse_args(argv)
    if args.cmd == "merge":
        print(merge(args.table, args.dir))
        return 0
    i, n = (int(x) for x in args.shard.split("/"))
    TABLES.mkdir(exist_ok=True)
    out = args.out or TABLES / f"{args.table}.shard{i}of{n}.jsonl"
    record(args.table, args.configs, (i, n), out, args.smoke, args.base_only, args.informed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
