"""3. Pruning pays: a sweep without pruning against the same sweep with Hyperband pruning, same
sampler seed and the same wall-clock budget, for each sampler seed of the mode (full: 0, 1, 2).

The budget is time, which is what pruning saves: the Hyperband arm gets `hydra.sweeper.timeout`
equal to the no-pruning arm's search time (and a trial cap it never reaches), so the time its
pruned trials free buys it more trials. Only trials that ended within the no-pruning arm's span
(first trial start to last trial end) count for it.

Measured per seed: the time from the first trial's start until the sweep first holds a completed
trial within 0.5 accuracy points of the no-pruning sweep's final best (time to target), and the
Hyperband arm's best within the budget (no loss of best accuracy means it is not lower). One seed
is a lottery: when the sampler draws its best config among the first trials, both arms reach it at
the same moment; so the speed-up is the ratio of the mean times over the seeds.

The sampler and trial length are sizes of the mode. With the random sampler (Hyperband as Li et
al. define it) both arms draw the same configs in the same order, so the difference is pruning
alone; with TPE the arms diverge after the first pruned trial. Beside the race, the report says
how well each eval checkpoint ranks the trials (rank correlation with the final accuracy, from the
no-pruning arm): pruning can only pay where an early checkpoint predicts the end; and the most this
Hyperband can speed a sweep up at all (`hyperband_ceiling`, from the measured cost of a trial per
step): pruning only pays as much as a pruned trial is cheaper than a full one.

With the standard sweep's sizes and TPE, the standard sweep is the seed-0 unpruned arm; with the
random sampler the unpruned arms are shared with benchmark 7 (pruning regret).
"""

from __future__ import annotations

import dataclasses
import math
import statistics

from common import Context, Section, Sizes, SweepRun, fmt, md_table, run_sweep, std_overrides

TARGET = 2.0
TOLERANCE = 0.005  # 0.5 accuracy points
TRIAL_CAP = 4      # the Hyperband arm may run up to this many times the no-pruning arm's trials
RANKS_WELL = 0.8   # a checkpoint whose rank correlation with the final accuracy reaches this ranks trials well


def arm_sizes(s: Sizes) -> Sizes:
    """The standard sweep's sizes with this benchmark's own trial length and count, where set."""
    return dataclasses.replace(s, std_steps=s.prune_steps or s.std_steps,
                               std_eval_every=s.prune_eval_every or s.std_eval_every,
                               std_trials=s.prune_trials or s.std_trials)


def shares_standard_sweep(s: Sizes) -> bool:
    return s.prune_sampler == "tpe" and arm_sizes(s) == s


def first_rung(s: Sizes) -> int:
    """The first eval checkpoint at or after `prune_first_rung` of the steps (earlier checkpoints rank
    the final accuracy poorly: see `rank_correlations`)."""
    a = arm_sizes(s)
    return math.ceil(s.prune_first_rung * a.std_steps / a.std_eval_every) * a.std_eval_every


def hyperband_kwargs(s: Sizes) -> str:
    """Hyperband from the first rung to the last step, keeping 1 / `prune_rf` at each rung."""
    return f"{{min_resource:{first_rung(s)},max_resource:{arm_sizes(s).std_steps},reduction_factor:{s.prune_rf}}}"


def span(run: SweepRun) -> float:
    """Seconds from the first trial's start to the last trial's end."""
    return max(r.complete for r in run.finished) - min(r.start for r in run.rows if r.start)


def time_to(run: SweepRun, target: float, budget_s: float | None = None) -> tuple[float | None, int | None]:
    """Seconds from the first trial start to the completion of the first trial scoring >= target
    (within `budget_s` of the first start, if given), and that trial's number."""
    t0 = min(r.start for r in run.rows if r.start)
    hits = sorted((r.complete - t0, r.number) for r in run.complete if r.value >= target
                  and (budget_s is None or r.complete - t0 <= budget_s))
    return hits[0] if hits else (None, None)


def best_within(run: SweepRun, budget_s: float) -> float | None:
    t0 = min(r.start for r in run.rows if r.start)
    values = [r.value for r in run.complete if r.complete - t0 <= budget_s]
    return max(values) if values else None


