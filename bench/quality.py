"""4. Search quality at equal compute: which config does each way of searching hand back, and how
good is it on data no arm looked at?

Arms, each with the same trial budget N and the same process plan (one single-threaded process per
core), for every sampler seed of the mode:
- TPE, random: our sweep without pruning;
- TPE + pruning: our sweep with the product's pruning defaults (median, `prune_after` 0.5, 4 trials
  finished first);
- TPE + race: our sweep with N - R search trials, then `hydra.sweeper.race` on R runs;
- HF: `Trainer.hyperparameter_search` (Optuna backend, TPE, the same space, `model_init`, its own
  pruning: Optuna's default MedianPruner fed by the Trainer's evals), two processes sharing one study;
- the project's defaults: the composed config, no search.

Each arm is judged by the held-out SST-2 test accuracy of the config it selects (its best trial; the
race winner for the race), averaged over fresh seeds: our `hydra.sweeper.reproduce` re-runs that
config on 2 x 2 fresh init and data-order seeds scored on `data.test_split`; the race's own runs are
on fresh seeds already. And by the wall time and CPU-seconds from launch until the arm first holds a
config within 0.5 points of the best validation accuracy any arm reached (a trial scoring there has
completed). Means over sampler seeds with 95% t-intervals.
"""

from __future__ import annotations

import statistics
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

from common import (BENCH, REPO, SST2_DIR, Context, Proc, Section, TrialRow, bench_env, data_overrides, fmt, log, md_table,
                    run, run_sweep, sst2_available, std_overrides, study_rows, train_overrides)

TOLERANCE = 0.005  # 0.5 accuracy points
WIDER_BANDS = (0.01, 0.02)
REPRODUCE = ["hydra.sweeper.reproduce.top_k=1", "hydra.sweeper.reproduce.n_seeds=2",
             "hydra.sweeper.reproduce.design=crossed", "hydra.sweeper.reproduce.determinism_check=false"]
PRUNING_DEFAULTS = ["hydra.sweeper.pruner=median", "hydra.sweeper.prune_after=0.5", "hydra.sweeper.prune_min_trials=4"]
ARMS = ("TPE", "random", "TPE + pruning", "TPE + race", "HF hyperparameter_search", "project defaults",
        "product default search")
ARM_KEYS = {"tpe": "TPE", "random": "random", "pruning": "TPE + pruning", "race": "TPE + race",
            "hf": "HF hyperparameter_search", "defaults": "project defaults", "product": "product default search"}
OURS = "TPE + pruning"  # the old default search (default_v1, median pruner), the one compared with HF's until 2026-12
PRODUCT = "product default search"  # what `python sweep.py -m` searches today: the prior-centred space, base first
# the product's own search settings: the keys std_overrides sets for like-with-like tables, left to conf/ here
PRODUCT_OWN = ("search_space", "hydra.sweeper.include_base", "hydra.sweeper.prune_after", "hydra.sweeper.prune_min_trials",
               "hydra.sweeper.pruner", "hydra.sweeper.sampler_kwargs", "hydra.sweeper.startup")
DEFAULT_SEED = 0  # conf/sweep.yaml's seed


@dataclass
class ArmRun:
    """One arm at one sampler seed: its search trials, when each ended, and the selected config's test scores."""

    trials: list[TrialRow]
    launched: float                      # epoch seconds
    procs: list[Proc]
    selected: dict[str, Any]
    test_scores: list[float] = field(default_factory=list)
    steps_trained: int = 0

    def time_to(self, target: float) -> tuple[float | None, float | None]:
        """(wall seconds, CPU seconds) from launch until a trial scoring >= target completed."""
        hits = sorted(t.complete for t in self.trials if t.state == "COMPLETE" and t.value is not None
                      and t.value >= target and t.complete)
        if not hits:
            return None, None
        return hits[0] - self.launched, sum(p.cpu_at(hits[0]) for p in self.procs)

    def search_spent(self) -> tuple[float, float]:
        """(wall seconds, CPU seconds) from launch to the last search trial's end (re-runs for the
        held-out score come after it and are not part of the search)."""
        end = max(t.complete for t in self.trials if t.complete)
        return end - self.launched, sum(p.cpu_at(end) for p in self.procs)


def mean_wall_to(cells: dict[int, ArmRun], target: float) -> float:
    """Mean over sampler seeds of the wall seconds to the target; a seed that never got there counts
    with its whole search (a lower bound on its time)."""
    walls = []
    for r in cells.values():
        wall, _ = r.time_to(target)
        walls.append(wall if wall is not None else r.search_spent()[0])
    return statistics.fmean(walls)


