"""The seed race against post-hoc reproduction: runs spent for a winner that is real.

    python bench/race_cost.py [--workdir DIR] [--train 1000] [--trials 12] [--race-runs 12]
                              [--top-k 3] [--n-seeds 3] [--out FILE]

One default-space sweep on SST-2 through the real CLI with `hydra.sweeper.race` (its top K configs
on fresh seed pairs, at most `--race-runs` runs, dropping a rival once a one-sided paired test says
it is worse). Then, on the same study, today's post-hoc `python -m analysis.reproduce --top-k K
--n-seeds S`: the same K configs on S fresh init seeds x S fresh data-order seeds each. Both score
every run on the held-out test split. With `--workdir` of a finished race sweep the sweep is reused.

The table: runs and trial-seconds each spends, the winner each picks, its validation and test mean
over fresh seeds with 95% t-intervals, and whether the winner is separated from every rival (the
race: all eliminated; reproduction: a one-sided paired t-test against the runner-up at alpha, over
the seed cells both ran).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def run(cmd: list[str], workdir: Path, log: str) -> None:
    with open(workdir / log, "w") as fh:
        if subprocess.call(cmd, cwd=workdir, stdout=fh, stderr=subprocess.STDOUT) != 0:
            raise SystemExit(f"failed: {' '.join(cmd)} (log {workdir / log})")


def replicates(study) -> dict[int, dict[tuple[int, int], tuple[float, float | None, float]]]:
    """config trial number -> (seed, data_seed) -> (validation value, test accuracy, seconds)."""
    from optuna.trial import TrialState

    out: dict[int, dict] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if "replicates_trial" not in t.user_attrs:
            continue
        key = (t.user_attrs.get("replicate_seed"), t.user_attrs.get("replicate_data_seed"))
        seconds = (t.datetime_complete - t.datetime_start).total_seconds()
        out.setdefault(t.user_attrs["replicates_trial"], {})[key] = (
            t.values[0], t.user_attrs.get("metrics", {}).get("test_accuracy"), seconds)
    return out


def arm_row(label: str, cells: dict[int, dict], winner: int, separated: str) -> list[str]:
    from analysis.stats import summarize

    runs = sum(len(c) for c in cells.values())
    seconds = sum(v[2] for c in cells.values() for v in c.values())
    val = summarize([v[0] for v in cells[winner].values()])
    test = summarize([v[1] for v in cells[winner].values() if v[1] is not None])
    return [label, str(runs), f"{seconds:.0f}", f"#{winner}", f"{val['mean']:.4f} [{val['ci_low']:.4f}, {val['ci_high']:.4f}] "
            f"(n={val['n']})", f"{test['mean']:.4f} [{test['ci_low']:.4f}, {test['ci_high']:.4f}] (n={test['n']})",
            separated]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, default=None, help="a finished race sweep to reuse (else a new one)")
    p.add_argument("--train", type=int, default=1000)
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--race-runs", type=int, default=12)
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--n-seeds", type=int, default=3)
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--out", type=Path, default=None, help="also write the table to this file")
    args = p.parse_args(argv)

    import optuna
    from scipy.stats import ttest_rel

    from sweeps.search.storage import RACE_SUFFIX, REPRODUCE_SUFFIX, latest_study_name, open_storage

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="race-cost-"))
    if args.workdir is None:
        run([sys.executable, str(REPO / "sweep.py"), "-m", "data=sst2", f"data.path={REPO.parent / 'shared/data/sst2'}",
             f"data.max_train_samples={args.train}", f"hydra.sweeper.n_trials={args.trials}",
             "hydra.sweeper.race.enabled=true", f"hydra.sweeper.race.top_k={args.top_k}",
             f"hydra.sweeper.race.max_runs={args.race_runs}", f"hydra.sweeper.race.alpha={args.alpha}"],
            workdir, "sweep.log")
    storage = open_storage(str(workdir / "optuna-journal.log"))
    name = latest_study_name(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    race = study.user_attrs.get("race")
    if race is None:
        raise SystemExit(f"{workdir}: the study {name!r} has no race outcome (run the sweep with hydra.sweeper.race)")
    names = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if name + REPRODUCE_SUFFIX not in names:
        run([sys.executable, "-m", "analysis.reproduce", "--top-k", str(args.top_k), "--n-seeds", str(args.n_seeds),
             "--design", "crossed", "--no-determinism-check", "--n-jobs", "2"], workdir, "reproduce.log")
    race_cells = replicates(optuna.load_study(study_name=name + RACE_SUFFIX, storage=storage))
    repro_cells = replicates(optuna.load_study(study_name=name + REPRODUCE_SUFFIX, storage=storage))

    means = {c: statistics.fmean(v[0] for v in cells.values()) for c, cells in repro_cells.items()}
    ranked = sorted(means, key=means.get, reverse=True)
    winner, runner_up = ranked[0], ranked[1]
    shared = sorted(set(repro_cells[winner]) & set(repro_cells[runner_up]))
    p_value = ttest_rel([repro_cells[winner][k][0] for k in shared], [repro_cells[runner_up][k][0] for k in shared],
                        alternative="greater").pvalue
    race_sep = ("yes: every rival eliminated" if race["survivors"] == [race["winner"]] else
                f"no: survivors {race['survivors']}")
    repro_sep = (f"{'yes' if p_value < args.alpha else 'no'}: p = {p_value:.3f} against #{runner_up} "
                 f"(one-sided paired t, {len(shared)} seed cells)")
    rows = [arm_row(f"race (top {args.top_k}, at most {args.race_runs} runs)", race_cells, race["winner"], race_sep),
            arm_row(f"reproduce (top {args.top_k}, {args.n_seeds} x {args.n_seeds} seeds)", repro_cells, winner, repro_sep)]
    header = ["after the search", "runs", "trial-seconds", "winner", "validation mean [95% CI] over fresh seeds",
              "held-out test mean [95% CI]", "winner separated at alpha"]
    table = "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                       *("| " + " | ".join(r) + " |" for r in rows)])
    text = (f"Study {name} in {workdir}: {len(study.trials)} search trials; the single best trial was "
            f"#{study.best_trial.number} at {study.best_value:.4f} on its own seed.\n\n{table}\n")
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