def rank_correlations(runs: list[SweepRun]) -> dict[int, float]:
    """Per eval step: Spearman's rank correlation between the completed trials' accuracy at that
    step and their final accuracy, averaged over the sweeps. It is how well a pruning rung at that
    step would rank the trials (1: it keeps exactly the ones that end best)."""
    from scipy.stats import spearmanr

    per_step: dict[int, list[float]] = {}
    for run in runs:
        done = [r for r in run.complete if r.intermediate]
        if len(done) < 3:
            continue
        finals = [r.value for r in done]
        for step in sorted(set.intersection(*(set(r.intermediate) for r in done))):
            at_step = [r.intermediate[step] for r in done]
            if len(set(at_step)) > 1 and len(set(finals)) > 1:
                per_step.setdefault(step, []).append(float(spearmanr(at_step, finals).statistic))
    return {step: statistics.fmean(rhos) for step, rhos in sorted(per_step.items())}


def trial_cost_fit(runs: list[SweepRun]) -> tuple[float, float] | None:
    """Seconds a trial costs as `fixed + per_step * last step`, fitted over the finished trials of
    `runs` (pruned ones end at their rung, complete ones at the last step); None without two
    different end steps to fit."""
    points = [(max(r.intermediate), r.duration) for run in runs for r in run.finished if r.intermediate]
    if len({x for x, _ in points}) < 2:
        return None
    slope, intercept = statistics.linear_regression([x for x, _ in points], [y for _, y in points])
    return intercept, slope


def hyperband_ceiling(first: int, max_steps: int, rf: int, eval_every: int, cost: tuple[float, float]) -> float:
    """Trials per hour of Optuna's Hyperband (min_resource=first, reduction_factor=rf) over those of
    no pruning, when every rung keeps exactly 1/rf of its trials: the most it can speed a sweep up.

    Brackets and their shares of the trials are Optuna's (`HyperbandPruner`); bracket b's rungs are
    at first * rf**(b + i); a rung is decided at the first eval at or after it, and one at or past
    the last step prunes nothing. The first trials of a bracket, promoted while it has nothing to
    compare them with, and the winner's place in the sequence only lower the speed-up further."""
    n_brackets = math.floor(math.log(max_steps / first, rf)) + 1
    shares = [math.ceil(n_brackets * rf ** (n_brackets - 1 - b) / (n_brackets - b)) for b in range(n_brackets)]

    def seconds(step: int) -> float:
        return cost[0] + cost[1] * step

    spent = 0.0
    for bracket, share in enumerate(shares):
        alive, expected, rung = 1.0, 0.0, first * rf ** bracket
        while (step := math.ceil(rung / eval_every) * eval_every) < max_steps:
            expected += alive * (1 - 1 / rf) * seconds(step)
            alive, rung = alive / rf, rung * rf
        spent += share * (expected + alive * seconds(max_steps))
    return seconds(max_steps) * sum(shares) / spent


def unpruned_runs(ctx: Context) -> dict[int, SweepRun]:
    """The no-pruning arm per sampler seed (seed 0 of the shared TPE runs is the standard sweep)."""
    s = ctx.sizes
    if shares_standard_sweep(s):
        runs = ctx.shared.setdefault("tpe", {0: ctx.shared["std"]})
        for seed in s.q_seeds:
            if seed not in runs:
                runs[seed] = run_sweep(ctx, f"tpe_s{seed}", std_overrides(s, seed=seed))
        return runs
    return {seed: run_sweep(ctx, f"prune_none_s{seed}", std_overrides(arm_sizes(s), sampler=s.prune_sampler, seed=seed))
            for seed in s.q_seeds}


def random_unpruned_runs(ctx: Context) -> dict[int, SweepRun]:
    """The no-pruning arm with the random sampler per sampler seed (benchmark 3's own where it uses
    the random sampler), shared by the benchmarks that compare pruned trials with their full runs."""
    s = ctx.sizes
    if "prune_none_random" not in ctx.shared:
        ctx.shared["prune_none_random"] = unpruned_runs(ctx) if s.prune_sampler == "random" else {
            seed: run_sweep(ctx, f"prune_none_random_s{seed}", std_overrides(arm_sizes(s), sampler="random", seed=seed))
            for seed in s.q_seeds}
    return ctx.shared["prune_none_random"]


