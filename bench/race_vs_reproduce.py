"""The seed race against post-hoc reproduction, by seeded simulation: runs spent for the same confidence.

    python bench/race_vs_reproduce.py [--calibrate WORKDIR] [--sims 2000] [--seed 0] [--out FILE]

One real run of each (bench/race_cost.py) is one draw of the seeds: it shows what each spent and
picked that time, not how often each picks the best config. Here both are run thousands of times
on simulated seeds. Only the runs are simulated; the decisions are the product's own: the race is
`sweeps.runtime.race.SeedRace` (one shared fresh seed pair per round, a rival dropped once the
paired one-sided test at alpha / (rivals x rounds) says it is worse, the best surviving mean wins);
the reproduction is today's `reproduce.top_k=K, n_seeds=S` (K configs on the same S x S crossed
grid of fresh init and data-order seeds, the best grid mean wins, and the report's lead test,
`analysis.stats.crossed_mean` on the winner-minus-runner-up grid, says whether it is separated).

A run's score is the two-way random-effects model the reproducibility report fits: the config's
true mean + an init-seed effect + a data-order effect + interaction and residual noise. Each effect
is correlated across configs by rho, because configs that share a seed share part of its luck
(the reason both designs pair seeds). With `--calibrate` the variances, rho and the configs' true
means come from the crossed grids of a real reproduction (a bench/race_cost.py workdir): its
pooled ANOVA components and the components of its difference grids.

Per design and budget: runs spent; how often the winner is the config with the best true mean;
the winner's true mean (what its held-out test score is, on average, up to the gap between
validation and test) and its shortfall from the best; how often the winner is declared separated;
how often the best config is dropped or declared beaten; and, where all configs are equal, how
often one given config is (what alpha bounds) and how often some config is.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import md_table  # noqa: E402

from analysis.stats import crossed_mean, seed_variance_components  # noqa: E402
from sweeps.runtime.race import SeedRace, race_rounds  # noqa: E402

SOURCES = ("init", "data", "residual")


@dataclass(frozen=True)
class SeedNoise:
    """Variance of each seed source for one run, and how strongly each is shared across configs."""

    init: float
    data: float
    residual: float
    rho: float
    source: str

    @property
    def sd(self) -> float:
        return float(np.sqrt(self.init + self.data + self.residual))

    def draw(self, rng: np.random.Generator, k: int, shape: tuple[int, ...]) -> np.ndarray:
        """(k, *shape) effects of one source set: a part common to all k configs and a part each has alone."""
        common = rng.standard_normal(shape)
        own = rng.standard_normal((k, *shape))
        return np.sqrt(self.rho) * common + np.sqrt(1 - self.rho) * own


@dataclass(frozen=True)
class Scenario:
    label: str
    means: tuple[float, ...]  # true means of the K configs that enter the race / the reproduction

    @property
    def all_equal(self) -> bool:
        return len(set(self.means)) == 1


def race_scores(noise: SeedNoise, means: np.ndarray, rounds: int, rng: np.random.Generator) -> np.ndarray:
    """(K, rounds) scores: every round a fresh init seed and a fresh data seed, shared by the configs."""
    k = len(means)
    parts = [np.sqrt(v) * noise.draw(rng, k, (rounds,)) for v in (noise.init, noise.data, noise.residual)]
    return means[:, None] + sum(parts)


def grid_scores(noise: SeedNoise, means: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    """(K, S, S) scores on one crossed grid: an init seed's effect is shared along its row, a data
    seed's along its column, and every cell has its own interaction and residual."""
    k = len(means)
    init = np.sqrt(noise.init) * noise.draw(rng, k, (s,))[:, :, None]
    data = np.sqrt(noise.data) * noise.draw(rng, k, (s,))[:, None, :]
    resid = np.sqrt(noise.residual) * noise.draw(rng, k, (s, s))
    return means[:, None, None] + init + data + resid


def simulate_race(noise: SeedNoise, means: np.ndarray, max_runs: int, alpha: float,
                  rng: np.random.Generator) -> dict:
    """One race: runs spent, winner, every rival dropped, the configs dropped."""
    k = len(means)
    race = SeedRace(list(range(k)), race_rounds(max_runs, k), alpha)
    drawn = race_scores(noise, means, race.rounds, rng)
    scores: dict[int, dict[int, float]] = {}
    runs = 0
    for rnd in range(race.rounds):
        for c in race.alive:
            scores.setdefault(c, {})[rnd] = float(drawn[c, rnd])
            runs += 1
        race.observe(rnd, scores)
        if race.finished:
            break
    return {"runs": runs, "winner": race.winner(scores), "separated": race.finished, "dropped": set(race.eliminated)}


