"""Which rows a sub-model trains on: all of its configs' rows but those held out for evaluation (a seeded hash of
the input row index), then the first `data_ratio` of a seeded shuffle.

The held-out choice depends on the row only, never on the config it sits in, so a row held out of `cluster_2` is
also held out of `all`, and training and evaluation agree without exchanging lists.
"""

import hashlib


def is_held_out(row: int, fraction: float, seed: int = 0) -> bool:
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(f"{seed}:{row}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


def select_rows(data, held_out: float, seed: int, data_ratio: float):
    """Drop the held-out rows, then keep the first `data_ratio` of a seeded shuffle (as the paper's code did).
    Returns (the rows to train on, `messages` and `row`; the number held out)."""
    keep = [i for i, row in enumerate(data["row"]) if not is_held_out(row, held_out, seed)]
    held = len(data) - len(keep)
    data = data.select(keep)
    if data_ratio < 1:
        data = data.shuffle(seed=seed).select(range(round(len(data) * data_ratio)))
    return data.select_columns(["messages", "row"]), held
