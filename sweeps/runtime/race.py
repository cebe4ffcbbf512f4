"""The seed race (`hydra.sweeper.race`): after the search, the best few configs run again on
fresh init and data-order seeds, one shared seed pair per round, in workers of the sweep process (a
new pool per round, on the sweep's plan);
from the third round on, every rival that a one-sided test says is worse than the leader is
dropped (sweeps.seed_stats.race_eliminations: variance pooled over the survivors under a config x
round model, Holm across rivals, alpha split over the looks actually tested). The race ends when
one config is left or `race.max_runs` runs are spent, and its winner (the best mean over fresh
seeds) is what the sweep reports, tags and exports. Where more than one config survives, the
winner was picked on the same runs that estimate its mean, so that mean is labelled optimistic.

Race runs live in a companion study (`<study>--race`) so the search's sampler never learns from
them as new configs; the search study records the outcome in its `race` user attr.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from sweeps.progress import console
from sweeps.reproduce import fresh_seed_values
from sweeps.seed_stats import interval_text, race_eliminations, summarize, race_looks
from sweeps.search.study import top_trials
from sweeps.search.space import SearchSpace
from sweeps.search.storage import RACE_SUFFIX


def _scores(race: optuna.Study) -> dict[int, dict[int, float]]:
    """config (search trial number) -> round -> objective, over the race's completed runs."""
    out: dict[int, dict[int, float]] = {}
    for t in race.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        out.setdefault(int(t.user_attrs["replicates_trial"]), {})[int(t.user_attrs["race_round"])] = float(t.values[0])
    return out


def _enqueue_round(race: optuna.Study, configs: list[optuna.trial.FrozenTrial], rnd: int, seed: int,
                   data_seed: int) -> int:
    have = {t.user_attrs.get("replicate_key") for t in race.get_trials(deepcopy=False)
            if t.state in (TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING)}
    n = 0
    for trial in configs:
        key = f"{trial.number}:race:{rnd}"
        if key in have:
            continue
        race.enqueue_trial({}, user_attrs={
            "overrides": {**trial.params, "seed": seed, "data_seed": data_seed}, "replicates_trial": trial.number,
            "race_round": rnd, "seed_kind": "race", "replicate_key": key,
            "replicate_seed": seed, "replicate_data_seed": data_seed, "sweep_value": trial.values[0]})
        n += 1
    return n