def simulate_reproduction(noise: SeedNoise, means: np.ndarray, s: int, alpha: float,
                          rng: np.random.Generator) -> dict:
    """One reproduction on an S x S grid: runs, winner, lead over the runner-up significant at alpha,
    and the configs that lead declares beaten (the runner-up and everything below it)."""
    grids = grid_scores(noise, means, s, rng)
    ranked = np.argsort(-grids.mean(axis=(1, 2)), kind="stable")
    lead = crossed_mean(grids[ranked[0]] - grids[ranked[1]], maximize=True)
    separated = bool(lead["p_better"] < alpha)
    return {"runs": int(grids[0].size * len(means)), "winner": int(ranked[0]), "separated": separated,
            "dropped": {int(c) for c in ranked[1:]} if separated else set()}


def summarize_arm(label: str, outcomes: list[dict], means: np.ndarray) -> dict:
    """Means over the simulations. "Best dropped": config 0, whose true mean is the best (with
    ties, one given config of those tied for best), dropped or declared beaten."""
    runs = np.array([o["runs"] for o in outcomes], dtype=float)
    true = means[np.array([o["winner"] for o in outcomes])]
    best = float(means.max())
    return {"arm": label, "runs": float(runs.mean()), "runs_max": float(runs.max()),
            "p_best": float(np.mean(true == best)), "winner_true": float(true.mean()),
            "shortfall_points": 100 * float((best - true).mean()),
            "p_separated": float(np.mean([o["separated"] for o in outcomes])),
            "p_best_dropped": float(np.mean([0 in o["dropped"] for o in outcomes])),
            "p_any_dropped": float(np.mean([bool(o["dropped"]) for o in outcomes]))}


def run_scenario(scenario: Scenario, noise: SeedNoise, race_budgets: list[int], seed_counts: list[int],
                 alpha: float, sims: int, seed: int, undropped: int = 0) -> list[dict]:
    means = np.asarray(scenario.means, dtype=float)
    if means[0] != means.max():
        raise ValueError(f"{scenario.label}: the first config must have the best true mean")
    rows = []
    for n_seeds in seed_counts:
        rng = np.random.default_rng([seed, 1, n_seeds])
        outcomes = [simulate_reproduction(noise, means, n_seeds, alpha, rng) for _ in range(sims)]
        rows.append(summarize_arm(f"reproduce {n_seeds} x {n_seeds} seeds", outcomes, means))
    for budget in race_budgets:
        rng = np.random.default_rng([seed, 2, budget])
        outcomes = [simulate_race(noise, means, budget, alpha, rng) for _ in range(sims)]
        rows.append(summarize_arm(f"race, at most {budget} runs", outcomes, means))
    if undropped:  # the same seed pairs with alpha 0: what the design gives without any elimination
        rng = np.random.default_rng([seed, 3, undropped])
        outcomes = [simulate_race(noise, means, undropped, 0.0, rng) for _ in range(sims)]
        rows.append(summarize_arm(f"seed pairs, {undropped} runs, nothing dropped", outcomes, means))
    return rows


def crossed_grids_of(workdir: Path) -> dict[int, np.ndarray]:
    """config -> its complete crossed grid (rows: init seeds, columns: data seeds) from the
    reproduction study of a bench/race_cost.py workdir."""
    import optuna
    from optuna.trial import TrialState

    from sweeps.search.storage import REPRODUCE_SUFFIX, latest_study_name, open_storage

    storage = open_storage(str(workdir / "optuna-journal.log"))
    repro = optuna.load_study(study_name=latest_study_name(storage) + REPRODUCE_SUFFIX, storage=storage)
    cells: dict[int, dict[tuple[int, int], float]] = {}
    for t in repro.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.user_attrs.get("seed_kind") != "crossed":
            continue
        key = (int(t.user_attrs["replicate_seed"]), int(t.user_attrs["replicate_data_seed"]))
        cells.setdefault(int(t.user_attrs["replicates_trial"]), {})[key] = float(t.values[0])
    grids = {}
    for config, by_cell in cells.items():
        rows = sorted({i for i, _ in by_cell})
        cols = sorted({j for _, j in by_cell})
        if len(by_cell) == len(rows) * len(cols) and len(rows) >= 2 and len(cols) >= 2:
            grids[config] = np.array([[by_cell[(i, j)] for j in cols] for i in rows])
    if len(grids) < 2:
        raise SystemExit(f"{workdir}: fewer than two complete crossed grids in the reproduction study")
    return grids


