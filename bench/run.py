"""Benchmarks of lora-sweep: `python bench/run.py [--quick | --smoke] [--out DIR]`.

Writes BENCHMARKS.md (one table per benchmark, the machine, versions, date) and results.json
(`overhead_ratio`, `throughput_ratio_vs_cold`, `throughput_ratio_vs_hf`, `pruning_speedup`, ...).
Default output: BENCHMARKS.md at the repo root and bench/results.json; `--out DIR` puts both in DIR
(CI's smoke run uses it so the committed results stay untouched).

Modes: full (default; hours on 2 cores: tables 3, 4 and 7 run many sweeps each),
--quick (small sizes, the must-have numbers), --smoke
(tiniest sizes, every table, seconds per part: checks the machinery, not the numbers).
All of ours runs through the real CLI in scratch dirs under bench/work/ (gitignored).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import (MODES, REPO, Context, Section, Workspace, data_name, load, log, machine, run_sweep,  # noqa: E402
                    std_overrides, versions)

REQUIRED = ("overhead_ratio", "throughput_ratio_vs_cold", "throughput_ratio_vs_hf", "pruning_speedup")
TITLES = ["1. Per-trial overhead (ours vs a bare PEFT loop)",
          "2. Sweep throughput (warm workers vs cold processes vs HF Trainer)",
          "3. Pruning pays (Hyperband vs none)", "4. Search quality at equal budget", "5. Worker scaling on CPU",
          "6. Memory", "7. Pruning regret (every pruned trial run to its end)"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Run the lora-sweep benchmarks and write BENCHMARKS.md + results.json.")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small sizes (about 10 minutes on 2 idle cores)")
    mode.add_argument("--smoke", action="store_true", help="tiniest sizes: all seven tables, no meaningful numbers")
    mode.add_argument("--gpu", action="store_true", help="the GPU benchmark instead (bench/gpu.py; needs --out)")
    p.add_argument("--out", type=Path, default=None, help="folder for BENCHMARKS.md and results.json")
    p.add_argument("--only", default=None, help="comma list of benchmarks to run (1-7), for development")
    p.add_argument("--demo-data", action="store_true", help="the built-in demo data set instead of SST-2")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="change one size of the mode (bench/common.py Sizes), e.g. --set std_steps=90 "
                        "--set q_seeds=0; repeatable")
    p.add_argument("--omp-active", action="store_true",
                   help="keep OpenMP's default spin-waiting (default: OMP_WAIT_POLICY=PASSIVE for every arm)")
    p.add_argument("--keep-work", action="store_true", help="keep bench/work/<run>/ (scratch stores and logs)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.gpu:
        import gpu

        return gpu.main(["--out", str(args.out)] if args.out else [])
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    sizes = with_changes(MODES[mode], args.set)
    common.OMP_PASSIVE = not args.omp_active
    common.USE_DEMO_DATA = args.demo_data
    out_md = (args.out / "BENCHMARKS.md") if args.out else REPO / "BENCHMARKS.md"
    out_json = (args.out / "results.json") if args.out else REPO / "bench" / "results.json"
    only = {int(x) for x in args.only.split(",")} if args.only else set(range(1, 8))
    ws = Workspace()
    ctx = Context(sizes, ws)
    started, t0 = datetime.now(timezone.utc), time.perf_counter()
    log(f"mode {mode}, data {data_name()}, work dir {ws.root}")
    ws.template_db()

    import memory
    import overhead
    import pruning
    import quality
    import regret
    import scaling
    import throughput

    sections: dict[int, Section] = {}

    def attempt(number: int, fn: Callable[[Context], Section]) -> None:
        if number not in only:
            return
        log(f"benchmark {number} ...")
        t = time.perf_counter()
        try:
            sections[number] = fn(ctx)
        except Exception as exc:  # one failed benchmark must not hide the others' tables
            traceback.print_exc()
            sections[number] = Section(TITLES[number - 1], f"**Failed:** `{type(exc).__name__}: {str(exc)[:1500]}`",
                                       error=f"{type(exc).__name__}: {exc}")
        sections[number].results[f"bench{number}_seconds"] = time.perf_counter() - t
        log(f"benchmark {number} done in {time.perf_counter() - t:.0f}s")

    attempt(1, overhead.run_benchmark)
    # the standard sweep serves 2 and 5, 3 when it runs the standard sizes, and 6 when present
    needs_std = {2, 5} | ({3} if pruning.shares_standard_sweep(sizes) else set())
    if only & (needs_std | {6}):
        try:
            ctx.shared["std"] = run_sweep(ctx, "std", std_overrides(sizes))
        except Exception as exc:
            traceback.print_exc()
            ctx.shared["std_error"] = f"{type(exc).__name__}: {exc}"
    for number, module in ((2, throughput), (5, scaling), (3, pruning), (4, quality), (6, memory), (7, regret)):
        if number in needs_std and "std" not in ctx.shared:
            if number in only:
                sections[number] = Section(TITLES[number - 1], f"**Failed:** the standard sweep failed: "
                                           f"`{ctx.shared.get('std_error', '?')[:1500]}`", error="standard sweep failed")
            continue
        attempt(number, module.run_benchmark)

    total = time.perf_counter() - t0
    results: dict[str, Any] = {"mode": mode, "date": started.isoformat(timespec="seconds"), "total_seconds": total,
                               "machine": machine(), "versions": versions(), "data": data_name(),
                               "sizes": common.asdict_sizes(sizes), "omp_wait_policy": "PASSIVE" if common.OMP_PASSIVE else "default",
                               "load_average_end": load()}
    for number in sorted(sections):
        results.update({k: _clean(v) for k, v in sections[number].results.items()})
        if sections[number].error:
            results[f"bench{number}_error"] = sections[number].error
    for key in REQUIRED:
        results.setdefault(key, None)

    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python bench/run.py", *(argv if argv is not None else sys.argv[1:])])
    out_md.write_text(render(results, sections, mode, total, command))
    out_json.write_text(json.dumps(results, indent=2, sort_keys=True, default=str) + "\n")
    log(f"wrote {out_md} and {out_json} ({total / 60:.1f} min)")
    print(_headline(results), flush=True)
    if not args.keep_work:
        shutil.rmtree(ws.root, ignore_errors=True)
    failed = [n for n, s in sections.items() if s.error]
    return 1 if failed else 0


def with_changes(sizes: common.Sizes, changes: list[str]) -> common.Sizes:
    """`FIELD=VALUE` changes to a mode's sizes (a comma list for a tuple field)."""
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(sizes)}
    out = {}
    for change in changes:
        name, _, value = change.partition("=")
        if name not in fields:
            raise SystemExit(f"--set {change}: unknown size {name!r}; allowed: {', '.join(fields)}")
        current = getattr(sizes, name)
        if isinstance(current, tuple):
            out[name] = tuple(int(v) for v in value.split(","))
        elif current is None:  # an unset optional size is a number
            out[name] = float(value) if "." in value else int(value)
        else:
            out[name] = type(current)(value)
    return dataclasses.replace(sizes, **out)