def run_benchmark(ctx: Context) -> Section:
    s, a = ctx.sizes, arm_sizes(ctx.sizes)
    none_runs = random_unpruned_runs(ctx) if s.prune_sampler == "random" else unpruned_runs(ctx)
    kwargs = hyperband_kwargs(s)
    rows, per_seed, hb_runs = [], {}, {}
    for seed in s.q_seeds:
        none = none_runs[seed]
        budget = span(none)
        # the search clock starts a few seconds before the first trial (worker start-up): the trials
        # that end inside `budget` after the first start are the ones compared
        hb = run_sweep(ctx, f"prune_hyperband_s{seed}",
                       std_overrides(a, n_trials=TRIAL_CAP * a.std_trials, sampler=s.prune_sampler, seed=seed,
                                     pruner="hyperband")
                       + [f"hydra.sweeper.pruner_kwargs={kwargs}", f"hydra.sweeper.timeout={math.ceil(budget) + 5}"])
        hb_runs[seed] = hb
        target = none.best() - TOLERANCE
        cells = {}
        for arm, run in (("none", none), ("hyperband", hb)):
            counted = [r for r in run.finished if r.complete - min(x.start for x in run.rows if x.start) <= budget]
            t, number = time_to(run, target, budget)
            own_best = best_within(run, budget)
            t_own, n_own = time_to(run, own_best - TOLERANCE, budget) if own_best is not None else (None, None)
            cells[arm] = {"time_s": t, "trial": number, "best": own_best, "time_own_best_s": t_own,
                          "trial_own_best": n_own, "finished": len(counted),
                          "pruned": sum(r.state == "PRUNED" for r in counted),
                          "complete": sum(r.state == "COMPLETE" for r in counted)}
        n_cell, h_cell = cells["none"], cells["hyperband"]
        speedup = n_cell["time_s"] / h_cell["time_s"] if n_cell["time_s"] and h_cell["time_s"] else None
        per_seed[seed] = {**cells, "speedup": speedup, "budget_s": budget, "target": target}
        for label, c in (("no pruning", n_cell), ("Hyperband", h_cell)):
            reached = f"{fmt(c['time_s'], 1)} (#{c['trial']})" if c["time_s"] is not None else "not reached"
            rows.append([seed, label, f"{c['finished']}: {c['complete']} / {c['pruned']}", fmt(c["best"], 4), reached,
                         f"{fmt(c['time_own_best_s'], 1)} (#{c['trial_own_best']})",
                         f"**{fmt(speedup)}x**" if label == "Hyperband" else f"{budget:.0f} s budget"])

    reached_all = all(per_seed[x]["hyperband"]["time_s"] is not None for x in s.q_seeds)

    def mean(arm: str, key: str) -> float | None:
        vals = [per_seed[x][arm][key] for x in s.q_seeds if per_seed[x][arm][key] is not None]
        return statistics.fmean(vals) if len(vals) == len(s.q_seeds) else None

    t_none = mean("none", "time_s")
    # a seed where Hyperband never reached the target counts with the whole budget (a lower bound on
    # its time, so the speed-up is then an upper bound, and the verdict says the target was missed)
    t_hb = statistics.fmean(per_seed[x]["hyperband"]["time_s"] or per_seed[x]["budget_s"] for x in s.q_seeds)
    best_none, best_hb = mean("none", "best"), mean("hyperband", "best")
    speedup = t_none / t_hb if t_none and t_hb else None
    loss = best_none - best_hb if best_none is not None and best_hb is not None else None
    ok_speed = speedup is not None and speedup >= TARGET
    ok_acc = reached_all and loss is not None and loss <= TOLERANCE
    missed = [str(x) for x in s.q_seeds if per_seed[x]["hyperband"]["time_s"] is None]
    finished_none, finished_hb = mean("none", "finished"), mean("hyperband", "finished")
    table = md_table(["sampler seed", "arm", "trials in budget: complete / pruned", "best eval acc in budget",
                      "s to target (trial)", "s to within 0.5 pt of its own best (trial)", "speed-up"], rows)

    rhos = rank_correlations(list(none_runs[x] for x in s.q_seeds))
    rho_table = md_table(["eval step", *(f"{step} ({step / a.std_steps:.0%})" for step in rhos)],
                         [["rank correlation with the final accuracy", *(fmt(r) for r in rhos.values())]])
    good = next((step for step, r in rhos.items() if r >= RANKS_WELL and step < a.std_steps), None)
    rho_reading = (f"The first checkpoint that ranks the trials well (correlation >= {RANKS_WELL}) is step {good}, "
                   f"{good / a.std_steps:.0%} of the trial." if good else
                   f"No checkpoint before the last ranks the trials well (correlation >= {RANKS_WELL}): a rung "
                   f"there prunes partly on noise.")
    cost = trial_cost_fit(list(hb_runs.values()))
    ceiling = hyperband_ceiling(first_rung(s), a.std_steps, s.prune_rf, a.std_eval_every, cost) if cost else None
    ceiling_reading = "" if cost is None else (f"Ceiling: a trial cost {fmt(cost[0], 1)} s + {fmt(cost[1], 2)} s per step here (fitted over "
                       f"the Hyperband arms' finished trials: pruned ones stop at their rung). With every rung keeping "
                       f"exactly 1/{s.prune_rf}, this Hyperband runs at most **{fmt(ceiling)}x** the trials per hour "
                       f"of no pruning, which bounds its speed-up to the target; the first trials of each bracket "
                       f"(promoted while there is nothing to compare them with) and the winner's place in the "
                       f"sequence lower it further.")

    seeds = ", ".join(str(x) for x in s.q_seeds)
    sampler = (f"TPE (n_startup_trials={s.tpe_startup})" if s.prune_sampler == "tpe" else
               f"{s.prune_sampler} sampler (both arms draw the same configs in the same order)")
    body = (f"{sampler}, sampler seed(s) {seeds}; trials of {a.std_steps} steps with an eval (= pruning checkpoint) "
            f"every {a.std_eval_every} steps on {a.std_eval} rows. No-pruning arm: {a.std_trials} trials. Hyperband "
            f"arm: `{kwargs}`, the same sampler seed, and the same wall-clock budget (`hydra.sweeper.timeout` = the "
            f"no-pruning arm's time; only trials that ended within it count). Target: 0.5 points below the "
            f"no-pruning sweep's final best. Times count from each sweep's first trial start (start-up is the same "
            f"for both arms).\n\n{table}\n\n"
            f"**Pruning speed-up: {fmt(speedup)}x** (mean time to target over the seeds: no pruning {fmt(t_none, 1)}s, "
            f"Hyperband {fmt(t_hb, 1)}s; {'meets' if ok_speed else 'misses'} >= {TARGET}x)"
            + (f"; Hyperband did not reach the target within the budget for seed(s) {', '.join(missed)} (counted "
               f"as the whole budget)" if missed else "")
            + f". Best accuracy within the budget {'kept' if ok_acc else 'lost'} (mean over seeds: no pruning "
            f"{fmt(best_none, 4)}, Hyperband {fmt(best_hb, 4)}). In the same time Hyperband finished "
            f"{fmt(finished_hb, 1)} trials per seed against {fmt(finished_none, 1)}.\n\n"
            f"How well each checkpoint predicts the end (Spearman rank correlation over the no-pruning arm's "
            f"completed trials, mean over the seeds):\n\n{rho_table}\n\n{rho_reading}\n\n{ceiling_reading}\n\n"
            f"Reading: Hyperband stops trials that trail their bracket at a checkpoint, so the time a bad config would "
            f"have taken goes to new configs. It cannot speed up finding a config drawn among the first trials "
            f"(nothing to compare them with yet), and it prunes on noise where the checkpoint does not rank trials "
            f"as their final accuracy does.")
    return Section("3. Pruning pays (Hyperband vs none)", body,
                   {"pruning_speedup": speedup, "pruning_best_kept": ok_acc, "pruning_best_none": best_none,
                    "pruning_best_hyperband": best_hb, "pruning_time_none_s": t_none, "pruning_time_hyperband_s": t_hb,
                    "pruning_hyperband_kwargs": kwargs, "pruning_sampler": s.prune_sampler,
                    "pruning_trial_steps": a.std_steps, "pruning_rank_correlation": rhos,
                    "pruning_speedup_ceiling": ceiling, "pruning_trial_cost_s": cost and {"fixed": cost[0], "per_step": cost[1]},
                    "pruning_per_seed": per_seed})
