"""3. Pruning pays: the standard sweep (TPE seed 0, no pruning) against the same sweep with Hyperband
pruning (same sampler seed, same n_trials, same eval checkpoints). Measured: time from the first
trial's start until the sweep first holds a completed trial within 0.5 accuracy points of its own
final best, and whether pruning lost best accuracy."""

from __future__ import annotations

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


def run_benchmark(ctx: Context) -> Section:
    s = ctx.sizes
    none: SweepRun = ctx.shared["std"]
    kwargs = f"{{min_resource:{s.std_eval_every},max_resource:{s.std_steps},reduction_factor:{3 if s.std_steps // s.std_eval_every >= 3 else 2}}}"
    hb = run_sweep(ctx, "prune_hyperband", std_overrides(s, pruner="hyperband") + [f"hydra.sweeper.pruner_kwargs={kwargs}"])
    rows, res = [], {}
    for label, run in (("no pruning (`pruner=none`)", none), ("Hyperband (`pruner=hyperband`)", hb)):
        t, number = time_to_near_best(run)
        trial_s = sum(r.duration for r in run.finished)
        rows.append([label, f"{len(run.complete)} / {sum(r.state == 'PRUNED' for r in run.rows)}", fmt(run.best(), 4),
                     f"{fmt(t, 1)} (#{number})", fmt(trial_s, 1), fmt(run.proc.wall_s, 1)])
        res[label] = (t, run.best())
    (t_none, best_none), (t_hb, best_hb) = res.values()
    speedup = t_none / t_hb if t_none and t_hb else None
    loss = (best_none - best_hb) if best_none is not None and best_hb is not None else None
    ok_speed = speedup is not None and speedup >= TARGET
    ok_acc = loss is not None and loss <= TOLERANCE
    table = md_table(["arm", "complete / pruned", "best eval acc", "s to within 0.5 pt of its best (trial)",
                      "trial-seconds", "sweep wall s"], rows)
    body = (f"{len(none.rows)} trials each, TPE seed 0, eval (= pruning checkpoint) every {s.std_eval_every} of "
            f"{s.std_steps} steps; Hyperband `{kwargs}`. Time counts from the first trial's start (start-up is the "
            f"same for both).\n\n{table}\n\n"
            f"**Pruning speed-up: {fmt(speedup)}x** ({'meets' if ok_speed else 'misses'} >= {TARGET}x); best accuracy "
            f"{'kept' if ok_acc else 'lost'} (no pruning {fmt(best_none, 4)}, Hyperband {fmt(best_hb, 4)}, "
            f"difference {fmt(loss, 4)}).\n\nReading: Hyperband stops trials that trail their bracket at the first "
            f"checkpoints, so the sweep spends its time on promising configs; the speed-up depends on how early the "
            f"good config is sampled and on how many checkpoints a trial has (few and cheap here).")
    return Section("3. Pruning pays (Hyperband vs none)", body,
                   {"pruning_speedup": speedup, "pruning_best_kept": ok_acc, "pruning_best_none": best_none, "pruning_best_hyperband": best_hb,
                    "pruning_time_none_s": t_none, "pruning_time_hyperband_s": t_hb,
                    "pruning_wall_none_s": none.proc.wall_s, "pruning_wall_hyperband_s": hb.proc.wall_s})
