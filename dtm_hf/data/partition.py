"""The ways to split the kept rows into K portions: `random`, `kmeans` (over sentence embeddings), `source`.

Each method takes the reduced dataset and the distribute arguments and returns one cluster id per row plus
facts worth recording in stats.json.
"""

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator

import numpy as np

from ..errors import DtmError
from ..names import cluster_name

CHUNK_ROWS = 32768  # rows of text held in memory at a time while embedding

logger = logging.getLogger(__name__)


def random_split(data, args) -> tuple[np.ndarray, dict]:
    """A seeded shuffle dealt round-robin into K parts: sizes differ by at most one."""
    order = np.random.default_rng(args.seed).permutation(len(data))
    labels = np.empty(len(data), dtype=np.int64)
    labels[order] = np.arange(len(data)) % args.n_clusters
    return labels, {}


def _texts(data, field: str) -> Iterator[list[str]]:
    """The text to embed, chunk by chunk, read through Arrow: a row's last two messages are its first turn's
    user message and reply, located by the list offsets without building Python dicts."""
    import pyarrow as pa

    for batch in data.with_format("arrow").select_columns(["messages"]).iter(batch_size=CHUNK_ROWS):
        messages = batch["messages"].combine_chunks() if isinstance(batch["messages"], pa.ChunkedArray) \
            else batch["messages"]
        contents = messages.values.field("content")
        ends = np.asarray(messages.offsets)[1:]
        user = contents.take(pa.array(ends - 2)).to_pylist()
        reply = contents.take(pa.array(ends - 1)).to_pylist()
        if field == "instruction":
            yield user
        elif field == "response":
            yield reply
        else:
            yield [f"{u}\n\n{r}" for u, r in zip(user, reply, strict=True)]


def kmeans_split(data, args) -> tuple[np.ndarray, dict]:
    """k-means (scikit-learn, seeded) over L2-normalised embeddings of the instruction, response or both."""
    from sklearn.cluster import KMeans

    from .embeddings import Encoder

    if args.embed_field not in ("instruction", "response", "both"):
        raise DtmError(f"unknown --embed_field {args.embed_field!r}; choose instruction, response or both")
    start = time.perf_counter()
    encoder = Encoder(args.embedding_model, args.embedding_backend, args.embedding_batch_size)
    vectors = encoder.encode_chunks(_texts(data, args.embed_field), total=len(data))
    embedded = time.perf_counter()
    logger.info(f"Clustering {len(data)} rows into {args.n_clusters} clusters with k-means")
    kmeans = KMeans(n_clusters=args.n_clusters, random_state=args.seed, n_init=3).fit(vectors)
    info = {
        "embedding_dim": int(vectors.shape[1]),
        "inertia": float(kmeans.inertia_),
        "timings_s": {"embed": embedded - start, "cluster": time.perf_counter() - embedded},
    }
    return kmeans.labels_.astype(np.int64), info


def source_split(data, args) -> tuple[np.ndarray, dict]:
    """One part per source, or (with K below the number of sources) K parts of whole sources, balanced by size."""
    if "source" not in data.column_names:
        raise DtmError(f"--method source needs the column {args.source_column!r}, which the data does not have")
    sources = data.data.column("source").to_pylist()
    counts = Counter(sources)
    names = sorted(counts, key=str)
    k = args.n_clusters or len(names)
    if k > len(names):
        raise DtmError(f"--n_clusters {k} is more than the {len(names)} sources in {args.source_column!r}; "
                       "lower it or leave it out for one cluster per source")
    groups: list[list] = [[] for _ in range(k)]
    loads = [0] * k
    # Largest source first into the lightest part (LPT), ties broken by name for determinism.
    for name in sorted(names, key=lambda n: (-counts[n], str(n))) if k < len(names) else names:
        part = min(range(k), key=lambda i: (loads[i], i))
        groups[part].append(name)
        loads[part] += counts[name]
    cluster_of = {name: i for i, group in enumerate(groups) for name in group}
    labels = np.array([cluster_of[s] for s in sources], dtype=np.int64)
    return labels, {"cluster_sources": {cluster_name(i): [str(n) for n in group] for i, group in enumerate(groups)}}


METHODS: dict[str, Callable] = {"random": random_split, "kmeans": kmeans_split, "source": source_split}
