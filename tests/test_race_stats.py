"""The seed race's elimination rule, by seeded simulation: a config worse by construction is
dropped within a few rounds, and configs that are equal are (almost) never separated."""

from __future__ import annotations

import numpy as np

from analysis.stats import race_eliminations

ROUNDS, ALPHA = 8, 0.05


def _race(means: list[float], rng: np.random.Generator, seed_sd: float = 0.02, noise_sd: float = 0.01):
    """Run one race: every round each survivor gets one run on a shared seed pair (the seed
    effect is common to all configs, as real seeds are). Returns (survivors, rounds used)."""
    alive = set(range(len(means)))
    scores: dict[int, list[float]] = {c: [] for c in alive}
    for r in range(1, ROUNDS + 1):
        seed_effect = rng.normal(0, seed_sd)
        for c in alive:
            scores[c].append(means[c] + seed_effect + rng.normal(0, noise_sd))
        alive -= race_eliminations({c: scores[c] for c in alive}, True, ALPHA, looks=ROUNDS)
        if len(alive) == 1:
            return alive, r
    return alive, ROUNDS


def test_a_config_worse_by_construction_is_eliminated():
    rng = np.random.default_rng(0)
    outcomes = [_race([0.80, 0.74, 0.80], rng) for _ in range(200)]
    dropped = sum(1 not in alive for alive, _ in outcomes)
    assert dropped / len(outcomes) >= 0.95
    assert np.median([r for alive, r in outcomes]) <= ROUNDS
    assert all(0 in alive or 2 in alive for alive, _ in outcomes)  # a best config always survives


def test_equal_configs_are_not_separated():
    rng = np.random.default_rng(1)
    outcomes = [_race([0.80, 0.80, 0.80], rng) for _ in range(400)]
    separated = sum(len(alive) < 3 for alive, _ in outcomes)
    assert separated / len(outcomes) <= ALPHA  # the race-wide error rate the correction promises


def test_minimise_and_identical_gaps():
    assert race_eliminations({0: [0.5, 0.6], 1: [0.7, 0.8]}, maximize=False, alpha=0.05, looks=1) == {1}
    assert race_eliminations({0: [0.5], 1: [0.9]}, maximize=True, alpha=0.05, looks=1) == set()  # one pair: wait