def race_rounds(max_runs: int, n_configs: int) -> int:
    """Rounds a race of n configs may take: each survivor runs once per round (at least two, for
    an interval; no rival can be dropped before round 3)."""
    return max(2, int(max_runs) // n_configs)


@dataclass
class SeedRace:
    """The race's decisions, apart from how its runs are made (the sweep's workers here, simulated
    outcomes in bench/race_vs_reproduce.py): who is still in, who was dropped in which round, and
    the winner. `scores[config][round]` is one run of a config on that round's shared seed pair."""

    configs: list[int]
    rounds: int
    alpha: float
    maximize: bool = True
    alive: list[int] = field(init=False)
    eliminated: dict[int, int] = field(default_factory=dict)  # config -> the round (from 1) it was dropped

    def __post_init__(self) -> None:
        self.alive = list(self.configs)

    @property
    def looks(self) -> int:
        """Looks the race tests at (rounds 3..rounds): alpha is split over these alone."""
        return race_looks(self.rounds)

    def observe(self, rnd: int, scores: dict[int, dict[int, float]]) -> set[int]:
        """After round `rnd` (from 0): drop each survivor that the pooled test, over the rounds
        every survivor has a score for, says is worse than the leader. Returns the dropped."""
        shared = [r for r in range(rnd + 1) if all(r in scores.get(c, {}) for c in self.alive)]
        paired = {c: [scores[c][r] for r in shared] for c in self.alive}
        dropped = race_eliminations(paired, self.maximize, self.alpha, looks=self.looks)
        for config in dropped:
            self.eliminated[config] = rnd + 1
        self.alive = [c for c in self.alive if c not in dropped]
        return dropped

    @property
    def finished(self) -> bool:
        return len(self.alive) == 1

    @property
    def winner_optimistic(self) -> bool:
        return len(self.alive) > 1

    def winner(self, scores: dict[int, dict[int, float]]) -> int:
        """The survivor with the best mean over all of its race runs. With more than one survivor
        that mean is optimistic (`winner_optimistic`): it was picked as the best of the survivors
        on these very runs."""
        sign = 1 if self.maximize else -1
        return max(self.alive, key=lambda c: sign * summarize(list(scores.get(c, {}).values()))["mean"])


SEED_KEYS = ("seed", "data_seed")


def seeds_as_replicates(conf: Any, space: SearchSpace, job: Any) -> SearchSpace:
    """With the race on, a searched seed is budget spent on luck: a config's lead on one seed is
    partly that seed, and the race re-runs the best configs on fresh seeds anyway. So `seed` and
    `data_seed` leave the search space (every trial runs at the base config's seeds) and the race's
    fresh seed pairs are the replicates; `race.search_seeds=true` keeps them searched."""
    race = conf.get("race")
    if race is None or not race.enabled or race.get("search_seeds", False):
        return space
    seeds = [k for k in SEED_KEYS if k in space.distributions]
    if not seeds:
        return space
    at = ", ".join(f"{k}={job.get(k)}" for k in SEED_KEYS if job.get(k) is not None)
    console.print(f"race on: {' and '.join(seeds)} left the search space; every trial runs at the base config's "
                  f"{at}, and the race's fresh seed pairs replicate the best configs "
                  "(hydra.sweeper.race.search_seeds=true keeps the seeds searched)")
    return space.without(set(seeds))


def race_step(study: optuna.Study, storage: Any, session: Any, runbook: Any) -> None:
    """The session's step after the search: the race, where `hydra.sweeper.race.enabled`."""
    if session.conf.get("race") is not None and session.conf.race.enabled:
        run_race(study, storage, session, runbook)


def run_race(study: optuna.Study, storage: Any, session: Any, runbook: Any) -> dict[str, Any] | None:
    """Race the top `race.top_k` configs; returns (and stores on the study) the outcome."""
    conf = session.conf.race
    top = top_trials(study, int(conf.top_k))
    if len(top) < 2:
        return None
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    rounds = race_rounds(int(conf.max_runs), len(top))
    seeds = fresh_seed_values(top, 2 * rounds)
    race = session.open_companion(study, storage, RACE_SUFFIX, runbook)
    state = SeedRace([t.number for t in top], rounds, float(conf.alpha), maximize)
    test = (f"from round 3 on, dropping a rival worse than the leader at one-sided alpha={float(conf.alpha)} "
            f"(variance pooled over survivors, Holm across rivals, alpha split over {state.looks} looks)"
            if state.looks else "with too few rounds to drop any rival (a test needs 3; raise race.max_runs)")
    console.print(f"race: top {len(top)} configs {[t.number for t in top]} on fresh seed pairs, at most "
                  f"{rounds} rounds ({int(conf.max_runs)} runs), {test}")
    by_number = {t.number: t for t in top}
    fixed = SearchSpace(fixed=dict(session.space.fixed))
    for rnd in range(rounds):
        if _enqueue_round(race, [by_number[c] for c in state.alive], rnd, seeds[2 * rnd], seeds[2 * rnd + 1]):
            # the workers' budget counts every run of the race study, earlier rounds included
            total = len([t for t in race.get_trials(deepcopy=False) if t.state != TrialState.FAIL])
            specs = session.worker_specs(race.study_name, total, fixed, session.objectives[:1], replay_only=True)
            if session.watch(session.supervisor(race, runbook, specs, total), race, total,
                             f"race round {rnd + 1}").interrupted:
                return None
        state.observe(rnd, _scores(race))
        if state.finished:
            break
    scores = _scores(race)
    winner = state.winner(scores)
    alive, eliminated = state.alive, state.eliminated
    metric = str(study.user_attrs.get("objective_metric", "eval_objective"))
    test_key = "test_" + metric.removeprefix("eval_")
    s = summarize(list(scores.get(winner, {}).values()))
    held_out = summarize([t.user_attrs["metrics"][test_key] for t in race.get_trials(deepcopy=False, states=(
        TrialState.COMPLETE,)) if t.user_attrs.get("replicates_trial") == winner and test_key in t.user_attrs.get(
        "metrics", {})])
    outcome = {"winner": winner, "mean": s["mean"], "ci_low": s["ci_low"], "ci_high": s["ci_high"], "n": s["n"],
               "test_mean": held_out["mean"], "test_ci_low": held_out["ci_low"], "test_ci_high": held_out["ci_high"],
               "survivors": sorted(alive), "eliminated": {str(c): r for c, r in eliminated.items()},
               "runs": sum(len(v) for v in scores.values()), "best_single_trial": study.best_trial.number,
               "mean_optimistic": state.winner_optimistic, "no_variation": bool(s["no_variation"]),
               "best_single_value": study.best_value}
    study.set_user_attr("race", outcome)
    optimistic = (f"; optimistic: picked as the best of {len(alive)} survivors on these same runs"
                  if state.winner_optimistic else "")
    console.print(f"race winner: #{winner} mean {interval_text(s)} over fresh seed pairs{optimistic} "
                  f"({outcome['runs']} race runs; eliminated "
                  f"{ {c: f'round {r}' for c, r in eliminated.items()} or 'none'}); the single best trial was "
                  f"#{study.best_trial.number} at {study.best_value:.4f}"
                  + (f"; held-out {test_key} {interval_text(held_out)}" if held_out["n"] else ""))
    if runbook is not None and runbook.parent_run_id:
        metrics = {"race_winner_mean": s["mean"], "race_winner_ci_low": s["ci_low"], "race_winner_ci_high": s["ci_high"],
                   "race_winner_n": s["n"], "race_runs": float(outcome["runs"]),
                   "race_winner_test_mean": held_out["mean"]}
        runbook.log_metric_dict(runbook.parent_run_id, {k: v for k, v in metrics.items() if np.isfinite(v)}, step=None)
        runbook.set_tags(runbook.parent_run_id, {"race.winner": str(winner),
                                                 "race.survivors": ",".join(map(str, sorted(alive))),
                                                 "race.winner_mean_optimistic": str(state.winner_optimistic).lower()})
    return outcome
