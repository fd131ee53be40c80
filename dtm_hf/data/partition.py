"""The ways to split the kept rows into K portions: `random`, `kmeans` and `balanced_kmeans` (over sentence
embeddings), `source`.

Each method takes the reduced dataset and the distribute arguments and returns a `Split`: one cluster id per row,
facts worth recording in stats.json and, for the embedding methods, the embeddings and centroids (which the
cluster descriptions and the map reuse).
"""

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from ..errors import DtmError
from ..names import cluster_name

CHUNK_ROWS = 32768  # rows of text held in memory at a time while embedding

logger = logging.getLogger(__name__)


@dataclass
class Split:
    labels: np.ndarray  # the cluster of each row, int64
    info: dict = field(default_factory=dict)  # facts for stats.json; `timings_s` is taken out of it
    vectors: np.ndarray | None = None  # (rows, dim) L2-normalised embeddings, for the embedding methods
    centroids: np.ndarray | None = None  # (K, dim)


def random_split(data, args) -> Split:
    """A seeded shuffle dealt round-robin into K parts: sizes differ by at most one."""
    order = np.random.default_rng(args.seed).permutation(len(data))
    labels = np.empty(len(data), dtype=np.int64)
    labels[order] = np.arange(len(data)) % args.n_clusters
    return Split(labels)


def first_turn_texts(data, which: str) -> Iterator[list[str]]:
    """The instruction, the response or both of each row, chunk by chunk, read through Arrow: a row's last two messages are its first turn's
    user message and reply, located by the list offsets without building Python dicts."""
    import pyarrow as pa

    for batch in data.with_format("arrow").select_columns(["messages"]).iter(batch_size=CHUNK_ROWS):
        messages = batch["messages"].combine_chunks() if isinstance(batch["messages"], pa.ChunkedArray) \
            else batch["messages"]
        contents = messages.values.field("content")
        ends = np.asarray(messages.offsets)[1:]
        user = contents.take(pa.array(ends - 2)).to_pylist()
        reply = contents.take(pa.array(ends - 1)).to_pylist()
        if which == "instruction":
            yield user
        elif which == "response":
            yield reply
        else:
            yield [f"{u}\n\n{r}" for u, r in zip(user, reply, strict=True)]


def embed(data, args) -> np.ndarray:
    """L2-normalised embeddings of every row's `--embed_field`, with the `--embedding_*` options."""
    from .embeddings import Encoder

    encoder = Encoder(args.embedding_model, args.embedding_backend, args.embedding_batch_size)
    return encoder.encode_chunks(first_turn_texts(data, args.embed_field), total=len(data))


def _kmeans(data, args):
    """The embeddings, scikit-learn's k-means over them (seeded, 3 inits) and the timings of both."""
    from sklearn.cluster import KMeans

    start = time.perf_counter()
    vectors = embed(data, args)
    embedded = time.perf_counter()
    logger.info(f"Clustering {len(data)} rows into {args.n_clusters} clusters with k-means")
    kmeans = KMeans(n_clusters=args.n_clusters, random_state=args.seed, n_init=3).fit(vectors)
    return vectors, kmeans, {"embed": embedded - start, "cluster": time.perf_counter() - embedded}


def kmeans_split(data, args) -> Split:
    """k-means (scikit-learn, seeded) over L2-normalised embeddings of the instruction, response or both."""
    vectors, kmeans, timings = _kmeans(data, args)
    info = {"embedding_dim": int(vectors.shape[1]), "inertia": float(kmeans.inertia_), "timings_s": timings}
    return Split(kmeans.labels_.astype(np.int64), info, vectors, kmeans.cluster_centers_)


def balanced_kmeans_split(data, args) -> Split:
    """k-means, then balanced iterations from its centroids: sizes differ by at most one (see balanced.py)."""
    from .balanced import balanced_kmeans, squared_distances

    vectors, kmeans, timings = _kmeans(data, args)
    start = time.perf_counter()
    logger.info(f"Balancing the {args.n_clusters} clusters (k-means gave sizes "
                f"{np.bincount(kmeans.labels_, minlength=args.n_clusters).tolist()})")
    labels, centroids, iterations = balanced_kmeans(vectors, kmeans.cluster_centers_)
    timings["balance"] = time.perf_counter() - start
    rows = np.arange(len(labels))
    plain = np.sqrt(squared_distances(vectors, kmeans.cluster_centers_)[rows, kmeans.labels_])
    balanced = squared_distances(vectors, centroids)[rows, labels]
    info = {
        "embedding_dim": int(vectors.shape[1]),
        "inertia": float(balanced.sum()),
        "balance": {
            "kmeans_sizes": np.bincount(kmeans.labels_, minlength=args.n_clusters).tolist(),
            "kmeans_mean_distance": float(plain.mean()),
            "mean_distance": float(np.sqrt(balanced).mean()),
            "cost_increase": float(np.sqrt(balanced).mean() / plain.mean() - 1),
            "iterations": iterations,
        },
        "timings_s": timings,
    }
    return Split(labels, info, vectors, centroids)


def source_split(data, args) -> Split:
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
    return Split(labels, {"cluster_sources": {cluster_name(i): [str(n) for n in group] for i, group in enumerate(groups)}})


METHODS: dict[str, Callable] = {"random": random_split, "kmeans": kmeans_split,
                                "balanced_kmeans": balanced_kmeans_split, "source": source_split}
