"""Is the sweep's winner at least the config the user started from? Old defaults against new.

    python bench/base_guard.py [--train 1000] [--trials 10] [--data sst2] [--out DIR]

Two default-space sweeps through the real CLI, same data, same sampler seed, same worker plan:
- old: sampled configs only, each scored at its last eval, the median pruner acting from step 1
  after 2 finished trials (the defaults before include_base / objective_at / prune_after);
- new: today's defaults (the base config as trial 0, best eval with its adapter, no pruning
  before half a trial and 4 finished trials).
The base config's own score comes from the new arm's trial 0 (its last and its best eval).
Prints one table; wall time and CPU-seconds (this process's children) per arm.
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

OLD = ["hydra.sweeper.include_base=false", "hydra.sweeper.objective_at=last", "hydra.sweeper.prune_after=0",
       "hydra.sweeper.prune_min_trials=0", "hydra.sweeper.pruner_kwargs={n_startup_trials: 2, n_warmup_steps: 1}"]


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

    from sweeps.storage import latest_study_name, open_storage

    storage = open_storage(str(workdir / "optuna-journal.log"))
    study = optuna.load_study(study_name=latest_study_name(storage), storage=storage)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    base = next((t for t in done if t.user_attrs.get("base")), None)
    return {"complete": len(done), "pruned": len(study.get_trials(states=(TrialState.PRUNED,))),
            "winner": study.best_trial.number, "winner_value": study.best_value,
            "winner_params": study.best_trial.params,
            "base_best": base.value if base else None,
            "base_last": base.intermediate_values[max(base.intermediate_values)] if base else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="sst2")
    p.add_argument("--train", type=int, default=1000)
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--out", type=Path, default=None, help="also write results.json here")
    args = p.parse_args(argv)
    common = [f"data={args.data}", f"data.max_train_samples={args.train}", f"hydra.sweeper.n_trials={args.trials}"]
    if args.data == "sst2":
        common.append(f"data.path={REPO.parent / 'shared/data/sst2'}")
    rows = {}
    with tempfile.TemporaryDirectory(prefix="base-guard-") as scratch:
        for arm, extra in (("old defaults", OLD), ("new defaults", [])):
            workdir = Path(scratch) / arm.split()[0]
            workdir.mkdir()
            wall, cpu = sweep(workdir, common + extra)
            rows[arm] = {**summary(workdir), "wall_s": wall, "cpu_s": cpu}
    base = rows["new defaults"]
    print(f"{args.data}, {args.train} train rows, default search space, {args.trials} trials, sampler seed 0\n")
    print(f"base config (trial 0 of the new arm): last eval {base['base_last']:.4f}, best eval {base['base_best']:.4f}\n")
    print("| arm | complete / pruned | winner (trial) | winner's score | vs base (same rule) | wall s | CPU s |")
    print("|---|---|---|---|---|---|---|")
    for arm, r in rows.items():
        ref = base["base_last"] if arm == "old defaults" else base["base_best"]
        print(f"| {arm} | {r['complete']} / {r['pruned']} | #{r['winner']} | {r['winner_value']:.4f} | "
              f"{r['winner_value'] - ref:+.4f} | {r['wall_s']:.0f} | {r['cpu_s']:.0f} |")
    print("\nvs base: the winner's score minus the base config's under the arm's own scoring rule "
          "(old: last eval, new: best eval).")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "base_guard.json").write_text(json.dumps(rows, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
