"""5. Worker scaling on CPU: 1 worker x 2 torch threads against 2 workers x 1 thread on a 2-core
machine, running exactly the same trials. The standard sweep runs our default plan (one
single-threaded worker per core); this benchmark adds the other plan, its study pre-filled with the
standard sweep's params."""

from __future__ import annotations

from common import Context, Section, SweepRun, fmt, md_table, median, run_sweep, std_overrides


def run_benchmark(ctx: Context) -> Section:
    s = ctx.sizes
    std: SweepRun = ctx.shared["std"]
    other_jobs = 1 if std.plan != "1 x 2" else 2
    other = run_sweep(ctx, "scale_other", std_overrides(s, n_jobs=other_jobs), enqueue=[r.params for r in std.rows])
    ctx.shared["scale_other"] = other
    runs = {std.plan: std, other.plan: other}
    one, two = runs.get("1 x 2"), runs.get("2 x 1")
    if one is None or two is None:
        raise RuntimeError(f"expected plans 1 x 2 and 2 x 1 on a 2-core machine, got {sorted(runs)}")

    def row(run: SweepRun) -> list[str]:
        firsts: dict[object, int] = {}
        for r in run.finished:  # each worker's first trial pays its lazy imports and model load
            firsts.setdefault(r.attrs.get("worker_pid"), r.number)
        durations = [r.duration for r in run.finished if r.number not in firsts.values()] or \
            [r.duration for r in run.finished]
        label = run.plan + (" (default)" if run is std else f" (`hydra.sweeper.n_jobs={other_jobs}`)")
        return [label, str(len(run.finished)), fmt(run.proc.wall_s, 1), f"{run.trials_per_hour():.0f}",
                f"{run.steady_trials_per_hour():.0f}", fmt(median(durations), 1)]

    ratio = two.trials_per_hour() / one.trials_per_hour()
    steady = two.steady_trials_per_hour() / one.steady_trials_per_hour()
    table = md_table(["workers x threads", "trials", "wall s", "trials / hour (end to end)",
                      "trials / hour (first start to last end)", "median s / warm trial (per worker)"],
                     [row(one), row(two)])
    better = "2 workers x 1 thread" if ratio > 1 else "1 worker x 2 threads"
    body = (f"{table}\n\nReading: 2x1 / 1x2 = {ratio:.2f}x end to end ({steady:.2f}x steady state): "
            f"{better} gets more trials per hour here; each process also holds its own base model (see 6.). "
            f"This is why the default CPU plan is one single-threaded worker per core.")
    return Section("5. Worker scaling on CPU", body,
                   {"scaling_ratio_2x1_vs_1x2": ratio, "scaling_ratio_steady": steady,
                    "trials_per_hour_1x2": one.trials_per_hour(), "trials_per_hour_2x1": two.trials_per_hour()})
