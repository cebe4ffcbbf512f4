"""A built-in, offline chat task whose answers can be checked exactly (`data=demo_chat`).

Multi-turn conversations of small arithmetic, list and word tasks, some with a system turn,
some with follow-up questions that refer back to earlier turns. Each split comes from its own
fixed-seed `random.Random` (never a trial seed), so every trial of every sweep sees the same
conversations, and `exact_match` on the last answer is meaningful.
"""

from __future__ import annotations

import random
from collections.abc import Callable

SYSTEMS = ("you are a careful assistant. answer with the result only.",
           "reply with just the answer.")
COLORS = ("red", "blue", "green", "black", "white", "yellow", "pink", "gray")
ANIMALS = ("cat", "dog", "cow", "fox", "owl", "bee", "ant", "pig")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
TRAIN_SEED, EVAL_SEED, TEST_SEED = 20261203, 20261204, 20261205

Exchange = tuple[str, str]


def _add(rng: random.Random) -> Exchange:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    return f"what is {a} plus {b}?", str(a + b)


def _subtract(rng: random.Random) -> Exchange:
    a = rng.randint(0, 9)
    b = rng.randint(0, a)
    return f"what is {a} minus {b}?", str(a - b)


def _reverse(rng: random.Random) -> Exchange:
    items = rng.sample(COLORS, rng.randint(2, 4))
    return f"reverse the list: {' '.join(items)}", " ".join(reversed(items))


def _sort(rng: random.Random) -> Exchange:
    numbers = rng.sample(range(10), rng.randint(2, 4))
    return f"sort these numbers: {' '.join(map(str, numbers))}", " ".join(map(str, sorted(numbers)))


def _count(rng: random.Random) -> Exchange:
    items = [rng.choice(ANIMALS) for _ in range(rng.randint(1, 5))]
    return f"how many words are in: {' '.join(items)}", str(len(items))


def _spell(rng: random.Random) -> Exchange:
    n = rng.randint(0, 10)
    return f"write {n} as a word.", NUMBER_WORDS[n]


def _first(rng: random.Random) -> Exchange:
    items = rng.sample(ANIMALS, rng.randint(2, 4))
    return f"which animal comes first: {' '.join(items)}", items[0]


TASKS: tuple[Callable[[random.Random], Exchange], ...] = (_add, _subtract, _reverse, _sort, _count, _spell, _first)


def _follow_up(rng: random.Random, answer: str) -> Exchange | None:
    """A question about the previous answer: needs the history to be answered."""
    if answer.isdigit():
        b = rng.randint(0, 5)
        return f"and that plus {b}?", str(int(answer) + b)
    words = answer.split()
    if len(words) > 1:
        return "and the last item of that?", words[-1]
    return None


def conversation(rng: random.Random) -> list[dict[str, str]]:
    """One conversation: an optional system turn, then 1-3 user/assistant exchanges."""
    turns = [{"role": "system", "content": rng.choice(SYSTEMS)}] if rng.random() < 0.3 else []
    question, answer = rng.choice(TASKS)(rng)
    turns += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    for _ in range(rng.choice((0, 0, 1, 2))):
        follow = _follow_up(rng, answer) if rng.random() < 0.6 else rng.choice(TASKS)(rng)
        if follow is None:
            break
        question, answer = follow
        turns += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return turns


def generate(n: int, seed: int) -> list[list[dict[str, str]]]:
    rng = random.Random(seed)
    return [conversation(rng) for _ in range(n)]


def demo_chat_splits(train_size: int, eval_size: int) -> tuple[list[list[dict[str, str]]], list[list[dict[str, str]]]]:
    """Train and eval conversations (messages format), each split from its own fixed seed."""
    return generate(train_size, TRAIN_SEED), generate(eval_size, EVAL_SEED)


def demo_chat_test_split(size: int) -> list[list[dict[str, str]]]:
    """A held-out split from a third fixed seed (data.test_split=test)."""
    return generate(size, TEST_SEED)
