"""7. Pruning regret: what pruning costs beside what it saves, for the pruner settings a user can pick.

Each pruning arm is a real sweep (`python sweep.py -m`) with the random sampler at the same seed
and trial count as the no-pruning arm, so both draw the same configs (with several workers, not
always in the same order). The no-pruning arm is then the re-run of every pruned trial to its end
with the same params and seeds, matched param by param; a pruned trial with no twin there is re-run
to the end in a sweep of its own (`enqueue_trial`, no pruner).

Per arm and sampler seed:
- regret trials: pruned trials whose full run beat the best trial the arm kept;
- regret points: by how much the best of them beat it (accuracy points, 0 if none did);
- compute saved: 1 - optimizer steps the arm trained / steps of the same trials run to the end.

Scores are each trial's best eval (the product's `objective_at: best`), read from the intermediate
values, so pruned and kept trials are compared on the same footing. Optimizer steps are counted,
not seconds: the figure does not depend on what else ran on the machine.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from common import Context, Section, SweepRun, fmt, md_table, run_sweep, std_overrides
from pruning import arm_sizes, first_rung, hyperband_kwargs, random_unpruned_runs

ZERO_REGRET_SAVING = 0.40  # the bar: zero regret at >= 40% of the compute saved


@dataclass(frozen=True)
class PrunerArm:
    label: str
    pruner: str
    prune_after: float
    min_trials: int
    is_default: bool = False
    was_default: bool = False

    def overrides(self, ctx: Context, seed: int) -> list[str]:
        """The standard sweep's overrides with this arm's pruner in place of none."""
        mine = {"hydra.sweeper.pruner", "hydra.sweeper.prune_after", "hydra.sweeper.prune_min_trials"}
        out = [o for o in std_overrides(arm_sizes(ctx.sizes), sampler="random", seed=seed) if o.split("=")[0] not in mine]
        out += [f"hydra.sweeper.pruner={self.pruner}", f"hydra.sweeper.prune_after={self.prune_after}",
               f"hydra.sweeper.prune_min_trials={self.min_trials}"]
        if self.pruner == "hyperband":
            out.append(f"hydra.sweeper.pruner_kwargs={hyperband_kwargs(ctx.sizes)}")
        return out


def arms(ctx: Context) -> list[PrunerArm]:
    """The old defaults (median from the first eval), today's defaults, the two settings the
    choice was made between, and the paired test on eval rows; Hyperband's first rung is the
    pruning benchmark's."""
    a = arm_sizes(ctx.sizes)
    rung = first_rung(ctx.sizes) / a.std_steps
    return [PrunerArm("median from the first eval (old default)", "median", 0.0, 0, was_default=True),
            PrunerArm("median, prune_after 0.3, 4 finished first", "median", 0.3, 4),
            PrunerArm("median, prune_after 0.5, 4 finished first (default)", "median", 0.5, 4, is_default=True),
            PrunerArm(f"Hyperband from {rung:.0%}, 4 finished first", "hyperband", round(rung, 3), 4),
            PrunerArm("Wilcoxon on eval rows (p < 0.05), prune_after 0.3, 4 finished first", "wilcoxon", 0.3, 4)]


def best_eval(row) -> float | None:
    return max(row.intermediate.values()) if row.intermediate else row.value


def steps_run(row, full_steps: int) -> int:
    return max(row.intermediate) if row.state == "PRUNED" and row.intermediate else full_steps


def full_values(ctx: Context, name: str, arm_run: SweepRun, none: SweepRun) -> tuple[dict[int, float], int]:
    """Each pruned trial of `arm_run` run to its end: its counterpart in `none` (same params), else
    a real re-run with those params; and how many were re-run."""
    by_params = {tuple(sorted(r.params.items())): r for r in none.complete}
    out, missing = {}, []
    for row in arm_run.rows:
        if row.state != "PRUNED":
            continue
        twin = by_params.get(tuple(sorted(row.params.items())))
        if twin is not None:
            out[row.number] = best_eval(twin)
        else:
            missing.append(row)
    if missing:
        a = arm_sizes(ctx.sizes)
        rerun = run_sweep(ctx, f"{name}_rerun", std_overrides(a, n_trials=len(missing), sampler="random"),
                          enqueue=[r.params for r in missing], probe=False)
        rerun_by_params = {tuple(sorted(r.params.items())): r for r in rerun.complete}
        for row in missing:
            twin = rerun_by_params.get(tuple(sorted(row.params.items())))
            if twin is None:
                raise RuntimeError(f"{name}: pruned trial #{row.number} was not re-run to its end ({row.params})")
            out[row.number] = best_eval(twin)
    return out, len(missing)


