"""What is in each cluster: its size, its sources, its top terms and three of its instructions.

Top terms come from TF-IDF over the instructions (scikit-learn) of a sample of each cluster: the terms whose
mean weight in the cluster most exceeds their mean weight in the other clusters' sample. The examples are the
three instructions nearest the cluster's centroid for the k-means methods, three random ones otherwise.
"""

import re

import numpy as np

from ..names import cluster_name
from .partition import Split, first_turn_texts

SAMPLE_ROWS = 20_000  # instructions read for the terms, shared among the clusters
N_TERMS = 10
N_EXAMPLES = 3
CANDIDATES = 20  # rows read per cluster to find N_EXAMPLES distinct instructions
EXAMPLE_CHARS = 300
TERM_CHARS = 2000  # of each instruction, for TF-IDF
# Words of two or more characters with at least one letter: numbers alone say little about a topic.
TOKEN_PATTERN = r"(?u)\b(?=\w*[^\W\d_])\w\w+\b"


def instructions(data) -> list[str]:
    """Every row's first-turn instruction."""
    return [text for chunk in first_turn_texts(data, "instruction") for text in chunk]


def one_line(text: str, limit: int = EXAMPLE_CHARS) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _term_sample(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Up to SAMPLE_ROWS / K rows of each cluster (at least 100), seeded, as sorted row indices."""
    per_cluster = max(SAMPLE_ROWS // k, 100)
    rng = np.random.default_rng(seed)
    picked = []
    for c in range(k):
        members = np.flatnonzero(labels == c)
        picked.append(members if members.size <= per_cluster else rng.choice(members, per_cluster, replace=False))
    return np.sort(np.concatenate(picked))


def top_terms(texts: list[str], labels: np.ndarray, k: int) -> list[list[str]]:
    """Each cluster's N_TERMS terms whose mean TF-IDF weight most exceeds their mean over the other rows."""
    from scipy.sparse import csr_matrix
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(stop_words="english", token_pattern=TOKEN_PATTERN, sublinear_tf=True,
                                 max_features=50_000, dtype=np.float32)
    try:
        weights = vectorizer.fit_transform([t[:TERM_CHARS] for t in texts])
    except ValueError:  # no word at all, e.g. instructions that are only numbers
        return [[] for _ in range(k)]
    vocabulary = vectorizer.get_feature_names_out()
    members = csr_matrix((np.ones(labels.size, dtype=np.float32), (labels, np.arange(labels.size))),
                         shape=(k, labels.size))
    inside = np.asarray((members @ weights).todense(), dtype=np.float64)  # (K, terms): each cluster's sum
    counts = np.bincount(labels, minlength=k)[:, None]
    score = inside / np.maximum(counts, 1) - (inside.sum(axis=0) - inside) / np.maximum(labels.size - counts, 1)
    terms = []
    for c in range(k):
        best = [i for i in np.argsort(-score[c], kind="stable")[:N_TERMS] if score[c, i] > 0]
        terms.append([str(vocabulary[i]) for i in best])
    return terms


def _candidates(split: Split, k: int, seed: int) -> tuple[list[np.ndarray], str]:
    """Each cluster's candidate example rows, best first, and how they were chosen."""
    labels = split.labels
    if split.centroids is not None:
        from .balanced import squared_distances

        distance = squared_distances(split.vectors, split.centroids)[np.arange(labels.size), labels]
        order = np.lexsort((np.arange(labels.size), distance, labels))  # by cluster, then distance, then row
        starts = np.searchsorted(labels[order], np.arange(k))
        ends = np.r_[starts[1:], labels.size]
        return [order[s : min(s + CANDIDATES, e)] for s, e in zip(starts, ends, strict=True)], "nearest to the centroid"
    rng = np.random.default_rng(seed)
    return [rng.permutation(np.flatnonzero(labels == c))[:CANDIDATES] for c in range(k)], "random"


def _examples(data, candidates: list[np.ndarray]) -> list[list[dict]]:
    """Each cluster's first N_EXAMPLES candidates with distinct instructions, as {row, instruction}."""
    wanted = np.unique(np.concatenate(candidates))
    chosen = data.select(wanted)
    text_of = dict(zip(wanted.tolist(), instructions(chosen), strict=True))
    input_row = dict(zip(wanted.tolist(), chosen["row"], strict=True))
    examples = []
    for rows in candidates:
        seen, picked = set(), []
        for i in rows.tolist():
            text = one_line(text_of[i])
            if text not in seen and len(picked) < N_EXAMPLES:
                seen.add(text)
                picked.append({"row": input_row[i], "instruction": text})
        examples.append(picked)
    return examples


def describe_clusters(data, split: Split, k: int, source_counts: dict[str, dict[str, int]], seed: int
                      ) -> tuple[dict, str]:
    """({cluster_name: {rows, sources, top_terms, examples}}, how the examples were chosen)."""
    labels = split.labels
    sample = _term_sample(labels, k, seed)
    terms = top_terms(instructions(data.select(sample)), labels[sample], k)
    candidates, chosen = _candidates(split, k, seed)
    examples = _examples(data, candidates)
    source_totals: dict[str, int] = {}
    for counts in source_counts.values():
        for source, n in counts.items():
            source_totals[source] = source_totals.get(source, 0) + n
    clusters = {}
    for c in range(k):
        name = cluster_name(c)
        size = int((labels == c).sum())
        by_source = sorted(source_counts[name].items(), key=lambda item: (-item[1], item[0]))
        clusters[name] = {
            "rows": size,
            "sources": {s: {"rows": n, "share_of_cluster": round(n / size, 4),
                            "share_of_source": round(n / source_totals[s], 4)} for s, n in by_source},
            "top_terms": terms[c],
            "examples": examples[c],
        }
    return clusters, chosen
