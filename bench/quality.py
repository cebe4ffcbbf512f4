"""4. Search quality at equal budget: best validation accuracy after N trials for TPE, random search
and the common hand-picked default (r=8, alpha=16, dropout 0.05, q/v, lr 1e-4 constant with
warmup), over several sampler seeds. TPE seed 0 is the standard sweep's first N trials (the same
sweep, same settings; with several seeds the others are benchmark 3's unpruned sweeps); the default is one config, trained once per seed (seed = init + dropout)."""

from __future__ import annotations

import statistics

from common import Context, Section, data_overrides, fmt, md_table, run_sweeps_parallel, std_overrides, train_overrides

DEFAULT = ["lora.r=8", "lora.lora_alpha=16", "lora.lora_dropout=0.05", "lora.target_modules=qv",
           "train.learning_rate=1e-4", "train.lr_scheduler_type=constant_with_warmup"]


def run_benchmark(ctx: Context) -> Section:
    s = ctx.sizes
    n = s.q_trials
    best: dict[str, list[float | None]] = {"TPE": [], "random": [], "hand-picked default": []}
    seeds = ",".join(str(x) for x in s.q_seeds)
    tpe = ctx.shared.get("tpe", {})  # benchmark 3's unpruned TPE sweeps (seed 0: the standard sweep)
    if "std" in ctx.shared:
        tpe.setdefault(0, ctx.shared["std"])
    specs = [(f"quality_{sampler}_s{seed}", std_overrides(s, n_trials=n, sampler=sampler, seed=seed))
             for seed in s.q_seeds for sampler in ("tpe", "random") if not (sampler == "tpe" and seed in tpe)]
    specs.append(("quality_default",
                  data_overrides(s.std_train, s.std_eval) + train_overrides(s, s.std_steps, s.std_eval_every)
                  + ["search_space=none", f"seed=choice({seeds})", "hydra.sweeper.sampler=grid",
                     f"hydra.sweeper.n_trials={len(s.q_seeds)}", "hydra.sweeper.pruner=none"] + DEFAULT))
    runs = run_sweeps_parallel(ctx, specs)  # accuracy only: two sweeps at a time is fine here
    runs.update({f"quality_tpe_s{seed}": run for seed, run in tpe.items()})
    for seed in s.q_seeds:
        best["TPE"].append(runs[f"quality_tpe_s{seed}"].best(first_n=n))
        best["random"].append(runs[f"quality_random_s{seed}"].best(first_n=n))
    by_seed = {r.params.get("seed"): r.value for r in runs["quality_default"].complete}
    best["hand-picked default"] = [by_seed.get(x) for x in s.q_seeds]

    rows, summary = [], {}
    for label, values in best.items():
        vals = [v for v in values if v is not None]
        mean = statistics.fmean(vals) if vals else None
        spread = statistics.stdev(vals) if len(vals) > 1 else None
        summary[label] = {"per_seed": values, "mean": mean, "std": spread}
        trials = n if label != "hand-picked default" else 1
        rows.append([label, trials, " / ".join(fmt(v, 4) for v in values), fmt(mean, 4), fmt(spread, 4),
                     f"{fmt(min(vals), 4)}-{fmt(max(vals), 4)}" if vals else "-"])
    table = md_table(["method", "trials per seed (N)", f"best eval acc per seed ({seeds})", "mean", "std",
                      "min-max"], rows)
    order = sorted(((v["mean"] or 0.0, k) for k, v in summary.items()), reverse=True)
    body = (f"N = {n} trials per seed, sampler seeds {seeds}; standard short trials ({s.std_steps} steps, "
            f"{s.std_eval} eval rows, no pruning; TPE with n_startup_trials={s.tpe_startup}). The default is a "
            f"single config (no search): one trial per seed. These sweeps read accuracy only, so they run two at a time.\n\n{table}\n\n"
            f"Reading: ranking by mean best accuracy: {' > '.join(f'{k} ({m:.4f})' for m, k in order)}"
            + (f"; the searched configs beat the hand-picked default by "
               f"{(max(summary['TPE']['mean'] or 0, summary['random']['mean'] or 0) - d) * 100:.1f} points "
               f"(lr 1e-4 is too low for trials this short)." if (d := summary['hand-picked default']['mean']) is not None
               and max(summary['TPE']['mean'] or 0, summary['random']['mean'] or 0) > d + 0.005 else
               "; no method is ahead by more than 0.5 points at this budget."))
    return Section("4. Search quality at equal budget", body,
                   {"quality": summary, "quality_n_trials": n, "quality_seeds": list(s.q_seeds)})
