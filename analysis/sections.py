"""Report sections: turn a study's frames and statistics into document blocks with plain sentences."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from analysis.context import ReportData
from analysis.document import Block, Bullets, Callout, Heading, Image, Paragraph, Table, fmt
from analysis.frames import param_columns
from analysis.reproducibility import (crossed_grids, determinism_check, determinism_of, environment_table, fresh,
                                      held_out, lead_significance, per_config_summary)
from analysis.stats import (expected_max, expected_max_std, kendall_min_p, rank_stability, seed_variance_components,
                            variance_by_seed_kind)
from sweeps.tracking.redact import scrub_text

LEADERBOARD_SIZE = 10
FigureResult = Path | str  # the PNG written, or why it was skipped

# Section headings, shared with tests so a renamed heading fails loudly.
SUMMARY = "Summary"
LEADERBOARD = "Leaderboard"
IMPORTANCE = "Hyperparameter importance"
FIGURES = "Figures"
MORE_TRIALS = "Would more trials help?"
REPRODUCIBILITY = "Reproducibility"
WINNERS_CURSE = "Sweep-time score vs reproduced mean (winner's curse)"
RANK_STABILITY = "Rank stability"
SIGNIFICANCE = "Is the winner's lead significant?"
SEED_KINDS_HEADING = "Variance by source of randomness"
DETERMINISM = "Determinism check"
SKIPPED = "Skipped figures"


def _pts(delta: float, scale: float, signed: bool = True) -> str:
    """A difference in metric units, plus percentage points for fractional metrics."""
    if not math.isfinite(delta):
        return "–"
    sign = "+" if signed else ""
    return f"{delta:{sign}.4g} ({delta * scale:{sign}.2f} points)" if scale == 100.0 else f"{delta:{sign}.4g}"


def _figure(result: FigureResult | None, caption: str) -> Block:
    if isinstance(result, Path):
        return Image(result, caption)
    return Paragraph(f"*{caption}: skipped — {result or 'not produced'}.*")


def _params_of(row: pd.Series) -> dict[str, object]:
    return {c[len("param."):]: row[c] for c in row.index if c.startswith("param.") and pd.notna(row[c])}


def _interval(s: Mapping[str, object]) -> str:
    """A mean with its 95% interval and n, or "no variation seen in n runs" (never a zero-width interval)."""
    n = int(s["n"])
    low, high = float(s["ci_low"]), float(s["ci_high"])
    if s.get("no_variation") or (n > 1 and not (math.isfinite(low) and high > low)):
        return f"**{fmt(s['mean'])}** (no variation seen in {n} runs)"
    if not math.isfinite(low):
        return f"**{fmt(s['mean'])}** (n = {n}, no interval)"
    return f"**{fmt(s['mean'])}** (95% CI {fmt(low)} to {fmt(high)}, n = {n})"


def _seed_callout(d: ReportData) -> Block | None:
    if not d.seed_tuned:
        return None
    best = d.best()
    if best is None:
        return Callout("The seed is part of the search space, so any best trial will be optimistically biased.")
    text = (f"The seed was tuned as a hyperparameter, so the sweep-time best ({d.metric} = {fmt(best['value'])}, "
            f"trial #{int(best['number'])}) is optimistically biased: part of its lead is a lucky seed.")
    table = per_config_summary(d.reps, d.maximize, d.tuned_seeds)
    mine = table[table["config"] == int(best["number"])]
    if len(mine):
        s = mine.iloc[0]
        text += (f" Reproduced mean over {int(s['n'])} replicate(s) that re-drew both of the trial's seeds: "
                 f"{_interval(s)} ± {fmt(s['std'])} "
                 f"(sweep-time {fmt(best['value'])}; replicates that kept a tuned seed and "
                 "determinism re-runs are left out, they carry the selection's luck).")
    else:
        text += " No reproduced runs of this trial exist yet: re-run it on at least 5 new seeds before quoting it."
    return Callout(text)


def summary(d: ReportData, storage_label: str) -> list[Block]:
    """Study, objective, trial counts, best trial (params + MLflow run), failures, search space."""
    states = d.frame["state"].value_counts() if not d.frame.empty else pd.Series(dtype=int)
    directions = ", ".join(d.directions)
    items = [f"Study: `{d.name}`", f"Storage: `{storage_label}`",
             f"Objective: `{d.metric}` ({d.directions[0]})"]
    if len(d.directions) > 1:
        items.append(f"Directions (objective, trainable parameters): {directions}")
    items.append(f"Trials: {len(d.frame)} total — {int(states.get('COMPLETE', 0))} complete, "
                 f"{int(states.get('PRUNED', 0))} pruned, {int(states.get('FAIL', 0))} failed, "
                 + (f"{int(states['SKIPPED'])} skipped (estimated over max_memory_gb), " if states.get("SKIPPED") else "")
                 + f"{int(states.get('RUNNING', 0)) + int(states.get('WAITING', 0))} running/waiting")
    if d.attrs.get("mlflow_experiment_name") or d.attrs.get("mlflow_parent_run_id"):
        get = d.attrs.get
        items.append(f"MLflow: experiment `{get('mlflow_experiment_name', '–')}`, parent run "
                     f"`{get('mlflow_parent_run_id', '–')}`, tracking `{get('mlflow_tracking_uri', '–')}`")
    blocks: list[Block] = [Heading(SUMMARY), Bullets(tuple(items))]
    best = d.best()
    race = d.attrs.get("race")
    if race:
        test = (f"; held-out test mean {fmt(race['test_mean'])} [{fmt(race['test_ci_low'])}, {fmt(race['test_ci_high'])}] "
                f"(n = {race['n']})"
                if race.get("test_mean") is not None and race["test_mean"] == race["test_mean"] else "")
        blocks.append(Paragraph(
            f"**Winner (seed race): trial #{race['winner']}**, {d.metric} mean over {race['n']} fresh seed pairs "
            f"{_interval(race)}{test}"
            + (f" (optimistic: picked as the best of {len(race['survivors'])} survivors on these same runs)"
               if race.get("mean_optimistic", len(race["survivors"]) > 1) else "")
            + f". The single best trial, #{race['best_single_trial']}, scored {fmt(race['best_single_value'])} on its "
            f"one seed. {race['runs']} race runs; survivors {race['survivors']}, eliminated (config: round) "
            f"{race['eliminated'] or 'none'}, from round 3 on by a one-sided test against the leader with the "
            "variance pooled over survivors, Holm across rivals, alpha split over the rounds tested."))
    if best is None:
        blocks.append(Paragraph("No completed trial yet, so there is no best trial and most sections are empty."))
    else:
        blocks.append(Paragraph(
            f"**Best trial #{int(best['number'])}**: {d.metric} = **{fmt(best['value'])}**, trainable parameters "
            f"{fmt(best.get('trainable_params'))}, MLflow run `{fmt(best.get('mlflow_run_id'))}`."))
        base_rows = d.done[d.done["attr.base"] == True] if "attr.base" in d.done else d.done.iloc[0:0]  # noqa: E712
        if not base_rows.empty:
            base = base_rows.iloc[0]
            gain = (best["value"] - base["value"]) * (1 if d.maximize else -1)
            blocks.append(Paragraph(
                f"Base config (the defaults plus the sweep's overrides, run as trial #{int(base['number'])}): "
                f"{d.metric} = {fmt(base['value'])}; the best trial gains {_pts(gain, d.points_scale)} over it on "
                "the validation split (a single run each: see the reproducibility section for what survives fresh seeds)."))
        params = _params_of(best)
        if params:
            blocks.append(Table(pd.DataFrame({"hyperparameter": list(params), "value": list(params.values())}),
                                "Best trial's hyperparameters"))
    callout = _seed_callout(d)
    if callout is not None:
        blocks.append(callout)
    failed = d.frame[d.frame["state"] == "FAIL"] if not d.frame.empty else d.frame
    if not failed.empty:
        # reasons from older sweeps were stored unmasked: mask here too, before counting
        reasons = failed["fail_reason"].fillna("(no reason recorded)").map(lambda r: scrub_text(str(r))).value_counts()
        blocks.append(Table(reasons.rename_axis("fail_reason").reset_index(name="trials"), "Failed trials by reason"))
    space = d.attrs.get("search_space")
    if isinstance(space, Mapping) and space:
        blocks.append(Table(pd.DataFrame({"hyperparameter": list(space), "grammar": [str(v) for v in space.values()]}),
                            "Search space"))
    return blocks


def leaderboard(d: ReportData) -> list[Block]:
    """Top completed trials with their hyperparameters, score, adapter size and MLflow run."""
    blocks: list[Block] = [Heading(LEADERBOARD)]
    if d.done.empty:
        return blocks + [Paragraph("No completed trials.")]
    top = d.done.sort_values(["value", "number"], ascending=[not d.maximize, True]).head(LEADERBOARD_SIZE)
    params = param_columns(top)
    table = pd.DataFrame({"rank": range(1, len(top) + 1), "trial": top["number"].to_numpy(),
                          d.metric: top["value"].to_numpy()})
    for c in params:
        table[c[len("param."):]] = top[c].to_numpy()
    table["trainable_params"] = top["trainable_params"].to_numpy()
    table["mlflow_run_id"] = top["mlflow_run_id"].to_numpy()
    return blocks + [Table(table, f"Top {len(top)} of {len(d.done)} completed trials")]


def importance(table: pd.DataFrame, notes: list[str], figure: FigureResult | None) -> list[Block]:
    """fANOVA and PED-ANOVA importances, or why they were skipped."""
    blocks: list[Block] = [Heading(IMPORTANCE), Paragraph(
        "fANOVA: share of the objective's variance explained by each hyperparameter (random-forest surrogate). "
        "PED-ANOVA: how much each hyperparameter's distribution differs between the top-10% trials and all trials.")]
    if not table.empty:
        blocks.append(Table(table, "Normalised importances (each column sums to 1)"))
    if notes:
        blocks.append(Bullets(tuple(notes)))
    blocks.append(_figure(figure, "Hyperparameter importance"))
    return blocks


def figures(results: Mapping[str, FigureResult], captions: Mapping[str, str]) -> list[Block]:
    """The search-space figures, in a fixed order, each shown or explained."""
    blocks: list[Block] = [Heading(FIGURES)]
    for key, caption in captions.items():
        blocks += [Heading(caption, 3), _figure(results.get(key), caption)]
    return blocks


def _noise(d: ReportData) -> tuple[float, str] | None:
    """Typical seed-to-seed std (median over reproduced configs), the yardstick for a budget gain."""
    rep = fresh(d.reps, d.tuned_seeds)
    if rep.empty:
        return None
    stds = rep.groupby("config")["value"].std(ddof=1).dropna()
    return (float(stds.median()), "median seed-to-seed std of the reproduced configs") if len(stds) else None


def more_trials(d: ReportData, figure: FigureResult | None) -> list[Block]:
    """Expected max vs budget (Dodge et al. 2019) and whether the last half of the budget paid off."""
    values, sample = d.expected_max_sample()
    blocks: list[Block] = [Heading(MORE_TRIALS), _figure(figure, "Expected best score vs number of trials"), Paragraph(
        f"Expected best validation score of n trials drawn from {sample}: the average best over every n-subset of "
        "them (unbiased; Dodge et al. 2021), with ± the std of that best as the band. Estimated from "
        f"{values.size} trials, it cannot look past {values.size}: it says what fewer trials would have found, "
        "not what more would find.")]
    n = values.size
    if n < 2:
        return blocks + [Paragraph(f"Needs at least 2 finished trials (have {n}).")]
    mean = expected_max(values, maximize=d.maximize)
    std = expected_max_std(values, maximize=d.maximize)
    half = max(1, n // 2)
    gain = (mean[-1] - mean[half - 1]) * (1 if d.maximize else -1)
    best_word = "maximum" if d.maximize else "minimum"
    text = (f"Expected {best_word} {d.metric} with n = {half} trials: {fmt(mean[half - 1])}; with all n = {n}: "
            f"{fmt(mean[-1])} (± {fmt(std[-1])}). Going from {half} to {n} trials improved the expected best by "
            f"{_pts(gain, d.points_scale)} (estimated from {n} trials; cannot look past {n}, so whether {2 * n} would "
            "help is extrapolated from this slope).")
    noise = _noise(d)
    yardstick, label = noise if noise else (float(std[-1]), "spread of the best-of-n at n = N")
    if gain <= yardstick:
        text += (f" That is no more than the {label} ({fmt(yardstick)}): more trials from this search space are "
                 "unlikely to change the conclusion; spend the budget on seeds instead.")
    else:
        text += (f" That exceeds the {label} ({fmt(yardstick)}): the curve was still rising at {n} trials, so more "
                 "trials may find a better configuration.")
    budgets = sorted({1, max(1, n // 4), half, n})
    table = pd.DataFrame({"budget n": budgets, f"E[best {d.metric}]": [mean[b - 1] for b in budgets],
                          "std": [std[b - 1] for b in budgets]})
    return blocks + [Paragraph(text), Table(table)]


def _winners_curse(d: ReportData, table: pd.DataFrame) -> list[Block]:
    blocks: list[Block] = [Heading(WINNERS_CURSE, 3)]
    best = d.best()
    pick = table[table["config"] == int(best["number"])] if best is not None else table.iloc[:0]
    row = (pick if len(pick) else table).iloc[0]
    who = "the sweep's best trial" if len(pick) else "the best reproduced trial"
    direction = "overstated" if row["optimism"] > 0 else "understated"
    blocks.append(Paragraph(
        f"For {who} (#{int(row['config'])}) the sweep-time {d.metric} was {fmt(row['sweep_value'])}; over "
        f"{int(row['n'])} new seed(s) it averages {_interval(row)} ± {fmt(row['std'])}: the sweep {direction} it by "
        f"{_pts(abs(row['optimism']), d.points_scale, signed=False)}."))
    mean_gap = table["optimism"].mean()
    if len(table) > 1:
        blocks.append(Paragraph(f"Across all {len(table)} reproduced configs the sweep-time score was better than the "
                                f"reproduced mean by {_pts(mean_gap, d.points_scale)} on average."))
    return blocks


def _rank_stability(d: ReportData) -> tuple[list[Block], dict[str, object]]:
    rs = rank_stability(fresh(d.reps, d.tuned_seeds), maximize=d.maximize)
    blocks: list[Block] = [Heading(RANK_STABILITY, 3)]
    if rs["n_configs"] < 2:
        blocks.append(Paragraph(f"Only {rs['n_configs']} config was reproduced; rank stability needs at least 2."))
        return blocks, rs
    stays = ("stays the winner" if rs["winner_stays"]
             else f"does **not** stay the winner (now #{rs['reproduced_winner']})")
    blocks.append(Paragraph(
        f"Kendall's τ between the sweep-time ranking and the reproduced means of {rs['n_configs']} configs: "
        f"**{fmt(rs['kendall_tau'], 3)}** (p = {fmt(rs['kendall_p'], 3)}"
        + (f"; with {rs['n_configs']} configs no ranking can reach p < 0.05, the smallest possible p is "
           f"{fmt(kendall_min_p(int(rs['n_configs'])), 2)}" if kendall_min_p(int(rs['n_configs'])) >= 0.05 else "")
        + f"). The sweep winner #{rs['sweep_winner']} "
        f"{stays}. It beats the runner-up #{rs['runner_up']} in {fmt(100 * rs['winner_beats_runner_up'], 3)}% of "
        f"{rs['n_pairs']} {rs['pairing']} comparisons."))
    return blocks, rs


def _significance(d: ReportData, rs: Mapping[str, object]) -> list[Block]:
    blocks: list[Block] = [Heading(SIGNIFICANCE, 3)]
    if rs["runner_up"] is None:
        return blocks + [Paragraph("Needs replicates of at least two configs.")]
    winner, runner = int(rs["sweep_winner"]), int(rs["runner_up"])
    sig = lead_significance(d.reps, winner, runner, d.maximize, tuned_seeds=d.tuned_seeds)
    if not math.isfinite(sig["p_a_better"]):
        verdict = "not testable (each side needs ≥ 2 replicates with variance)"
    elif sig["leader"] == "runner-up":
        verdict = ("the runner-up is better on replicates"
                   + (f" (two-sided p = {fmt(sig['p_value'], 3)})" if sig["p_value"] < 0.05 else
                      ", though not significantly (two-sided p = " + fmt(sig["p_value"], 3) + ")"))
    else:
        verdict = ("the winner's lead is significant at the 5% level" if sig["p_a_better"] < 0.05 else
                   "the winner's lead is not significant at the 5% level")
    if sig["test"] == "crossed":
        method = (f"paired on the {sig['n_cells']} seed cells both ran (n = {sig['n_cells']}): 95% t-interval "
                  f"[{fmt(sig['ci_low'])}, {fmt(sig['ci_high'])}] with the crossed design's standard error "
                  "(cells sharing a seed are not independent; Satterthwaite df). One-sided paired test of the "
                  "winner's lead")
    elif sig["test"] == "paired":
        method = (f"paired on the {sig['n_cells']} fresh seed pairs both ran (n = {sig['n_cells']} pairs; each pair "
                  "a fresh init seed and data order, shared by the two configs, none shared between pairs): 95% "
                  f"t-interval [{fmt(sig['ci_low'])}, {fmt(sig['ci_high'])}] on n − 1 df. One-sided paired t-test "
                  "of the winner's lead")
    else:
        method = (f"95% Welch t-interval [{fmt(sig['ci_low'])}, {fmt(sig['ci_high'])}] (n = {sig['n_a']} + "
                  f"{sig['n_b']}; BCa bootstrap [{fmt(sig['boot_ci_low'])}, {fmt(sig['boot_ci_high'])}], too "
                  "narrow at a few replicates). One-sided Welch test of the winner's lead")
    blocks.append(Paragraph(
        f"Winner #{winner} (n = {sig['n_a']}) vs runner-up #{runner} (n = {sig['n_b']}): mean difference "
        f"{_pts(sig['diff'], d.points_scale)}, {method}: t = {fmt(sig['t'], 3)} (df {fmt(sig['df'], 3)}), "
        f"p = {fmt(sig['p_a_better'], 3)}: {verdict}. "
        + (f"Cohen's d = {fmt(sig['cohens_d'], 3)}, Hedges' g = {fmt(sig['hedges_g'], 3)}. "
           if sig["test"] != "crossed" else "")
        + (f"The winner beats the runner-up on {fmt(100 * sig['p_outperform'], 3)}% of the {sig['n_cells']} seed "
           "pairs both ran (the same seeds for both)." if sig.get("p_outperform_pairing") == "same seeds" else
           f"P(a run of the winner beats a run of the runner-up, each on its own seeds) = "
           f"{fmt(sig['p_outperform'], 3)} (Bouthillier et al. 2021).")))
    blocks.append(Paragraph(_power_line(sig)))
    return blocks


def _power_line(sig: Mapping[str, object]) -> str:
    """What this design could detect, beside what it found (simulated with the same test)."""
    if not math.isfinite(float(sig.get("power_1sd", float("nan")))):
        return "Power of this design: not estimable (no spread among the replicates)."
    size = int(sig["design_size"])
    side = math.ceil(math.sqrt(size))  # the n_seeds of a paired run: S² pairs
    design = {"crossed": f"this {size} × {size} crossed grid",
              "paired": f"the paired design's n = {size} fresh seed pairs per config",
              }.get(str(sig["test"]), f"{size} independent replicates per config")
    text = (f"Power of {design} (one-sided test at 5%, simulated at this study's variances; SD = one run's spread, "
            f"{fmt(sig['run_sd'])}): a true lead of 1 SD is found {fmt(100 * sig['power_1sd'], 2)}% of the time, "
            f"of 2 SD {fmt(100 * sig['power_2sd'], 2)}%.")
    if sig["power_2sd"] < 0.8:
        more = {"crossed": f"`--n-seeds {size + 1}`",
                "paired": f"`--n-seeds {side + 1}` ({(side + 1) ** 2} pairs)"}.get(str(sig["test"]), "more seeds")
        text += f" So {design} cannot reliably detect leads under about 3 SD: run {more}."
        paired = float(sig.get("paired_power_2sd", float("nan")))
        if sig["test"] == "crossed" and math.isfinite(paired):
            text += (f" Or run `--design paired`: the same {2 * size * size} runs on {size * size} fresh seed pairs "
                     f"shared by the two configs, whose paired t-test would find a 2-SD lead {fmt(100 * paired, 2)}% "
                     "of the time at these variances (its pairs share no seed; it does not split init from "
                     "data-order variance).")
    elif sig["power_1sd"] < 0.8:
        text += " Leads of about 1 SD can go unseen."
    return text


def _seed_kinds(d: ReportData) -> list[Block]:
    """Crossed design: variance components with intervals and a verdict only when they separate.
    One-at-a-time replicates (older studies): the per-kind spread, without a verdict."""
    blocks: list[Block] = [Heading(SEED_KINDS_HEADING, 3)]
    grids = crossed_grids(fresh(d.reps, d.tuned_seeds))
    if grids:
        result = seed_variance_components([g.to_numpy() for g in grids.values()])
        table = result["table"].rename(columns={"ci_low": "95% CI low", "ci_high": "95% CI high"})
        table.insert(1, "n runs", result["runs"])
        shapes = ", ".join(f"#{c}: {g.shape[0]} × {g.shape[1]}" for c, g in grids.items())
        table["variance"] = [f"{fmt(v)} (negative estimate {fmt(r)}, set to 0)" if z else fmt(v)
                             for v, r, z in zip(table["variance"], table["raw_estimate"], table["set_to_zero"])]
        table = table.drop(columns=["raw_estimate", "set_to_zero"])
        caption = (f"Two-way random-effects variance components (ANOVA estimators, a negative one shown and set to 0, pooled over "
                   f"{result['n_configs']} config(s); n = {result['runs']} runs: {shapes} init × data-order seeds, "
                   "one run per cell, so the interaction is not separable from run noise); 95% intervals: "
                   "modified large-sample (Ting et al. 1990) for init seed and data order, exact χ² for the "
                   "residual, both normal-theory, on the df shown")
        verdict = result["verdict"]
        sentence = {
            "init seed": "The initialisation seed contributes more variance than data order: their intervals "
                         "do not overlap.",
            "data order": "Data order (data_seed) contributes more variance than the initialisation seed: their "
                          "intervals do not overlap.",
        }.get(verdict, "Cannot tell at this n which of init seed and data order contributes more. More seeds on "
                       "each axis sharpen the test.")
        if result["test"] == "F test of rows vs columns":
            sentence = sentence.replace("their intervals do not overlap", "the exact F test agrees")
            sentence += (f" (Exact F test of init-seed rows against data-order columns on the square grids, "
                         f"two-sided p = {fmt(result['f_p_value'], 3)}, at 5%.)")
        return blocks + [Table(table, caption), Paragraph(sentence)]
    table = variance_by_seed_kind(d.reps)
    if table.empty:
        return blocks + [Paragraph("No crossed, paired or seed / data_seed / both replicates.")]
    shown = table.rename(columns={"config": "trial"})
    notes = []
    if (table["seed_kind"] == "paired").any():
        notes.append(Paragraph(
            "Not estimable under the paired design: every paired run draws a fresh init seed and a fresh data order "
            "together, so init-seed and data-order variance are confounded; the table gives their sum (one run's "
            "spread) per config, over n runs. To split them, reproduce with `--design crossed` "
            "(hydra.sweeper.reproduce.design=crossed: as many runs on an init × data-order seed grid, with a "
            "weaker lead test)."))
    if table["seed_kind"].isin(["seed", "data_seed", "both"]).any():
        notes.append(Paragraph(
            "The seed / data_seed / both replicates vary one seed at a time, which cannot say which source dominates "
            "at a handful of runs; the crossed design (`--design crossed`, hydra.sweeper.reproduce.design=crossed) can."))
    return blocks + [Table(shown, "Per config and seed kind (std/var with ddof = 1)"), *notes]


def _determinism(d: ReportData) -> list[Block]:
    blocks: list[Block] = [Heading(DETERMINISM, 3)]
    checks = determinism_check(d.frame, d.repro)
    if checks.empty:
        blocks.append(Paragraph("No `determinism` re-runs (same seed and data_seed as the original trial)."))
    else:
        same = int(checks["metrics_identical"].sum())
        hashed = checks["adapter_identical"].dropna()
        text = f"{same} of {len(checks)} re-run(s) with the original seeds reproduced every metric bit for bit."
        if len(hashed):
            text += f" Adapter SHA-256 identical in {int(hashed.astype(bool).sum())} of {len(hashed)}."
        if same < len(checks):
            text += f" Largest absolute metric difference: {fmt(checks['max_abs_metric_diff'].max())}."
        blocks += [Table(checks.rename(columns={"config": "trial"})), Paragraph(text)]
    env = environment_table(d.repro)
    if not env.empty:
        blocks.append(Table(env, "Environment fingerprint of the replicates"))
        if len(env) > 1:
            blocks.append(Paragraph("Replicates ran in more than one environment; bitwise equality is not expected "
                                    "across library versions or devices."))
    if d.repro is not None and d.repro.columns.intersection(["deterministic", "deterministic_algorithms"]).size:
        modes = d.repro.apply(determinism_of, axis=1).dropna()
        if len(modes):
            counts = modes.value_counts()
            text = "Determinism enforced in the replicate runs: " + ", ".join(
                f"{mode} in {int(n)} of {len(modes)}" for mode, n in counts.items()) + "."
            if "warn_only" in counts:
                text += (" warn_only means a non-deterministic kernel (on CUDA some have no deterministic version) "
                         "only warned instead of failing, so bitwise equality of re-runs is not guaranteed there.")
            if "off" in counts:
                text += " off means deterministic algorithms were not enforced at all."
            blocks.append(Paragraph(text))
    return blocks


def reproducibility(d: ReportData, figure: FigureResult | None) -> list[Block]:
    """Seed replicates: per-config spread, winner's curse, rank stability, significance, seed kinds, determinism."""
    blocks: list[Block] = [Heading(REPRODUCIBILITY)]
    if d.repro is None:
        return blocks + [Paragraph(
            f"No reproduce study `{d.reproduce_name}` in this storage. Every score above comes from a single seed; "
            "re-run the top configs on new seeds before trusting small differences.")]
    states = d.repro["state"].value_counts()
    kinds = d.reps["seed_kind"].value_counts()
    blocks.append(Paragraph(
        f"Reproduce study `{d.reproduce_name}`: {int(states.get('COMPLETE', 0))} completed replicate(s) "
        f"({', '.join(f'{k}: {v}' for k, v in kinds.items()) or 'none'}), {int(states.get('FAIL', 0))} failed, "
        f"{int(states.get('RUNNING', 0)) + int(states.get('WAITING', 0))} pending."))
    table = per_config_summary(d.reps, d.maximize, d.tuned_seeds)
    if table.empty:
        return blocks + [Paragraph("No completed seed replicates yet."), *_determinism(d)]
    shown = table.rename(columns={"config": "trial", "sweep_value": "sweep-time", "ci_low": "95% CI low",
                                  "ci_high": "95% CI high", "cv": "CV", "optimism": "sweep − mean"})
    if not d.maximize:
        shown = shown.rename(columns={"sweep − mean": "mean − sweep"})
    caption = ("Per reproduced config: replicates that re-drew every seed of the trial (seed and data_seed "
               "replicates left out: each keeps one of the trial's own seeds, tuned or not, which carry the selection's luck)"
               + "; determinism re-runs excluded; the 95% CI is a t-interval over n replicates on df degrees of "
               "freedom (a crossed seed grid: the two-way random-effects standard error, as its cells share seeds; "
               "paired seed pairs: independent runs, n − 1 df)")
    test = held_out(d.repro, d.reps, d.metric, d.tuned_seeds)
    if not test.empty:
        blocks.append(Table(test.rename(columns={"config": "trial", "validation_mean": "validation mean",
                                                 "test_mean": "held-out test mean", "test_ci_low": "test 95% CI low",
                                                 "test_ci_high": "test 95% CI high"}),
                            "Held-out test (data.test_split), same fresh-seed replicates: validation picked the "
                            "config, so its validation mean is optimistic; the test mean is not"))
    blocks += [Table(shown, caption),
               _figure(figure, "Replicate scores per config (boxes: the replicates the table counts); red star = "
                               "sweep-time score")]
    blocks += _winners_curse(d, table)
    stability, rs = _rank_stability(d)
    blocks += stability + _significance(d, rs) + _seed_kinds(d) + _determinism(d)
    return blocks


def skipped_overview(results: Mapping[str, FigureResult]) -> list[Block]:
    """One list of everything skipped, so a short study's report explains its gaps in one place."""
    skipped = [f"{key}: {why}" for key, why in results.items() if not isinstance(why, Path)]
    return [Heading(SKIPPED), Bullets(tuple(skipped))] if skipped else []