def steps_of(rows: list[TrialRow], full: int) -> int:
    return sum(max(r.intermediate) if r.state == "PRUNED" and r.intermediate else full
               for r in rows if r.state in ("COMPLETE", "PRUNED"))


def test_scores(rows: list[TrialRow], of_trial: int | None = None) -> list[float]:
    return [r.attrs["metrics"]["test_accuracy"] for r in rows if r.state == "COMPLETE"
            and "test_accuracy" in r.attrs.get("metrics", {})
            and (of_trial is None or r.attrs.get("replicates_trial") == of_trial)]


def our_arm(ctx: Context, name: str, overrides: list[str], steps: int) -> ArmRun:
    run_ = run_sweep(ctx, name, overrides, probe=False)
    best = max(run_.complete, key=lambda r: r.value)
    if "hydra.sweeper.race.enabled=true" in overrides:
        race = study_rows(run_.workdir, name + "--race")
        from optuna import load_study

        sys.path.insert(0, str(REPO))
        from sweeps.search.storage import open_storage

        outcome = load_study(study_name=name, storage=open_storage(None, cwd=run_.workdir)).user_attrs["race"]
        winner = next(r for r in run_.rows if r.number == outcome["winner"])
        return ArmRun(run_.rows, run_.proc.started, [run_.proc], winner.params, test_scores(race, winner.number),
                      steps_of(run_.rows, steps) + steps * len([r for r in race if r.state == "COMPLETE"]))
    return ArmRun(run_.rows, run_.proc.started, [run_.proc], best.params,
                  test_scores(study_rows(run_.workdir, name + "--reproduce")), steps_of(run_.rows, steps))


def held_out_of(ctx: Context, name: str, params: dict[str, Any]) -> tuple[list[float], TrialRow, Proc]:
    """A config's test scores over fresh seeds, through our sweep: the config as the one base trial,
    then `reproduce` on it."""
    s = ctx.sizes
    fixed = {"seed": DEFAULT_SEED, **params}
    # a one-point space (the sweep refuses an empty one): the config's own seed as the only choice
    overrides = (data_overrides(s.std_train, s.std_eval) + train_overrides(s, s.std_steps, s.std_eval_every)
                 + ["search_space=none", "hydra.sweeper.n_trials=1", "hydra.sweeper.pruner=none",
                    "hydra.sweeper.sampler=grid", "hydra.sweeper.include_base=false", "hydra.sweeper.objective_at=last",
                    f"seed=choice({fixed.pop('seed')})"] + [f"{k}={v}" for k, v in fixed.items()] + REPRODUCE)
    run_ = run_sweep(ctx, name, overrides, probe=False)
    return test_scores(study_rows(run_.workdir, name + "--reproduce")), run_.complete[0], run_.proc


def hf_arm(ctx: Context, seed: int) -> ArmRun:
    """HF's search on the same plan as ours: one single-threaded process per core, one shared study."""
    import os

    s = ctx.sizes
    workdir = ctx.ws.new(f"quality_hf_s{seed}")
    n_procs = max(1, min(os.cpu_count() or 1, s.q_trials))
    per_proc = [s.q_trials // n_procs + (i < s.q_trials % n_procs) for i in range(n_procs)]
    data = ["--data-dir", str(SST2_DIR)] if sst2_available() else []
    n_train = s.std_train if sst2_available() else min(s.std_train, 1200)
    n_eval = s.std_eval if sst2_available() else min(s.std_eval, 300)
    journal = workdir / "hf-journal.log"
    procs: list[Proc] = []

    def one(i: int) -> None:
        cmd = [sys.executable, str(BENCH / "hf_search.py"), "--n-trials", str(per_proc[i]),
               "--sampler-seed", str(1000 * seed + i), "--pruner", "median", "--storage", str(journal),
               "--study-name", "hf", *data, "--max-train", str(n_train), "--max-eval", str(n_eval),
               "--max-steps", str(s.std_steps), "--eval-every", str(s.std_eval_every), "--batch-size",
               str(s.batch_size), "--max-len", str(s.max_len), "--output-dir", str(workdir / f"out{i}")]
        procs.append(run(cmd, workdir, f"hf_search_{i}", env=bench_env(threads=1)))

    log(f"quality: HF hyperparameter_search, {s.q_trials} trials in {n_procs} process(es), sampler seed {seed}")
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n_procs) if per_proc[i]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if len(procs) != len(threads):
        raise RuntimeError(f"quality: an HF search process failed (logs in {workdir})")
    trials = [t for p in procs for t in p.json_line("HF_RESULT ")["trials"]]
    unique = {t["number"]: t for t in trials}.values()  # each process lists the shared study's trials
    rows = [TrialRow(t["number"], t["state"], t["value"], t["params"], t["complete"] - t["seconds"], t["complete"],
                     {}, {int(k): v for k, v in t["intermediate"].items()}) for t in unique]
    best = max((r for r in rows if r.state == "COMPLETE"), key=lambda r: r.value)
    return ArmRun(rows, min(p.started for p in procs), procs, best.params, steps_trained=steps_of(rows, s.std_steps))


