"""A built-in, offline sentiment task whose difficulty makes hyperparameters matter.

Sentences come from templates with positive/negative words, negation ("not good" flips),
intensifiers, contrast ("good but boring": the second clause wins), distractor phrases and a
fixed fraction of flipped labels. Generation uses its own `random.Random` with a fixed seed per
split (never the trial seeds), so every trial of every sweep sees exactly the same data.
"""

from __future__ import annotations

import random
from collections.abc import Callable

POSITIVE = (
    "good", "great", "wonderful", "charming", "brilliant", "delightful", "superb", "moving",
    "clever", "fun", "touching", "gripping", "witty", "beautiful", "fresh", "solid",
)
NEGATIVE = (
    "bad", "awful", "boring", "dull", "terrible", "clumsy", "tedious", "bland", "weak",
    "messy", "silly", "lifeless", "stale", "forgettable", "shallow", "annoying",
)
SUBJECTS = (
    "the film", "the movie", "the plot", "the acting", "the soundtrack", "the script",
    "the ending", "the cast", "the dialogue", "the pacing", "the story", "the direction",
    "the humor", "the camera work", "the lead performance", "this sequel",
)
INTENSIFIERS = ("", "", "", "very ", "really ", "truly ", "remarkably ", "quite ", "rather ", "somewhat ")
NEGATIONS = ("not", "not at all", "hardly", "never", "far from", "not really")
LIKE = ("loved", "enjoyed", "liked", "admired", "recommend")
DISLIKE = ("hated", "disliked", "regretted", "resented", "cannot recommend")
DISTRACTORS = (
    "", "", "", " for a tuesday night", " despite the long running time", " from a french director",
    " in its second half", " like the trailer promised", " for a film about trains",
    " with a famous cast", " in the original version", " at two hours",
)
BE = ("is", "was", "seems", "felt")

LABEL_NOISE = 0.08
TRAIN_SEED, EVAL_SEED, TEST_SEED = 20240611, 20240612, 20240613

# (weight, generator) pairs: the mix sets how hard the task is.
Example = tuple[str, int]


def _adj(rng: random.Random, label: int) -> str:
    return rng.choice(POSITIVE if label else NEGATIVE)


def _plain(rng: random.Random, label: int) -> Example:
    return f"{rng.choice(SUBJECTS)} {rng.choice(BE)} {rng.choice(INTENSIFIERS)}{_adj(rng, label)}{rng.choice(DISTRACTORS)}", label


def _negated(rng: random.Random, label: int) -> Example:
    return f"{rng.choice(SUBJECTS)} {rng.choice(BE)} {rng.choice(NEGATIONS)} {_adj(rng, 1 - label)}{rng.choice(DISTRACTORS)}", label


def _contrast(rng: random.Random, label: int) -> Example:
    subj, first, last = rng.choice(SUBJECTS), _adj(rng, 1 - label), _adj(rng, label)
    if rng.random() < 0.5:
        return f"{subj} {rng.choice(BE)} {first} but {rng.choice(INTENSIFIERS)}{last}", label
    return f"although {subj} {rng.choice(BE)} {first}, it {rng.choice(BE)} {last} in the end", label


def _two_aspects(rng: random.Random, label: int) -> Example:
    a, b = rng.sample(SUBJECTS, 2)
    return f"{a} {rng.choice(BE)} {_adj(rng, label)} and {b} {rng.choice(BE)} {_adj(rng, label)}", label


def _verdict(rng: random.Random, label: int) -> Example:
    verb = rng.choice(LIKE if label else DISLIKE)
    return f"{rng.choice(SUBJECTS)} {rng.choice(BE)}{rng.choice(DISTRACTORS) or ' long'}, and overall i {verb} it", label


TEMPLATES: tuple[tuple[float, Callable[[random.Random, int], Example]], ...] = (
    (0.30, _plain), (0.22, _negated), (0.25, _contrast), (0.13, _two_aspects), (0.10, _verdict),
)


def generate(n: int, seed: int) -> dict[str, list]:
    """`n` examples as columns `text`, `label` (0 negative, 1 positive), balanced in expectation."""
    rng = random.Random(seed)
    weights = [w for w, _ in TEMPLATES]
    texts, labels = [], []
    for _ in range(n):
        label = rng.randint(0, 1)
        (template,) = rng.choices([t for _, t in TEMPLATES], weights)
        text, label = template(rng, label)
        if rng.random() < LABEL_NOISE:
            label = 1 - label
        texts.append(text)
        labels.append(label)
    return {"text": texts, "label": labels}


def demo_splits(train_size: int, eval_size: int) -> tuple[dict[str, list], dict[str, list]]:
    """Train and eval columns, each from its own fixed seed."""
    return generate(train_size, TRAIN_SEED), generate(eval_size, EVAL_SEED)


def demo_test_split(size: int) -> dict[str, list]:
    """A held-out split from a third fixed seed (data.test_split=test)."""
    return generate(size, TEST_SEED)
