"""How much of benchmark 4's "time to within 0.5 points" is cost per trial and how much is luck.

    python bench/quality_tolerance.py WORKDIR [--tolerances 0.5,1,2] [--out FILE]

WORKDIR is a work dir kept by `python bench/run.py --only 4 --keep-work`. Benchmark 4 times each arm
until it first holds a config within 0.5 points of the best validation accuracy any trial reached.
On 300 validation rows that band is 1.5 rows wide, so whether a sampler seed gets there at all is
close to a coin toss, and a seed that never does counts with its whole search. This re-reads the
same trials at wider bands and splits the time into trials completed before the hit and seconds
per trial: the first is the sampler's luck and skill, the second the cost of a trial in each
process plan (ours: warm workers; HF: `model_init` loads and quantises the model in every trial).

Wall time only (the CPU series is not kept in the work dir). An arm's launch is the birth time of
its first log file (`stat %W`), or its first trial's start where the file system keeps none.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import md_table, study_rows  # noqa: E402
from quality import OURS, PRODUCT  # noqa: E402

ARM_DIRS = {"TPE": "quality_tpe_s{}", "random": "quality_random_s{}", "TPE + pruning": "quality_tpe_pruned_s{}",
            "TPE + race": "quality_tpe_race_s{}", "HF hyperparameter_search": "quality_hf_s{}",
            "product default search": "quality_product_s{}"}
HF = "HF hyperparameter_search"


@dataclass
class Search:
    """One arm at one sampler seed: when it was launched, and (completion time, value) of each completed trial."""

    launched: float
    completed: list[tuple[float, float]]  # sorted by completion time

    def hit(self, target: float) -> tuple[float, int] | None:
        """(seconds from launch, trials completed) when a trial scoring >= target first completed."""
        for i, (when, value) in enumerate(self.completed):
            if value >= target:
                return when - self.launched, i + 1
        return None

    def whole(self) -> tuple[float, int]:
        return self.completed[-1][0] - self.launched, len(self.completed)


def birth_time(path: Path) -> float | None:
    out = subprocess.run(["stat", "-c", "%W", str(path)], capture_output=True, text=True)
    value = out.stdout.strip()
    return float(value) if out.returncode == 0 and value not in ("", "0", "-") else None


def our_search(workdir: Path, name: str) -> Search:
    rows = [r for r in study_rows(workdir, name) if r.state == "COMPLETE" and r.complete]
    launched = birth_time(workdir / "sweep.log") or min(r.start for r in rows)
    return Search(launched, sorted((r.complete, r.value) for r in rows))


def hf_search(workdir: Path) -> Search:
    logs = sorted(workdir.glob("hf_search_*.log"))
    trials: dict[int, tuple[float, float]] = {}
    for log in logs:
        lines = [ln for ln in log.read_text().splitlines() if ln.startswith("HF_RESULT ")]
        for t in json.loads(lines[-1][len("HF_RESULT "):])["trials"]:
            if t["state"] == "COMPLETE":
                trials[t["number"]] = (t["complete"], t["value"])
    births = [b for b in (birth_time(log) for log in logs) if b]
    launched = min(births) if births else min(c - 1e-9 for c, _ in trials.values())
    return Search(launched, sorted(trials.values()))


def load(workdir: Path) -> dict[str, list[Search]]:
    out: dict[str, list[Search]] = {}
    for arm, pattern in ARM_DIRS.items():
        seed = 0
        while (workdir / pattern.format(seed)).is_dir():
            d = workdir / pattern.format(seed)
            out.setdefault(arm, []).append(hf_search(d) if arm == HF else our_search(d, pattern.format(seed)))
            seed += 1
    if not ({OURS, PRODUCT} & set(out)) or HF not in out:
        raise SystemExit(f"{workdir}: no benchmark 4 work dirs for {PRODUCT!r} or {OURS!r}, and {HF!r} "
                         "(run it with --keep-work)")
    return out


def table(searches: dict[str, list[Search]], tolerances: list[float]) -> str:
    best = max(v for runs in searches.values() for s in runs for _, v in s.completed)
    rows = []
    for tol in tolerances:
        target = best - tol / 100
        cells = {}
        for arm, runs in searches.items():
            hits = [s.hit(target) for s in runs]
            spent = [h if h else s.whole() for h, s in zip(hits, runs)]
            cells[arm] = (statistics.fmean(w for w, _ in spent), statistics.fmean(n for _, n in spent),
                          sum(h is not None for h in hits), len(runs))
        mine = PRODUCT if PRODUCT in cells else OURS  # today's default search where the run has it
        ours, hf = cells[mine], cells[HF]
        per_trial = (hf[0] / hf[1]) / (ours[0] / ours[1])
        for arm, (wall, n, reached, total) in cells.items():
            rows.append([f"{tol:g} ({target:.4f})", arm, f"{reached}/{total}", f"{n:.1f}", f"{wall:.0f}",
                         f"{wall / n:.1f}",
                         f"**{hf[0] / ours[0]:.2f}x** = {hf[1] / ours[1]:.2f} x {per_trial:.2f}" if arm == mine else ""])
    return (f"Best validation accuracy any trial reached: {best:.4f}. A seed that never reaches the band "
            "counts with its whole search.\n\n"
            + md_table(["band, points (target)", "arm", "seeds reached", "trials completed until then (mean)",
                        "wall s from launch (mean)", "wall s per completed trial",
                        "HF over ours = trials ratio x per-trial ratio"], rows))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("workdir", type=Path)
    p.add_argument("--tolerances", default="0.5,1,2", help="bands below the best, in accuracy points")
    p.add_argument("--out", type=Path, help="also write the table to this file")
    args = p.parse_args(argv)
    text = table(load(args.workdir), [float(x) for x in args.tolerances.split(",")])
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