def measure(ctx: Context, arm: PrunerArm, seed: int, none: SweepRun) -> dict[str, Any]:
    a = arm_sizes(ctx.sizes)
    name = f"regret_{arm.pruner}_{int(100 * arm.prune_after)}_{arm.min_trials}_s{seed}"
    run = run_sweep(ctx, name, arm.overrides(ctx, seed), probe=False)
    kept = [best_eval(r) for r in run.complete]
    kept_best = max(kept) if kept else None
    full, reruns = full_values(ctx, name, run, none)
    beat = [v for v in full.values() if kept_best is None or v > kept_best]
    trained = sum(steps_run(r, a.std_steps) for r in run.finished)
    return {"pruned": len(full), "complete": len(run.complete), "kept_best": kept_best,
            "unpruned_best": max(best_eval(r) for r in none.complete),
            "regret_trials": len(beat), "regret_points": 100 * (max(beat) - kept_best) if beat and kept_best is not None else 0.0,
            "compute_saved": 1 - trained / (a.std_steps * len(run.finished)), "reruns": reruns}


def run_benchmark(ctx: Context) -> Section:
    s, a = ctx.sizes, arm_sizes(ctx.sizes)
    none_runs = random_unpruned_runs(ctx)
    per_arm: dict[str, dict[int, dict[str, Any]]] = {}
    for arm in arms(ctx):
        per_arm[arm.label] = {seed: measure(ctx, arm, seed, none_runs[seed]) for seed in s.q_seeds}

    rows, summary = [], {}
    for arm in arms(ctx):
        cells = per_arm[arm.label]
        regret_trials = sum(c["regret_trials"] for c in cells.values())
        regret_points = statistics.fmean(c["regret_points"] for c in cells.values())
        worst_points = max(c["regret_points"] for c in cells.values())
        saved = statistics.fmean(c["compute_saved"] for c in cells.values())
        summary[arm.label] = {"regret_trials": regret_trials, "regret_points": regret_points,
                              "regret_points_worst": worst_points, "compute_saved": saved, "per_seed": cells,
                              "is_default": arm.is_default, "was_default": arm.was_default}
        per_seed = "; ".join(f"s{seed}: {c['complete']} kept / {c['pruned']} pruned, best {fmt(c['kept_best'], 4)}"
                             f" (unpruned {fmt(c['unpruned_best'], 4)}), {c['regret_trials']} would have beaten it"
                             for seed, c in cells.items())
        rows.append([f"**{arm.label}**" if arm.is_default else arm.label, regret_trials, fmt(regret_points, 2),
                     fmt(worst_points, 2), f"{100 * saved:.0f}%", per_seed])

    default = next(v for v in summary.values() if v["is_default"])
    zero = [label for label, v in summary.items() if v["regret_trials"] == 0]
    bar = [label for label in zero if summary[label]["compute_saved"] >= ZERO_REGRET_SAVING]
    reruns = sum(c["reruns"] for cells in per_arm.values() for c in cells.values())
    table = md_table(["pruner setting", "regret trials (sum over seeds)", "regret points (mean)", "regret points (worst seed)",
                      "compute saved (optimizer steps)", "per sampler seed"], rows)
    body = (f"Random sampler, sampler seed(s) {', '.join(str(x) for x in s.q_seeds)}; {a.std_trials} trials of "
            f"{a.std_steps} steps per arm, an eval (= pruning checkpoint) every {a.std_eval_every} steps on "
            f"{a.std_eval} rows; a trial's score is its best eval. Each pruned trial's full score is that of its twin "
            f"in the no-pruning arm (same params, same seeds, run to the end)"
            + (f"; {reruns} pruned trial(s) had no twin there (the workers drew configs in another order) and were "
               f"re-run to the end" if reruns else "") + ".\n\n" + table + "\n\n"
            + f"Zero regret: {'; '.join(zero) if zero else 'none'}. Zero regret with at least "
            f"{ZERO_REGRET_SAVING:.0%} of the steps saved: {'; '.join(bar) if bar else 'none'}. The default "
            f"(median, `prune_after: 0.5`, `prune_min_trials: 4`) has {default['regret_trials']} regret trial(s) here "
            f"and saves {100 * default['compute_saved']:.0f}% of the optimizer steps.\n\n"
            "Reading: a pruned trial saves the steps after its last checkpoint, so the saving is bounded by where "
            "pruning may start (`prune_after: 0.5` leaves at most half of a trial to save, and the median prunes "
            "about half of the trials it may prune); regret shows only where a pruned trial would have overtaken "
            "the kept best, which depends on how well the early checkpoints rank the trials on this data.")
    return Section("7. Pruning regret (every pruned trial run to its end)", body,
                   {"pruning_regret_trials": default["regret_trials"], "pruning_regret_points": default["regret_points"],
                    "pruning_compute_saved": default["compute_saved"], "pruning_regret_arms": summary})