def chosen_arms(spec: str) -> tuple[str, ...]:
    """The arms `--set q_arms=` names (comma-separated keys of ARM_KEYS, or `all`), in table order."""
    if spec == "all":
        return ARMS
    keys = [k.strip() for k in spec.split(",")]
    unknown = [k for k in keys if k not in ARM_KEYS]
    if unknown:
        raise SystemExit(f"--set q_arms={spec}: unknown arm {', '.join(unknown)}; allowed: all or {', '.join(ARM_KEYS)}")
    return tuple(a for a in ARMS if a in {ARM_KEYS[k] for k in keys})


def run_benchmark(ctx: Context) -> Section:
    s = ctx.sizes
    n, steps = s.q_trials, s.std_steps
    race_runs = max(4, n // 3)  # the race needs two rounds of its top 2
    arms = chosen_arms(s.q_arms)
    runs: dict[str, dict[int, ArmRun]] = {arm: {} for arm in arms}
    for seed in s.q_seeds:
        base = lambda sampler, trials=n: std_overrides(s, n_trials=trials, sampler=sampler, seed=seed) + REPRODUCE  # noqa: E731
        if "TPE" in runs:
            runs["TPE"][seed] = our_arm(ctx, f"quality_tpe_s{seed}", base("tpe"), steps)
        if "random" in runs:
            runs["random"][seed] = our_arm(ctx, f"quality_random_s{seed}", base("random"), steps)
        if "TPE + pruning" in runs:
            runs["TPE + pruning"][seed] = our_arm(ctx, f"quality_tpe_pruned_s{seed}", [
                o for o in base("tpe") if o.split("=")[0] not in {p.split("=")[0] for p in PRUNING_DEFAULTS}]
                + PRUNING_DEFAULTS, steps)
        if PRODUCT in runs:  # scored at its last eval as every other arm is (like with like)
            runs[PRODUCT][seed] = our_arm(ctx, f"quality_product_s{seed}", [
                o for o in base("tpe") if o.split("=")[0] not in PRODUCT_OWN], steps)
        if "TPE + race" in runs:
            runs["TPE + race"][seed] = our_arm(ctx, f"quality_tpe_race_s{seed}", std_overrides(
                s, n_trials=max(2, n - race_runs), sampler="tpe", seed=seed) + [
                "hydra.sweeper.race.enabled=true", "hydra.sweeper.race.top_k=2",
                f"hydra.sweeper.race.max_runs={race_runs}"], steps)
        if "HF hyperparameter_search" in runs:
            hf = hf_arm(ctx, seed)
            hf.test_scores, _, _ = held_out_of(ctx, f"quality_hf_heldout_s{seed}", hf.selected)
            runs["HF hyperparameter_search"][seed] = hf
    if "project defaults" in runs:  # the project's defaults: one config, no search (its sampler seed changes nothing)
        scores, trial, proc = held_out_of(ctx, "quality_defaults", {})
        for seed in s.q_seeds:
            runs["project defaults"][seed] = ArmRun([trial], proc.started, [proc], {}, scores, steps)

    best_known = max(t.value for arm in runs.values() for r in arm.values() for t in r.trials
                     if t.state == "COMPLETE" and t.value is not None)
    target = best_known - TOLERANCE
    sys.path.insert(0, str(REPO))
    from analysis.stats import summarize

    rows, summary = [], {}
    for arm in arms:
        cells = runs[arm]
        per_seed_test = [statistics.fmean(r.test_scores) if r.test_scores else None for r in cells.values()]
        test = summarize([v for v in per_seed_test if v is not None])
        times = [r.time_to(target) for r in cells.values()]
        wall = mean_wall_to(cells, target)
        # a seed that never reached the target counts with its whole search (a lower bound on its time)
        cpu = [t[1] if t[1] is not None else r.search_spent()[1] for t, r in zip(times, cells.values())]
        reached = sum(t[0] is not None for t in times)
        val = [max((t.value for t in r.trials if t.state == "COMPLETE"), default=None) for r in cells.values()]
        summary[arm] = {"test": test, "test_per_seed": per_seed_test, "time_to_target_s": wall,
                        "cpu_to_target_s": statistics.fmean(cpu), "reached": reached, "best_val_per_seed": val,
                        "trial_equivalents": statistics.fmean(r.steps_trained / steps for r in cells.values()),
                        "selected": [r.selected for r in cells.values()]}
        rows.append([arm, fmt(summary[arm]["trial_equivalents"], 1),
                     " / ".join(fmt(v, 4) for v in val), " / ".join(fmt(v, 4) for v in per_seed_test),
                     f"**{fmt(test['mean'], 4)}** " + ("(one config selected at every sampler seed: no spread to "
                                                      "take an interval over)" if test.get("no_variation") else
                                                      f"[{fmt(test['ci_low'], 4)}, {fmt(test['ci_high'], 4)}]"),
                     f"{fmt(wall, 0)} ({reached}/{len(times)})", fmt(statistics.fmean(cpu), 0)])
    hf_key = "HF hyperparameter_search"
    ours = PRODUCT if PRODUCT in runs else OURS
    compared = hf_key in runs and ours in runs
    ratio = summary[hf_key]["time_to_target_s"] / summary[ours]["time_to_target_s"] if compared else None
    # the 0.5-point band is a row or two of the eval set wide: how the ratio moves with the band
    wider = {band: mean_wall_to(runs[hf_key], best_known - band) / mean_wall_to(runs[ours], best_known - band)
             for band in WIDER_BANDS} if compared else {}
    cpu_ratio = summary[hf_key]["cpu_to_target_s"] / summary[ours]["cpu_to_target_s"] if compared else None
    seeds = ", ".join(str(x) for x in s.q_seeds)
    table = md_table(["arm", "trials run (full-trial equivalents)", f"best validation acc per seed ({seeds})",
                      "held-out test acc of its selected config, per seed", "held-out test acc: mean [95% CI]",
                      "s from launch to within 0.5 pt (seeds reached)", "CPU-s to within 0.5 pt"], rows)
    order = sorted(((v["test"]["mean"], k) for k, v in summary.items() if v["test"]["n"]), reverse=True)
    body = (f"N = {n} trials per arm and sampler seed ({seeds}); trials of {steps} steps, an eval every "
            f"{s.std_eval_every} steps on {s.std_eval} validation rows; the race arm searches {max(2, n - race_runs)} "
            f"trials and races the top 2 on {race_runs} runs. Held-out: the selected config re-run on 2 x 2 fresh "
            f"seeds (the race: its runs of the winner), scored on the whole test split. Target: the best validation "
            f"accuracy any trial reached ({fmt(best_known, 4)}) less 0.5 points; an arm that never got there counts "
            f"with its whole search. Arms run one at a time.\n\n{table}\n\n"
            f"Ranking by held-out test accuracy: {' > '.join(f'{k} ({m:.4f})' for m, k in order)}. "
            + (f"Time to target, HF over ours ({ours}): **{fmt(ratio)}x** wall, {fmt(cpu_ratio)}x CPU-seconds; "
               + ", ".join(f"within {100 * b:g} point{'s' if b != 0.01 else ''} {fmt(r)}x" for b, r in wider.items())
               + " wall (`bench/quality_tolerance.py WORKDIR` splits these into trials needed and seconds per trial). "
               if compared else f"(HF's arm or ours was not run: --set q_arms={s.q_arms}.) ")
            + "HF loads and quantises the base model in every trial (`model_init`); ours keeps it warm in each worker. "
            f"{PRODUCT}: `python sweep.py -m` as it ships (search_space=default, the base config first, the median "
            "pruner from half the steps after 4 trials, informed start-up: the first 10 trials, the base config among them, "
            "are the same at every sampler seed), scored at its last eval like the other arms.")
    return Section("4. Search quality at equal budget", body,
                   {"quality": summary, "quality_n_trials": n, "quality_seeds": list(s.q_seeds),
                    "quality_target": target, "time_to_target_ratio_vs_hf": ratio, "time_to_target_ours": ours,
                    "time_ratio_vs_hf_by_band": {f"{100 * b:g}": r for b, r in wider.items()},
                    "cpu_to_target_ratio_vs_hf": cpu_ratio})
