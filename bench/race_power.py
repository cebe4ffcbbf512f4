"""The seed race's guarantee and power, by seeded simulation of the product's own SeedRace.

    python bench/race_power.py [--races 2000] [--seed 0]

Each run of a config scores its true accuracy + the round's shared seed-pair effect (SD 1 point,
common to all configs) + its own noise (SD 1 point), rounded to whole rows of an 872-row eval set
(SST-2 validation). Three configs race at the default alpha = 0.05. Printed: how often each of
three equal configs is dropped (what alpha bounds), and how often a config 1, 3 or 6 points worse
than the two best is dropped, with 12 and 24 race runs (race.max_runs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import md_table  # noqa: E402

from sweeps.runtime.race import SeedRace, race_rounds  # noqa: E402

EVAL_ROWS, SHARED_SD, OWN_SD, ALPHA = 872, 0.01, 0.01, 0.05


def one_race(means: list[float], max_runs: int, rng: np.random.Generator) -> set[int]:
    race = SeedRace(list(range(len(means))), race_rounds(max_runs, len(means)), ALPHA)
    scores: dict[int, dict[int, float]] = {}
    for r in range(race.rounds):
        shared = rng.normal(0, SHARED_SD)
        for c in race.alive:
            acc = float(np.clip(means[c] + shared + rng.normal(0, OWN_SD), 0, 1))
            scores.setdefault(c, {})[r] = round(acc * EVAL_ROWS) / EVAL_ROWS
        race.observe(r, scores)
        if race.finished:
            break
    return set(race.alive)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--races", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rows = []
    for max_runs in (12, 24):
        rng = np.random.default_rng(args.seed)
        equal = [one_race([0.80] * 3, max_runs, rng) for _ in range(args.races)]
        worst = max(sum(c not in alive for alive in equal) / args.races for c in range(3))
        row = [max_runs, f"{100 * worst:.1f}%"]
        for gap in (0.01, 0.03, 0.06):
            races = [one_race([0.80, 0.80, 0.80 - gap], max_runs, rng) for _ in range(args.races)]
            row.append(f"{100 * sum(2 not in alive for alive in races) / args.races:.1f}%")
        rows.append(row)
    print(f"{args.races} races of 3 configs per cell; alpha = {ALPHA}; {EVAL_ROWS} eval rows; seed-pair SD "
          f"{100 * SHARED_SD:g} point, own SD {100 * OWN_SD:g} point")
    print(md_table(["race.max_runs", "equal config dropped (worst of 3)", "1 pt worse dropped", "3 pts worse dropped",
                    "6 pts worse dropped"], rows))


if __name__ == "__main__":
    main()