def _clean(value: Any) -> Any:
    """JSON-safe numbers (no NaN/inf)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _headline(results: dict[str, Any]) -> str:
    def f(key: str) -> str:
        v = results.get(key)
        return "-" if v is None else f"{v:.3f}"

    return (f"overhead_ratio {f('overhead_ratio')} (target <= 1.10) | throughput_ratio_vs_cold "
            f"{f('throughput_ratio_vs_cold')} (>= 1.5) | throughput_ratio_vs_hf {f('throughput_ratio_vs_hf')} (>= 1.5) "
            f"| pruning_speedup {f('pruning_speedup')} (>= 2)")


def render(results: dict[str, Any], sections: dict[int, Section], mode: str, total: float, command: str) -> str:
    m, v = results["machine"], results["versions"]
    lines = [
        "# Benchmarks", "",
        f"Generated by `{command}` on "
        f"{results['date']} ({total / 60:.1f} min). Mode **{mode}**; data: {results['data']}; model: "
        f"all-MiniLM-L6-v2, 4-bit nf4 + double quant QLoRA, CPU.", "",
        "| machine | |", "|---|---|",
        f"| CPU | {m['cpu']} |", f"| cores | {m['cores']} |", f"| RAM | {m['ram_gib']} GiB |",
        f"| GPU | {m['gpu']} |", f"| OS / Python | {m['platform']} / {m['python']} |",
        f"| load average (1/5 min) at the end | {results['load_average_end']} |", "",
        "| versions | |", "|---|---|", *[f"| {k} | {val} |" for k, val in v.items()], "",
        "Every number of ours comes from the real CLI (`python sweep.py [-m]`) run as a subprocess in a scratch "
        "directory and timed from outside; results are read back from its Optuna journal and MLflow store. "
        f"Every measured process (ours and baselines) runs with OMP_WAIT_POLICY="
        f"{results['omp_wait_policy']} (see bench/common.py). Timings on a CPU shared with other jobs are noisy: "
        "compare the ratios, which are taken side by side in one run.", "",
        "## Summary", "",
        "| key | value | target | verdict |", "|---|---|---|---|",
        f"| overhead_ratio | {_num(results.get('overhead_ratio'))} | <= 1.10 | "
        f"{_verdict(results.get('overhead_ratio'), lambda v: v <= 1.10)} |",
        f"| throughput_ratio_vs_cold | {_num(results.get('throughput_ratio_vs_cold'))} | >= 1.5 | "
        f"{_verdict(results.get('throughput_ratio_vs_cold'), lambda v: v >= 1.5)} |",
        f"| throughput_ratio_vs_hf | {_num(results.get('throughput_ratio_vs_hf'))} | >= 1.5 | "
        f"{_verdict(results.get('throughput_ratio_vs_hf'), lambda v: v >= 1.5)} |",
        f"| pruning_speedup | {_num(results.get('pruning_speedup'))} | >= 2, no loss of best accuracy | "
        f"{_verdict(results.get('pruning_speedup'), lambda v: v >= 2 and results.get('pruning_best_kept', True))}"
        f"{'' if results.get('pruning_best_kept', True) else ' (best accuracy lost, see 3.)'} |", ""]
    if mode != "full":
        lines += [f"_At --{mode} sizes the sweep trials are a few optimizer steps: too short to learn SST-2 (accuracies "
                  "sit near the majority class), so tables 3 and 4 exercise the machinery and their accuracies are "
                  "noise; the full run (`python bench/run.py`) answers them. Tables 1, 2, 5 and 6 are meaningful "
                  "at every size._", ""]
    for number in range(1, 8):
        section = sections.get(number)
        lines += [f"## {TITLES[number - 1]}", ""]
        lines += [section.body if section else "_not run (`--only`)_", ""]
    return "\n".join(lines)


def _verdict(value: Any, ok: Callable[[float], bool]) -> str:
    return "-" if value is None else ("meets" if ok(value) else "misses")


def _num(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}"


if __name__ == "__main__":
    sys.exit(main())
