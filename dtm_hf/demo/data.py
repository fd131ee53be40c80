"""A small instruction dataset with distinct skills, generated on the spot for the offline demo and the tests
(`python -m dtm_hf.demo_data demo.jsonl [N_PER_SKILL]` writes one).

Rows are Tulu-shaped: `messages` (a user turn and the assistant's reply) and `dataset` (the skill, like
tulu-v2-sft-mixture's source column). Each skill has its own vocabulary, so k-means over embeddings can
separate them and a sub-model trained on one skill is measurably better on it than on the others.
"""

import json
import random
from collections.abc import Callable
from pathlib import Path

WORDS = ["apple", "river", "candle", "mountain", "silver", "garden", "window", "thunder", "pencil", "ocean",
         "forest", "rocket", "violin", "marble", "lantern", "harbor", "meadow", "copper", "falcon", "velvet"]
COLORS = ["red", "blue", "green", "yellow", "purple", "orange"]
SHAPES = ["circle", "square", "triangle", "star", "hexagon"]


def _arithmetic(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    op = rng.choice(["plus", "minus", "times"])
    result = {"plus": a + b, "minus": a - b, "times": a * b}[op]
    prompt = rng.choice(["What is {a} {op} {b}?", "Compute {a} {op} {b}.", "Calculate {a} {op} {b} please."])
    return prompt.format(a=a, op=op, b=b), f"{a} {op} {b} equals {result}."


def _reverse(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(WORDS)
    prompt = rng.choice(["Reverse the word '{w}'.", "Spell '{w}' backwards.", "Write '{w}' in reverse order."])
    return prompt.format(w=word), f"The word '{word}' reversed is '{word[::-1]}'."


def _sorting(rng: random.Random) -> tuple[str, str]:
    numbers = rng.sample(range(1, 60), rng.randint(3, 6))
    listed = ", ".join(map(str, numbers))
    prompt = rng.choice(["Sort these numbers: {n}.", "Put in ascending order: {n}.", "Order from small to large: {n}."])
    return prompt.format(n=listed), "In ascending order: " + ", ".join(map(str, sorted(numbers))) + "."


def _describe(rng: random.Random) -> tuple[str, str]:
    color, shape, count = rng.choice(COLORS), rng.choice(SHAPES), rng.randint(2, 9)
    prompt = rng.choice(["Describe a picture of {c} {s}s.", "Tell me about the {c} {s}s.", "Paint {c} {s}s in words."])
    answer = f"The picture shows {count} {color} {shape}s arranged in a row on a white background."
    return prompt.format(c=color, s=shape), answer


SKILLS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "arithmetic": _arithmetic,
    "reverse": _reverse,
    "sorting": _sorting,
    "describe": _describe,
}


def demo_rows(n_per_skill: int = 200, seed: int = 0) -> list[dict]:
    """`n_per_skill` rows of each skill, interleaved in a seeded random order."""
    rng = random.Random(seed)
    rows = []
    for skill, make in SKILLS.items():
        for _ in range(n_per_skill):
            prompt, answer = make(rng)
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
            rows.append({"dataset": skill, "messages": messages})
    rng.shuffle(rows)
    return rows


def demo_texts(n_per_skill: int = 200, seed: int = 0) -> list[str]:
    """Every message of the demo rows: the text a tokenizer for the demo is trained on."""
    return [m["content"] for row in demo_rows(n_per_skill, seed) for m in row["messages"]]


def write_demo_jsonl(path: str | Path, n_per_skill: int = 200, seed: int = 0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in demo_rows(n_per_skill, seed):
            f.write(json.dumps(row) + "\n")
    return path

