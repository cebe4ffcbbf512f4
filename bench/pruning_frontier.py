"""Where pruning saves compute without regret: the product's pruners replayed on full learning curves.

    python bench/pruning_frontier.py record [--demo-data] [--quick] [--sampler-seeds 3,4,5] --curves FILE
    python bench/pruning_frontier.py replay --curves FILE [FILE ...] [--sweep-trials 12,24,48]
                                           [--orders 60] [--out FILE]

`record` runs benchmark 7's no-pruning arm (bench/regret.py: random sampler, its sampler seeds,
every trial to its end, through the real CLI) and writes every trial's curve: its eval at each
checkpoint (added to FILE when it holds other sampler seeds of the same protocol). Benchmark 7
measures a handful of pruner settings with real sweeps; this asks the question behind its target
(zero regret at >= 40% of the steps saved) for a whole grid of them.

`replay` feeds those curves, in random orders, through each setting's pruner as the sweep builds
it (`sweeps.search.samplers.make_pruner`: the guard, the Optuna pruner, Optuna's PatientPruner)
in an in-memory study that sees one trial at a time, as a one-worker sweep does: a trial reports
its evals in order and stops when the pruner says so, else completes with its best eval
(`objective_at: best`). A random-sampler trial is an independent draw from the search space, so
all recorded curves of one data set form one pool and a sweep of n trials is n of them in a random
order (the same orders for every setting). Per setting and sweep size: the share of sweeps in
which a pruned trial would have beaten the best kept trial (regret), the mean loss in points when
it did, and the optimizer steps saved.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

TARGET_SAVING = 0.40  # the bar: zero regret at >= 40% of the steps saved
RARE_REGRET = 0.05   # "almost never": a pruned trial beats the kept best in at most this share of sweeps


@dataclass(frozen=True)
class Setting:
    pruner: str
    prune_after: float
    min_trials: int
    patience: int | None = None
    kwargs: tuple[tuple[str, object], ...] = ()

    @property
    def label(self) -> str:
        kw = dict(self.kwargs)
        name = (f"keep the top {kw['percentile']:.0f}%" if self.pruner == "percentile" else
                f"Hyperband (reduction {kw['reduction_factor']})" if self.pruner == "hyperband" else self.pruner)
        return (f"{name}, prune_after {self.prune_after}, "
                f"{self.min_trials} finished first{f', patience {self.patience}' if self.patience else ''}")

    def pruner_for(self, total_steps: int):
        from sweeps.search.pruning import PruneGuard
        from sweeps.search.samplers import make_pruner

        guard = PruneGuard(prune_after=self.prune_after, min_trials=self.min_trials, patience=self.patience)
        return make_pruner(self.pruner, dict(self.kwargs), guard, total_steps=total_steps)


OLD_DEFAULT = Setting("median", 0.0, 0)
DEFAULT = Setting("median", 0.5, 4)  # conf: hydra.sweeper.prune_after / prune_min_trials


def settings() -> list[Setting]:
    """Median (keep the better half), Optuna's percentile 67 and 33 (keep the better two thirds /
    the better third) and Hyperband (reduction 2 and 3), each from several points of the trial and
    after several numbers of finished trials; median and percentile with and without patience."""
    out = [OLD_DEFAULT]
    for after in (0.2, 0.3, 0.5):
        for first in (0, 2, 4):
            for patience in (None, 1):
                out.append(Setting("median", after, first, patience))
                out.append(Setting("percentile", after, first, patience, (("percentile", 67.0),)))
                out.append(Setting("percentile", after, first, patience, (("percentile", 33.0),)))
            for rf in (2, 3):
                out.append(Setting("hyperband", after, first, None, (("reduction_factor", rf),)))
    return out


def record(args: argparse.Namespace) -> int:
    import common
    from common import MODES, Context, Workspace, data_name
    from pruning import arm_sizes, random_unpruned_runs

    common.USE_DEMO_DATA = args.demo_data
    sizes = MODES["quick" if args.quick else "full"]
    if args.sampler_seeds:
        sizes = dataclasses.replace(sizes, q_seeds=[int(x) for x in args.sampler_seeds.split(",")])
    ctx = Context(sizes, Workspace())
    ctx.ws.template_db()
    runs = random_unpruned_runs(ctx)
    a = arm_sizes(sizes)
    curves = [{"sampler_seed": seed, "number": r.number, "params": r.params,
               "evals": {str(k): v for k, v in sorted(r.intermediate.items())}}
              for seed, run in runs.items() for r in run.complete]
    record = {"data": data_name(), "mode": "quick" if args.quick else "full", "steps": a.std_steps,
              "eval_every": a.std_eval_every, "eval_rows": a.std_eval, "sampler_seeds": list(runs), "curves": curves}
    if args.curves.is_file():  # more sampler seeds for the same pool
        old = json.loads(args.curves.read_text())
        same = ("data", "mode", "steps", "eval_every", "eval_rows")
        if any(old[k] != record[k] for k in same) or set(old["sampler_seeds"]) & set(runs):
            raise SystemExit(f"{args.curves} holds another protocol or these seeds already: "
                             f"{ {k: old[k] for k in same} }, seeds {old['sampler_seeds']}")
        record["sampler_seeds"] = old["sampler_seeds"] + record["sampler_seeds"]
        record["curves"] = old["curves"] + curves
    args.curves.write_text(json.dumps(record, indent=1) + "\n")
    print(f"{len(curves)} curves of {a.std_steps} steps ({data_name()}) -> {args.curves} "
          f"({len(record['curves'])} in all)")
    return 0


def replay_one(setting: Setting, curves: list[dict[int, float]], total_steps: int) -> dict:
    """One one-worker sweep over `curves` in this order: regret (points, 0: none), steps saved."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.create_study(direction="maximize", pruner=setting.pruner_for(total_steps),
                                sampler=optuna.samplers.RandomSampler(seed=0))
    trained, kept, pruned_full = 0, [], []
    for curve in curves:
        trial = study.ask()
        trial.set_user_attr("total_steps", total_steps)
        stopped = None
        for step, value in curve.items():
            trial.report(value, step)
            if trial.should_prune():
                stopped = step
                break
        if stopped is None:
            trained += total_steps
            kept.append(max(curve.values()))
            study.tell(trial, max(curve.values()))
        else:
            trained += stopped
            pruned_full.append(max(curve.values()))
            study.tell(trial, state=TrialState.PRUNED)
    best = max(kept) if kept else float("-inf")
    beat = [v for v in pruned_full if v > best]
    return {"regret_points": 100 * (max(beat) - best) if beat else 0.0, "regret_trials": len(beat),
            "saved": 1 - trained / (total_steps * len(curves))}


