"""Which rows are held out of training for evaluation: a seeded hash of the input row index.

The choice depends on the row only, never on the config it sits in, so a row held out of `cluster_2` is also
held out of `all`, and training and evaluation agree without exchanging lists.
"""

import hashlib


def is_held_out(row: int, fraction: float, seed: int = 0) -> bool:
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(f"{seed}:{row}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction
