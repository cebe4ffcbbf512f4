"""The encode cache (trainer/data/encode_cache.py): encode seconds per 10,000 conversations, and the data
start-up of a sweep's workers with 1 and 4 workers, with the cache off, cold and warm.

    python bench/encode_cache.py [--quick] [--conversations N]

Data: the multi-turn chat set with a realistic length spread of bench/sft_padding.py (1-4
exchanges, median about 250 tokens), MiniLM WordPiece + chatml template, max_seq_length 1024.

Encoding: one process times `trainer.data.encoding.encode` on N conversations (the Jinja render per
turn and tokenization), the cache key (hashing the rows, the tokenizer's files and the source),
and reading the stored entry back; all per 10,000 conversations.

Start-up: K worker processes start at once and each does what a sweep worker does before its
first trial can train: load the tokenizer, read and check the rows (load_raw), encode through
`cached_encode`. Timed from the launch to the last worker holding its data (the model load, the
same in every arm, is left out). Arms: cache off (every worker encodes; today's behaviour),
cold (the workers find no entry: one encodes, the others wait on its lock and read), warm
(the sweep's pre-flight already wrote the entry: everyone reads).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

MAX_LEN = 1024
WORKER = """
import sys
sys.path.insert(0, {repo!r})
from bench.encode_cache import worker_data
worker_data({model!r}, {data!r}, {folder!r})
"""


def overrides(model: Path, data: Path) -> list[str]:
    return ["model=custom", f"model.name_or_path={model}", "task=sft", "data=jsonl", f"data.path={data}",
            "data.format=messages", f"train.max_seq_length={MAX_LEN}"]


def inputs(model: Path, data: Path):
    """(raw, tokenizer, data config, task config) as a trial builds them."""
    from hydra import compose, initialize_config_dir

    from trainer.config import get
    from trainer.data.splits import load_raw
    from trainer.models.loading import load_tokenizer

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose(config_name="sweep", overrides=overrides(model, data))
    task, data_cfg = get(cfg, "task"), get(cfg, "data")
    return load_raw(data_cfg, "sft"), load_tokenizer(get(cfg, "model"), task), data_cfg, task


def worker_data(model: str, data: str, folder: str) -> None:
    """A sweep worker's data start-up (runs in a child process; folder "off": no cache); prints
    the process CPU seconds of the whole start-up and of the encode step alone, as JSON."""
    from trainer.data.encode_cache import cached_encode
    from trainer.data.encoding import encode

    raw, tok, data_cfg, task = inputs(Path(model), Path(data))
    cpu0 = time.process_time()
    if folder == "off":
        encode(raw, tok, data_cfg, task, MAX_LEN)
    else:
        cached_encode(raw, tok, data_cfg, task, MAX_LEN, Path(folder))
    print(json.dumps({"cpu_s": time.process_time(), "encode_cpu_s": time.process_time() - cpu0}))


def start_up(model: Path, data: Path, workers: int, folder: str) -> dict[str, float]:
    """Seconds from launching `workers` processes at once to the last one holding its data, and
    the CPU seconds all of them spent (in all, and in the encode step)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    script = WORKER.format(repo=str(REPO), model=str(model), data=str(data), folder=folder)
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(workers)]
    cpu = {"cpu_s": 0.0, "encode_cpu_s": 0.0}
    for p in procs:
        out, err = p.communicate()
        if p.returncode:
            raise RuntimeError(err[-3000:])
        for key, value in json.loads(out.strip().splitlines()[-1]).items():
            cpu[key] += value
    return {"wall_s": time.perf_counter() - t0, **cpu}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="10,000 conversations, one run per start-up cell")
    p.add_argument("--conversations", type=int, default=None, help="training conversations (quick 10000, else 50000)")
    p.add_argument("--repeats", type=int, default=None, help="runs per start-up cell (quick 1, else 2)")
    args = p.parse_args(argv)
    n = args.conversations or (10000 if args.quick else 50000)
    repeats = args.repeats or (1 if args.quick else 2)

    import torch

    from sft_padding import build_model, write_spread_data
    from trainer.data.encode_cache import cached_encode, encode_key
    from trainer.data.encoding import encode

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="encode-cache-") as scratch:
        model, data, cache = Path(scratch) / "model", Path(scratch) / "data", Path(scratch) / "cache"
        build_model(model, 64, 1)
        write_spread_data(data, n, 64)
        raw, tok, data_cfg, task = inputs(model, data)
        per_10k = 10000 / (len(raw.train) + len(raw.eval))
        t0 = time.perf_counter()
        encoded = encode(raw, tok, data_cfg, task, MAX_LEN)
        encode_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        encode_key(raw, tok, data_cfg, task, MAX_LEN)
        key_s = time.perf_counter() - t0
        cached_encode(raw, tok, data_cfg, task, MAX_LEN, cache)  # writes the entry
        t0 = time.perf_counter()
        cached_encode(raw, tok, data_cfg, task, MAX_LEN, cache)
        read_s = time.perf_counter() - t0
        entry_mb = sum(f.stat().st_size for f in cache.glob("*.pkl")) / 2**20
        tokens = [len(f["input_ids"]) for f in encoded.train.features]

        cells: dict[tuple[str, int], list[dict[str, float]]] = {}
        for _ in range(repeats):
            for workers in (1, 4):
                for arm in ("off", "cold", "warm"):
                    folder = "off" if arm == "off" else str(Path(scratch) / f"cache-{arm}-{workers}-{time.time_ns()}")
                    if arm == "warm":
                        cached_encode(raw, tok, data_cfg, task, MAX_LEN, Path(folder))  # the pre-flight's write
                    cells.setdefault((arm, workers), []).append(start_up(model, data, workers, folder))

    print(f"Encode cache, {len(raw.train)} + {len(raw.eval)} conversations (train tokens median "
          f"{statistics.median(tokens):.0f}, max {max(tokens)}; max_seq_length {MAX_LEN}), {os.cpu_count()} CPU cores, "
          f"load average {os.getloadavg()[0]:.1f} at the end\n")
    print("| step | seconds per 10,000 conversations |")
    print("|---|---|")
    print(f"| encode (render + tokenize) | {encode_s * per_10k:.1f} |")
    print(f"| cache key (hash rows, tokenizer files, source) | {key_s * per_10k:.2f} |")
    print(f"| read the stored entry (key included) | {read_s * per_10k:.2f} |")
    print(f"\nentry size {entry_mb * per_10k:.0f} MB per 10,000 conversations\n")
    print(f"| data start-up ({repeats} run(s), mean) | 1 worker: wall s | CPU s (encode step) | 4 workers: wall s "
          "| CPU s, all workers (encode step) |")
    print("|---|---|---|---|---|")
    names = {"off": "cache off (each worker encodes)", "cold": "cache cold (one encodes, the rest read)",
             "warm": "cache warm (pre-flight wrote it)"}

    def cell(arm: str, workers: int) -> str:
        runs = cells[(arm, workers)]
        mean = {k: statistics.mean(r[k] for r in runs) for k in runs[0]}
        return f"{mean['wall_s']:.1f} | {mean['cpu_s']:.1f} ({mean['encode_cpu_s']:.1f})"

    for arm in ("off", "cold", "warm"):
        print(f"| {names[arm]} | {cell(arm, 1)} | {cell(arm, 4)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