def replay(args: argparse.Namespace) -> int:
    import optuna
    from common import md_table

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    pools = []
    for path in args.curves:
        d = json.loads(path.read_text())
        pools.append((d, [{int(k): float(v) for k, v in c["evals"].items()} for c in d["curves"]]))
    sizes = [int(n) for n in args.sweep_trials.split(",")]
    grid = settings()
    results: dict[tuple[str, int], list[dict]] = {}
    for d, pool in pools:
        rng = np.random.default_rng(args.seed)
        for n in sizes:
            # a sweep larger than the pool draws with replacement: the pool is a sample of the space
            orders = [rng.choice(len(pool), size=n, replace=n > len(pool)) for _ in range(args.orders)]
            for setting in grid:
                results[(d["data"], n, setting.label)] = [replay_one(setting, [pool[i] for i in o], d["steps"])
                                                          for o in orders]
    lines = ["Curves: " + "; ".join(f"{d['data']}: {len(p)} trials of {d['steps']} steps, an eval every "
                                     f"{d['eval_every']} steps on {d['eval_rows']} rows (sampler seeds "
                                     f"{', '.join(map(str, d['sampler_seeds']))})" for d, p in pools)
             + f". {args.orders} random orders per data set and sweep size, the same for every setting.", ""]
    summary = {}
    for n in sizes:
        rows = []
        for setting in grid:
            cells = [results[(d["data"], n, setting.label)] for d, _ in pools]
            row = {"setting": setting,
                   "regret_share": [float(np.mean([r["regret_trials"] > 0 for r in c])) for c in cells],
                   "regret_points": [statistics.fmean(r["regret_points"] for r in c) for c in cells],
                   "saved": [statistics.fmean(r["saved"] for r in c) for c in cells]}
            rows.append(row)
            summary[f"{n}:{setting.label}"] = {k: v for k, v in row.items() if k != "setting"}
        by_saving = sorted(rows, key=lambda r: -min(r["saved"]))
        zero = [r for r in by_saving if max(r["regret_share"]) == 0]
        rare = [r for r in by_saving if max(r["regret_share"]) <= RARE_REGRET]
        shown = [r for r in rows if r["setting"] in (OLD_DEFAULT, DEFAULT)]
        for r in zero[: args.top] + rare[: args.top]:
            if all(r["setting"] != x["setting"] for x in shown):
                shown.append(r)
        head = ["setting", *(f"{d['data']}: sweeps with regret / mean regret points / steps saved" for d, _ in pools)]
        cells = [[r["setting"].label + (" (old default)" if r["setting"] == OLD_DEFAULT else
                                        " (default)" if r["setting"] == DEFAULT else ""),
                  *(f"{s:.0%} / {p:.2f} / {v:.0%}" for s, p, v in zip(r["regret_share"], r["regret_points"], r["saved"]))]
                 for r in shown]
        lines += [f"### Sweeps of {n} trials", "", md_table(head, cells), ""]
        for name, group in (("zero regret in every replayed sweep", zero),
                            (f"regret in at most {RARE_REGRET:.0%} of the sweeps", rare)):
            best = group[0] if group else None
            lines.append(f"- Most saved with {name} on every data set: " + (
                f"{best['setting'].label}, {' / '.join(f'{v:.0%}' for v in best['saved'])} of the steps "
                f"({'meets' if min(best['saved']) >= TARGET_SAVING else 'misses'} the {TARGET_SAVING:.0%} bar)"
                if best else "none"))
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("record", help="run benchmark 7's no-pruning arm and write its curves")
    r.add_argument("--demo-data", action="store_true")
    r.add_argument("--quick", action="store_true")
    r.add_argument("--sampler-seeds", default=None, help="comma list (default: the mode's, as benchmark 7)")
    r.add_argument("--curves", type=Path, required=True)
    q = sub.add_parser("replay", help="replay the grid of pruner settings on recorded curves")
    q.add_argument("--curves", type=Path, nargs="+", required=True)
    q.add_argument("--sweep-trials", default="12,24,48")
    q.add_argument("--orders", type=int, default=60)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--top", type=int, default=4, help="rows shown of each group (zero regret, rare regret)")
    q.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    return record(args) if args.command == "record" else replay(args)


if __name__ == "__main__":
    sys.exit(main())
