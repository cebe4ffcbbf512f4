"""The conformal pruner's bound and savings: seeded simulation and a replay of real curves.

    python bench/conformal_pruner.py [--sweeps 10] [--out bench/results/conformal_pruner.md]

Each sweep feeds curves one trial at a time through an in-memory Optuna study and the product's
own `make_pruner("conformal", ...)`, as bench/pruning_frontier.py does: a trial reports its evals
in order and stops when the pruner says so, else completes with its best eval (`objective_at:
best`). Per target rate a and `prune_after`:

- bound missed: share of fresh trials, run to their end, whose final value exceeded the
  conformal bound at any of their checks (what the guarantee bounds by a), over 40 calibration
  sets of simulated curves (real curves: 100 draws of the calibration trials from the 72, the
  33 of the rest first drawn are the fresh trials);
- false kills: trials pruned although their full curve's best eval beat the incumbent at the
  moment of pruning, per trial that started after the calibration (at risk) and per trial;
- steps saved: optimizer steps not trained, of all trials' steps (the calibration trials run whole).

Simulated curves: accuracy saturating at a random level (0.55-0.92) at a random speed, floored at
chance, with eval noise (an eval every 10% of 100 steps). Real curves: the random-sampler curves
committed for the pruning frontier (bench/results/pruning_curves_{sst2,demo}.json, 72 trials of
60 steps each, an eval every 12 steps), in random orders of 48 trials.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

TOTAL = 100
STEPS = tuple(range(10, TOTAL + 1, 10))  # an eval every 10% of training, the last at the end
REAL_CURVES = ("sst2", "demo")


def random_curve(rng: np.random.Generator) -> dict[int, float]:
    """An accuracy curve that saturates at a random level at a random speed, with eval noise and a
    floor at chance (slow starters sit there for the first evals)."""
    final = rng.uniform(0.55, 0.92)
    drop, speed = rng.uniform(0.02, 0.12), rng.uniform(0.3, 1.3)
    noise = rng.uniform(0.003, 0.015)
    return {s: float(max(0.5, final - drop * ((s / TOTAL) ** -speed - 1)) + rng.normal(0, noise)) for s in STEPS}


@dataclass
class Tally:
    trials: int = 0
    pruned: int = 0
    false_kills: int = 0   # pruned, and the full curve's best eval beat the incumbent at that moment
    at_risk: int = 0       # trials that started once the calibration trials had completed
    steps_trained: int = 0
    steps_full: int = 0
    regret_sweeps: int = 0  # sweeps in which a pruned trial would have beaten the best kept one
    sweeps: int = 0

    def add(self, other: "Tally") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @property
    def saved(self) -> float:
        return 1 - self.steps_trained / self.steps_full


def pruner(false_kill: float, prune_after: float, total_steps: int, min_trials: int = 4):
    from sweeps.search.pruning import PruneGuard
    from sweeps.search.samplers import make_pruner

    guard = PruneGuard(prune_after=prune_after, min_trials=min_trials, false_kill=false_kill)
    return make_pruner("conformal", guard=guard, total_steps=total_steps)


def run_sweep(guarded, curves: list[dict[int, float]], total_steps: int = TOTAL) -> Tally:
    """One one-worker sweep over `curves` with the pruner `guarded` (make_pruner's)."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.create_study(direction="maximize", pruner=guarded, sampler=optuna.samplers.RandomSampler(seed=0))
    out = Tally(sweeps=1)
    needed = guarded.inner.n_calibration
    pruned_finals, kept = [], []
    for curve in curves:
        calibrated = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) >= needed
        trial = study.ask()
        trial.set_user_attr("total_steps", total_steps)
        out.trials, out.steps_full, out.at_risk = out.trials + 1, out.steps_full + total_steps, out.at_risk + calibrated
        final = max(curve.values())
        for step, value in sorted(curve.items()):
            trial.report(value, step)
            if trial.should_prune():
                out.pruned, out.steps_trained = out.pruned + 1, out.steps_trained + step
                out.false_kills += final > study.best_value
                pruned_finals.append(final)
                study.tell(trial, state=TrialState.PRUNED)
                break
        else:
            out.steps_trained += total_steps
            kept.append(final)
            study.tell(trial, final)
    out.regret_sweeps = int(bool(pruned_finals) and max(pruned_finals) > max(kept))
    return out


