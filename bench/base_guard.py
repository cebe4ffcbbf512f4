"""Is the sweep's winner at least the config the user started from? Old defaults against new.

    python bench/base_guard.py [--train 1000] [--trials 10] [--data sst2|demo] [--out DIR] [--held-out-from JSON]

Two default-space sweeps through the real CLI, same data, same sampler seed, same worker plan:
- old: sampled configs only, each scored at its last eval, the median pruner acting from step 1
  after 2 finished trials, random start-up (the defaults before include_base / objective_at /
  prune_after / startup);
- new: today's defaults (the base config as trial 0, informed start-up, best eval with its
  adapter, no pruning before half a trial and 4 finished trials).
The base config's own score comes from the new arm's trial 0 (its last and its best eval).
Then the held-out check: the new arm's winner and the base config each re-run on the same 2 x 2
fresh init and data-order seeds (`reproduce`, crossed design) and scored on the test split, with
the winner-minus-base difference paired seed for seed. `--held-out-from` takes the arms from an
earlier run's JSON and runs only this check.
Prints the tables; wall time and CPU-seconds (the whole process tree) per arm.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

REPRODUCE = ["hydra.sweeper.reproduce.top_k=1", "hydra.sweeper.reproduce.n_seeds=2",
             "hydra.sweeper.reproduce.design=crossed", "hydra.sweeper.reproduce.determinism_check=false"]
OLD = ["hydra.sweeper.include_base=false", "hydra.sweeper.objective_at=last", "hydra.sweeper.prune_after=0",
       "hydra.sweeper.prune_min_trials=0", "hydra.sweeper.pruner_kwargs={n_startup_trials: 2, n_warmup_steps: 1}",
       "hydra.sweeper.startup=random"]


def sweep(workdir: Path, overrides: list[str]) -> tuple[float, float]:
    """Wall time and CPU-seconds of the whole process tree (the sweep, its fork server and the
    workers it forks, which getrusage(RUSAGE_CHILDREN) never sees: nobody waits for them here)."""
    import psutil

    t0 = time.perf_counter()
    log = open(workdir / "sweep.log", "w")
    proc = subprocess.Popen([sys.executable, str(REPO / "sweep.py"), "-m", *overrides], cwd=workdir, stdout=log,
                            stderr=subprocess.STDOUT)
    root, cpu = psutil.Process(proc.pid), {}
    while proc.poll() is None:
        try:
            for p in [root, *root.children(recursive=True)]:
                with p.oneshot():
                    t = p.cpu_times()
                    cpu[p.pid] = t.user + t.system
        except psutil.Error:
            pass  # a process ended between the listing and the reading: its last reading stands
        time.sleep(0.5)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"sweep failed in {workdir}: see {workdir / 'sweep.log'}")
    return wall, sum(cpu.values())


def summary(workdir: Path) -> dict:
    import optuna
    from optuna.trial import TrialState

    from sweeps.search.storage import latest_study_name, open_storage

    storage = open_storage(str(workdir / "optuna-journal.log"))
    study = optuna.load_study(study_name=latest_study_name(storage), storage=storage)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    base = next((t for t in done if t.user_attrs.get("base")), None)
    return {"complete": len(done), "pruned": len(study.get_trials(states=(TrialState.PRUNED,))),
            "winner": study.best_trial.number, "winner_value": study.best_value,
            "winner_params": study.best_trial.params,
            "base_best": base.value if base else None,
            "base_last": base.intermediate_values[max(base.intermediate_values)] if base else None}


def held_out(workdir: Path, common: list[str], params: dict) -> dict[tuple[int, int], float]:
    """Test accuracy of one config per fresh (seed, data_seed) pair: the config as a one-point
    sweep (its own seed as the only choice), then `reproduce` on it."""
    import optuna
    from optuna.trial import TrialState

    from sweeps.search.storage import latest_study_name, open_storage

    fixed = {"seed": 0, **params}  # 0: conf/sweep.yaml's seed, the base config's
    workdir.mkdir()
    sweep(workdir, [*common, "search_space=none", "hydra.sweeper.n_trials=1", "hydra.sweeper.sampler=grid",
                    "hydra.sweeper.include_base=false", f"seed=choice({fixed.pop('seed')})",
                    *[f"{k}={v}" for k, v in fixed.items()], *REPRODUCE])
    storage = open_storage(str(workdir / "optuna-journal.log"))
    name = latest_study_name(storage)
    name = name if name.endswith("--reproduce") else name + "--reproduce"
    replicates = optuna.load_study(study_name=name, storage=storage).get_trials(states=(TrialState.COMPLETE,))
    return {(int(t.user_attrs["seed"]), int(t.user_attrs["data_seed"])): t.user_attrs["metrics"]["test_accuracy"]
            for t in replicates if "test_accuracy" in t.user_attrs.get("metrics", {})}


def held_out_table(rows: dict, scratch: Path, common: list[str]) -> dict:
    from analysis.stats import summarize

    new = rows["new defaults"]
    base = held_out(scratch / "held_out_base", common, {})
    winner = held_out(scratch / "held_out_winner", common, new["winner_params"])
    pairs = sorted(set(base) & set(winner))
    out = {"base": summarize(list(base.values())), "winner": summarize(list(winner.values())),
           "difference": summarize([winner[k] - base[k] for k in pairs]), "seed_pairs": [list(k) for k in pairs],
           "base_test": {f"{k[0]},{k[1]}": v for k, v in base.items()},
           "winner_test": {f"{k[0]},{k[1]}": v for k, v in winner.items()}}
    return out


def print_held_out(rows: dict) -> None:
    new, out = rows["new defaults"], rows["held_out"]

    def cell(x: dict) -> str:
        return f"{x['mean']:.4f} [{x['ci_low']:.4f}, {x['ci_high']:.4f}]"

    print(f"\nheld-out test accuracy over {out['difference']['n']} fresh (init, data-order) seed pairs, 95% t-intervals\n")
    print("| config | validation (the sweep's score) | test accuracy: mean [95% CI] | n |")
    print("|---|---|---|---|")
    print(f"| base config (#0) | {new['base_best']:.4f} | {cell(out['base'])} | {out['base']['n']} |")
    print(f"| winner (#{new['winner']}) | {new['winner_value']:.4f} | {cell(out['winner'])} | {out['winner']['n']} |")
    print(f"| winner - base, paired by seeds | {new['winner_value'] - new['base_best']:+.4f} | "
          f"{cell(out['difference'])} | {out['difference']['n']} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="sst2")
    p.add_argument("--train", type=int, default=1000)
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--out", type=Path, default=None, help="also write base_guard.json here")
    p.add_argument("--held-out-from", type=Path, default=None,
                   help="an earlier run's base_guard.json: skip the two sweeps, run the held-out check only")
    args = p.parse_args(argv)
    data = [f"data={args.data}", f"data.max_train_samples={args.train}"]
    if args.data == "sst2":
        data.append(f"data.path={REPO.parent / 'shared/data/sst2'}")
    rows = json.loads(args.held_out_from.read_text()) if args.held_out_from else {}
    with tempfile.TemporaryDirectory(prefix="base-guard-") as scratch:
        for arm, extra in (("old defaults", OLD), ("new defaults", [])):
            if arm in rows:
                continue
            workdir = Path(scratch) / arm.split()[0]
            workdir.mkdir()
            wall, cpu = sweep(workdir, [*data, f"hydra.sweeper.n_trials={args.trials}", *extra])
            rows[arm] = {**summary(workdir), "wall_s": wall, "cpu_s": cpu}
        rows["held_out"] = held_out_table(rows, Path(scratch), data)
    base = rows["new defaults"]
    print(f"{args.data}, {args.train} train rows, default search space, {args.trials} trials, sampler seed 0\n")
    print(f"base config (trial 0 of the new arm): last eval {base['base_last']:.4f}, best eval {base['base_best']:.4f}\n")
    print("| arm | complete / pruned | winner (trial) | winner's score | vs base (same rule) | wall s | CPU s |")
    print("|---|---|---|---|---|---|---|")
    for arm, r in ((a, rows[a]) for a in ("old defaults", "new defaults")):
        ref = base["base_last"] if arm == "old defaults" else base["base_best"]
        print(f"| {arm} | {r['complete']} / {r['pruned']} | #{r['winner']} | {r['winner_value']:.4f} | "
              f"{r['winner_value'] - ref:+.4f} | {r['wall_s']:.0f} | {r['cpu_s']:.0f} |")
    print("\nvs base: the winner's score minus the base config's under the arm's own scoring rule "
          "(old: last eval, new: best eval).")
    print_held_out(rows)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "base_guard.json").write_text(json.dumps(rows, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
