"""3. Pruning pays: the standard sweep (TPE, no pruning) against the same sweep with Hyperband
pruning (same sampler seed, same n_trials, same eval checkpoints), for each sampler seed of the
mode (full: 0, 1, 2). Measured: time from the first trial's start until the sweep first holds a
completed trial within 0.5 accuracy points of its own final best, and whether pruning lost best
accuracy.

One seed is a lottery: when the sampler happens to draw its best config among the first trials
(which nothing can prune: there is nothing to compare them with yet), both arms reach it at the
same moment. So the speed-up is the ratio of the mean times over the seeds, each seed shown. The
unpruned TPE sweeps are shared with benchmark 4 (`ctx.shared["tpe"]`), so the seeds cost nothing extra
there; they run one at a time here because their timing is read.
"""

from __future__ import annotations

import statistics

from common import Context, Section, SweepRun, fmt, md_table, run_sweep, std_overrides

TARGET = 2.0
TOLERANCE = 0.005  # 0.5 accuracy points


def time_to_near_best(run: SweepRun, tolerance: float = TOLERANCE) -> tuple[float | None, int | None]:
    """Seconds from the first trial start to the completion of the first trial within `tolerance` of
    the sweep's final best, and that trial's number."""
    best = run.best()
    if best is None:
        return None, None
    t0 = min(r.start for r in run.rows if r.start)
    hits = sorted((r.complete, r.number) for r in run.complete if r.value >= best - tolerance)
    return hits[0][0] - t0, hits[0][1]


def unpruned_tpe_runs(ctx: Context) -> dict[int, SweepRun]:
    """The no-pruning arm per sampler seed: seed 0 is the standard sweep, the others run here."""
    s = ctx.sizes
    runs = ctx.shared.setdefault("tpe", {0: ctx.shared["std"]})
    for seed in s.q_seeds:
        if seed not in runs:
            runs[seed] = run_sweep(ctx, f"tpe_s{seed}", std_overrides(s, seed=seed))
    return runs


def run_benchmark(ctx: Context) -> Section:
    s = ctx.sizes
    none_runs = unpruned_tpe_runs(ctx)
    factor = 3 if s.std_steps // s.std_eval_every >= 3 else 2
    kwargs = f"{{min_resource:{s.std_eval_every},max_resource:{s.std_steps},reduction_factor:{factor}}}"
    hb_runs = {seed: run_sweep(ctx, f"prune_hyperband_s{seed}", std_overrides(s, seed=seed, pruner="hyperband")
                               + [f"hydra.sweeper.pruner_kwargs={kwargs}"]) for seed in s.q_seeds}

    rows, per_seed = [], {}
    for seed in s.q_seeds:
        cells = {}
        for arm, run in (("none", none_runs[seed]), ("hyperband", hb_runs[seed])):
            t, number = time_to_near_best(run)
            span = max(r.complete for r in run.finished) - min(r.start for r in run.rows if r.start)
            cells[arm] = {"time_s": t, "trial": number, "best": run.best(), "wall_s": run.proc.wall_s, "span_s": span,
                          "trial_s": sum(r.duration for r in run.finished),
                          "pruned": sum(r.state == "PRUNED" for r in run.rows), "complete": len(run.complete)}
        none, hb = cells["none"], cells["hyperband"]
        speedup = none["time_s"] / hb["time_s"] if none["time_s"] and hb["time_s"] else None
        per_seed[seed] = {**cells, "speedup": speedup}
        for label, c in (("no pruning", none), ("Hyperband", hb)):
            rows.append([seed, label, f"{c['complete']} / {c['pruned']}", fmt(c["best"], 4),
                         f"{fmt(c['time_s'], 1)} (#{c['trial']})", fmt(c["trial_s"], 1), fmt(c["wall_s"], 1),
                         f"**{fmt(speedup)}x**" if label == "Hyperband" else ""])

    def mean(arm: str, key: str) -> float | None:
        vals = [per_seed[x][arm][key] for x in s.q_seeds if per_seed[x][arm][key] is not None]
        return statistics.fmean(vals) if len(vals) == len(s.q_seeds) else None

    t_none, t_hb = mean("none", "time_s"), mean("hyperband", "time_s")
    best_none, best_hb = mean("none", "best"), mean("hyperband", "best")
    wall_none, wall_hb = mean("none", "wall_s"), mean("hyperband", "wall_s")
    span_none, span_hb = mean("none", "span_s"), mean("hyperband", "span_s")
    speedup = t_none / t_hb if t_none and t_hb else None
    loss = best_none - best_hb if best_none is not None and best_hb is not None else None
    ok_speed = speedup is not None and speedup >= TARGET
    ok_acc = loss is not None and loss <= TOLERANCE
    early = [x for x in s.q_seeds if per_seed[x]["none"]["trial"] is not None
             and per_seed[x]["none"]["trial"] < s.tpe_startup]
    table = md_table(["sampler seed", "arm", "complete / pruned", "best eval acc", "s to within 0.5 pt of its best (trial)",
                      "trial-seconds", "sweep wall s", "speed-up"], rows)
    seeds = ", ".join(str(x) for x in s.q_seeds)
    body = (f"{s.std_trials} trials per sweep, TPE (n_startup_trials={s.tpe_startup}), sampler seed(s) {seeds}; eval "
            f"(= pruning checkpoint) every {s.std_eval_every} of {s.std_steps} steps; Hyperband `{kwargs}`. Time counts "
            f"from the first trial's start (start-up is the same for both arms).\n\n{table}\n\n"
            f"**Pruning speed-up: {fmt(speedup)}x** (mean time to within 0.5 pt of the best over the seeds: no pruning "
            f"{fmt(t_none, 1)}s, Hyperband {fmt(t_hb, 1)}s; {'meets' if ok_speed else 'misses'} >= {TARGET}x); best "
            f"accuracy {'kept' if ok_acc else 'lost'} (mean over seeds: no pruning {fmt(best_none, 4)}, Hyperband "
            f"{fmt(best_hb, 4)}, difference {fmt(loss, 4)}). The whole budget of {s.std_trials} trials: "
            f"{fmt(wall_none, 1)}s without pruning, {fmt(wall_hb, 1)}s with it "
            f"({fmt(wall_none / wall_hb if wall_none and wall_hb else None)}x).\n\n"
            f"Reading: Hyperband stops trials that trail their bracket at the first checkpoints, so the sweep spends "
            f"its time on promising configs. It cannot speed up finding a config drawn among the first, random "
            f"trials (nothing to compare them with yet, and they run in both arms with the same seed)"
            + (f": seed(s) {', '.join(map(str, early))} drew the best config there, so those seeds show about 1x."
               if early else "."))
    return Section("3. Pruning pays (Hyperband vs none)", body,
                   {"pruning_speedup": speedup, "pruning_best_kept": ok_acc, "pruning_best_none": best_none,
                    "pruning_best_hyperband": best_hb, "pruning_time_none_s": t_none, "pruning_time_hyperband_s": t_hb,
                    "pruning_wall_none_s": wall_none, "pruning_wall_hyperband_s": wall_hb,
                    "pruning_budget_speedup": span_none / span_hb if span_none and span_hb else None,
                    "pruning_per_seed": per_seed})