def simulate(false_kill: float, sweeps: int = 10, trials: int = 60, seed: int = 0, prune_after: float = 0.3) -> Tally:
    """`sweeps` sweeps of `trials` simulated curves each."""
    rng = np.random.default_rng(seed)
    total = Tally()
    for _ in range(sweeps):
        total.add(run_sweep(pruner(false_kill, prune_after, TOTAL), [random_curve(rng) for _ in range(trials)]))
    return total


def miscoverage(false_kill: float, sweeps: int = 40, test_trials: int = 25, seed: int = 5, prune_after: float = 0.3,
                pool: list[dict[int, float]] | None = None, total_steps: int = TOTAL) -> float:
    """Share of fresh trials, each run to its end, whose final value exceeded the conformal bound
    at any of their checks, over `sweeps` calibration sets: simulated curves, or, with `pool`,
    calibration and fresh trials drawn from those curves without replacement."""
    import optuna
    from optuna.trial import TrialState

    rng = np.random.default_rng(seed)
    missed = tested = 0
    for _ in range(sweeps):
        guarded = pruner(false_kill, prune_after, total_steps)
        n = guarded.inner.n_calibration
        if pool is None:
            curves = [random_curve(rng) for _ in range(n + test_trials)]
        else:
            curves = [pool[i] for i in rng.permutation(len(pool))[:n + test_trials]]
        study = optuna.create_study(direction="maximize", pruner=guarded)
        for curve in curves[:n]:
            study.add_trial(optuna.trial.create_trial(value=max(curve.values()), intermediate_values=curve,
                                                      user_attrs={"total_steps": total_steps}))
        for curve in curves[n:]:
            trial = study.ask()
            trial.set_user_attr("total_steps", total_steps)
            bounds = []
            for step, value in sorted(curve.items()):
                trial.report(value, step)
                bounds.append(guarded.inner.upper_bound(study, study.get_trials(deepcopy=False)[-1]))
            missed += any(b is not None and max(curve.values()) > b for b in bounds)
            tested += 1
            study.tell(trial, state=TrialState.FAIL)  # out of the way: never calibrates, never the incumbent
    return missed / tested


def real_curves(name: str) -> tuple[list[dict[int, float]], int]:
    """The committed curves of one data set and their trials' length in optimizer steps."""
    d = json.loads((BENCH / "results" / f"pruning_curves_{name}.json").read_text())
    return [{int(k): float(v) for k, v in c["evals"].items()} for c in d["curves"]], int(d["steps"])


def replay_real(name: str, false_kill: float, prune_after: float, orders: int = 100, trials: int = 48, seed: int = 0) -> Tally:
    """The committed real curves of one data set, in `orders` random orders of `trials` trials."""
    pool, steps = real_curves(name)
    rng = np.random.default_rng(seed)
    total = Tally()
    for _ in range(orders):
        order = rng.choice(len(pool), size=trials, replace=False)
        total.add(run_sweep(pruner(false_kill, prune_after, steps), [pool[i] for i in order], steps))
    return total


def main(argv: list[str] | None = None) -> int:
    import optuna

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sweeps", type=int, default=10, help="simulated sweeps of 60 trials per row")
    p.add_argument("--orders", type=int, default=100, help="random orders of the real curves per row")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    head = "| curves | a | prune_after | bound missed | false kills / trials at risk | false kills / all trials | sweeps with regret | steps saved |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for a in (0.05, 0.1, 0.2):
        for after in (0.3, 0.5):
            t = simulate(a, sweeps=args.sweeps, prune_after=after)
            missed = f"{miscoverage(a, prune_after=after):.1%}"
            lines.append(f"| simulated ({t.trials} trials) | {a} | {after} | {missed} | {t.false_kills}/{t.at_risk} "
                         f"({t.false_kills / t.at_risk:.1%}) | {t.false_kills / t.trials:.1%} | "
                         f"{t.regret_sweeps}/{t.sweeps} | {t.saved:.0%} |")
    for name in REAL_CURVES:
        pool, steps = real_curves(name)
        for a in (0.05, 0.1, 0.2):
            t = replay_real(name, a, 0.3, orders=args.orders)
            missed = f"{miscoverage(a, sweeps=100, test_trials=72 - 39, pool=pool, total_steps=steps):.1%}"
            lines.append(f"| {name}, real ({t.sweeps} orders of 48) | {a} | 0.3 | {missed} | {t.false_kills}/{t.at_risk} "
                         f"({t.false_kills / t.at_risk:.1%}) | {t.false_kills / t.trials:.1%} | "
                         f"{t.regret_sweeps}/{t.sweeps} | {t.saved:.0%} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(f"# {__doc__.splitlines()[0]}\n\n{__doc__.split(chr(10) * 2, 1)[1]}\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
