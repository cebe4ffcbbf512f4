"""The seed race's elimination rule, by seeded simulation: a config worse by construction is
dropped within a few rounds, and a config as good as the others is dropped at most alpha of the time."""

from __future__ import annotations

import numpy as np

from analysis.stats import race_eliminations
from sweeps.runtime.race import SeedRace, race_rounds

ROUNDS, ALPHA = 8, 0.05


def _race(means: list[float], rng: np.random.Generator, seed_sd: float = 0.02, noise_sd: float = 0.01):
    """Run one race: every round each survivor gets one run on a shared seed pair (the seed
    effect is common to all configs, as real seeds are). Returns (survivors, rounds used)."""
    race = SeedRace(list(range(len(means))), ROUNDS, ALPHA)
    scores: dict[int, dict[int, float]] = {}
    for r in range(ROUNDS):
        seed_effect = rng.normal(0, seed_sd)
        for c in race.alive:
            scores.setdefault(c, {})[r] = means[c] + seed_effect + rng.normal(0, noise_sd)
        race.observe(r, scores)
        if race.finished:
            return set(race.alive), r + 1
    return set(race.alive), ROUNDS


def test_a_config_worse_by_construction_is_eliminated():
    rng = np.random.default_rng(0)
    outcomes = [_race([0.80, 0.74, 0.80], rng) for _ in range(200)]
    dropped = sum(1 not in alive for alive, _ in outcomes)
    assert dropped / len(outcomes) >= 0.95
    assert np.median([r for alive, r in outcomes]) <= ROUNDS
    assert all(0 in alive or 2 in alive for alive, _ in outcomes)  # a best config always survives


def test_a_config_as_good_as_every_other_is_dropped_at_most_alpha_of_the_time():
    """The promise is for the best config (each of several tied for best), whichever config leads;
    with three equal configs one of them can go more often than alpha, in favour of an equal one."""
    rng = np.random.default_rng(1)
    outcomes = [_race([0.80, 0.80, 0.80], rng, seed_sd=0.01, noise_sd=0.01) for _ in range(600)]
    for config in range(3):
        assert sum(config not in alive for alive, _ in outcomes) / len(outcomes) <= ALPHA
    assert sum(len(alive) == 1 for alive, _ in outcomes) / len(outcomes) <= ALPHA  # a winner "separated" from equals


def test_minimise_and_identical_gaps():
    assert race_eliminations({0: [0.5, 0.6], 1: [0.7, 0.8]}, maximize=False, alpha=0.05, looks=1) == {1}
    assert race_eliminations({0: [0.5], 1: [0.9]}, maximize=True, alpha=0.05, looks=1) == set()  # one pair: wait


def test_the_race_names_the_best_mean_among_survivors_and_records_when_rivals_fell():
    race = SeedRace([4, 7, 9], race_rounds(12, 3), ALPHA)
    assert race.rounds == 4 and race_rounds(3, 3) == 2  # a paired test needs two rounds
    scores = {4: {0: 0.80, 1: 0.82}, 7: {0: 0.60, 1: 0.61}, 9: {0: 0.81, 1: 0.80}}
    assert race.observe(1, scores) == set()  # two rounds at alpha / (2 x 4): not yet
    scores = {4: {**scores[4], 2: 0.81}, 7: {**scores[7], 2: 0.62}, 9: {**scores[9], 2: 0.83}}
    assert race.observe(2, scores) == {7} and race.eliminated == {7: 3} and race.alive == [4, 9]
    assert not race.finished
    assert race.winner(scores) == 9  # 0.8133 over 0.8100