def calibrate(grids: dict[int, np.ndarray], source: str) -> tuple[SeedNoise, np.ndarray]:
    """Seed variances pooled over the configs' grids, rho from the grids of their pairwise
    differences (a difference grid carries 2 (1 - rho) of each variance), and the grid means."""
    table = seed_variance_components(list(grids.values()))["table"]
    v = dict(zip(SOURCES, table["variance"].astype(float)))
    configs = sorted(grids)
    diffs = [grids[a] - grids[b] for i, a in enumerate(configs) for b in configs[i + 1:]]
    v_diff = float(seed_variance_components(diffs)["table"]["variance"].sum())
    total = sum(v.values())
    rho = float(np.clip(1 - v_diff / (2 * total), 0.0, 0.95)) if total > 0 else 0.0
    noise = SeedNoise(v["init"], v["data"], v["residual"], rho, source)
    return noise, np.array([grids[c].mean() for c in configs])


def table(rows: list[dict], equal: bool) -> str:
    if equal:
        head = ["design", "runs (mean / most)", "one given config dropped or declared beaten (the promise: <= alpha)",
                "some config dropped or declared beaten", "a winner declared separated from all"]
        cells = [[r["arm"], f"{r['runs']:.1f} / {r['runs_max']:.0f}", f"{r['p_best_dropped']:.1%}",
                  f"{r['p_any_dropped']:.1%}", f"{r['p_separated']:.1%}"] for r in rows]
    else:
        head = ["design", "runs (mean / most)", "picks the best config", "winner's true mean",
                "shortfall from the best (points)", "winner declared separated", "the best config dropped or declared beaten"]
        cells = [[r["arm"], f"{r['runs']:.1f} / {r['runs_max']:.0f}", f"{r['p_best']:.1%}", f"{r['winner_true']:.4f}",
                  f"{r['shortfall_points']:.2f}", f"{r['p_separated']:.1%}", f"{r['p_best_dropped']:.1%}"] for r in rows]
    return md_table(head, cells)


def cheapest_match(rows: list[dict], reference: str) -> str:
    """The fewest mean race runs that pick the best config at least as often as `reference`."""
    ref = next(r for r in rows if r["arm"] == reference)
    races = sorted((r for r in rows if r["arm"].startswith("race,")), key=lambda r: r["runs"])
    match = next((r for r in races if r["p_best"] >= ref["p_best"]), None)
    if match is None:
        return f"no race budget here picks the best config as often as {reference} ({ref['p_best']:.1%})"
    return (f"{match['arm']} picks the best config {match['p_best']:.1%} of the time on {match['runs']:.1f} runs; "
            f"{reference}: {ref['p_best']:.1%} on {ref['runs']:.0f} runs ({ref['runs'] / match['runs']:.1f}x the runs)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calibrate", type=Path, default=None,
                   help="a bench/race_cost.py workdir whose reproduction ran crossed grids")
    p.add_argument("--sims", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--race-budgets", default="6,9,12,18,24,30,36")
    p.add_argument("--seed-counts", default="2,3,4")
    p.add_argument("--undropped", type=int, default=12,
                   help="also race this many runs with nothing dropped (0: not), to tell the seed-pair design's "
                        "share of the saving from the elimination's")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    if args.calibrate:
        grids = crossed_grids_of(args.calibrate)
        noise, measured = calibrate(grids, f"the crossed grids of {len(grids)} configs in {args.calibrate}")
        measured = np.sort(measured)[::-1]
    else:  # a stated assumption, not a measurement
        noise, measured = SeedNoise(0.006**2, 0.006**2, 0.004**2, 0.5, "assumed (no --calibrate)"), None
    gap = noise.sd  # one run's seed SD: the scale on which "close" and "clear" gaps are set
    scenarios = []
    if measured is not None:
        scenarios.append(Scenario("the measured configs (their reproduction means taken as true)", tuple(measured)))
    scenarios += [Scenario(f"a rival 1 SD ({100 * gap:.2f} pt) behind, one 3 SD behind", (0.85, 0.85 - gap, 0.85 - 3 * gap)),
                  Scenario("three equal configs", (0.85, 0.85, 0.85))]
    budgets = [int(b) for b in args.race_budgets.split(",")]
    counts = [int(s) for s in args.seed_counts.split(",")]

    lines = [f"Seed noise ({noise.source}): variance init {noise.init:.2e}, data order {noise.data:.2e}, "
             f"residual {noise.residual:.2e} (one run's SD {100 * noise.sd:.2f} points); shared across configs: "
             f"rho = {noise.rho:.2f}. {args.sims} simulated races and reproductions per row, seed {args.seed}, "
             f"alpha {args.alpha}.", ""]
    for scenario in scenarios:
        rows = run_scenario(scenario, noise, budgets, counts, args.alpha, args.sims, args.seed, args.undropped)
        lines += [f"### {scenario.label}: true means {', '.join(f'{m:.4f}' for m in scenario.means)}", "",
                  table(rows, scenario.all_equal), ""]
        if not scenario.all_equal:
            lines += [f"- {cheapest_match(rows, f'reproduce {s} x {s} seeds')}" for s in counts] + [""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
