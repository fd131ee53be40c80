"""Balanced k-means: k-means whose clusters differ in size by at most one row, as c-BTM (Gururangan et al., 2023)
clusters its data so that every expert trains on the same budget.

Each iteration assigns the rows to the centroids under fixed capacities (the ceiling or the floor of N/K) at the
least total squared distance, then moves each centroid to its rows' mean. The assignment is a transportation
problem of N rows to K clusters; c-BTM solves it with the auction algorithm over an N x N matrix (each cluster
copied N/K times). Here each cluster is one object with many identical slots (Bertsekas and Castanon's auction
for similar objects), which keeps the work and the memory at O(N x K).
"""

import numpy as np

MAX_ITER = 50
TOL = 1e-4  # stop when an iteration lowers the mean squared distance by less than this fraction
EPS_STEPS = 5  # epsilon scaling: from range/64 down by 8x per step, to range/262144


def capacities(n: int, k: int, demand: np.ndarray) -> np.ndarray:
    """floor(n/k) rows per cluster, plus one for the n mod k clusters in most demand (ties to the lower index)."""
    base, extra = divmod(n, k)
    cap = np.full(k, base, dtype=np.int64)
    cap[np.lexsort((np.arange(k), -demand))[:extra]] += 1
    return cap


def balanced_assignment(cost: np.ndarray, cap: np.ndarray) -> np.ndarray:
    """The cluster of each row minimising the total cost with exactly cap[k] rows in cluster k (to within
    N x epsilon of the optimum), by a Jacobi auction with epsilon scaling. Deterministic for the same input.

    Rows bid for a slot in their best cluster at its current price, offering the margin over their second best
    plus epsilon; a full cluster keeps its highest bids and frees the rows it outbids, which bid again. Each
    cluster's slots are kept sorted by price, so that a round costs O(rows bidding x K) plus the insertions."""
    n, k = cost.shape
    value = -cost.astype(np.float64)
    span = float(value.max() - value.min()) or 1.0
    floor = np.zeros(k)  # the price of a cluster's free slots
    for step in range(EPS_STEPS):
        eps = span / 64 / 8**step
        prices = [np.empty(0) for _ in range(k)]  # each cluster's holders, by price ascending
        holders = [np.empty(0, dtype=np.int64) for _ in range(k)]
        cheapest = floor.copy()
        bidders = np.arange(n)
        while bidders.size:
            gain = value[bidders] - cheapest
            best = gain.argmax(axis=1)
            rows = np.arange(bidders.size)
            first = gain[rows, best]
            gain[rows, best] = -np.inf
            bid = cheapest[best] + (first - gain.max(axis=1)) + eps
            order = np.lexsort((bid, best))
            best, bid, who = best[order], bid[order], bidders[order]
            starts = np.flatnonzero(np.r_[True, best[1:] != best[:-1]])
            outbid = []
            for start, end in zip(starts, np.r_[starts[1:], best.size], strict=True):
                c = best[start]
                at = np.searchsorted(prices[c], bid[start:end])
                prices[c] = np.insert(prices[c], at, bid[start:end])
                holders[c] = np.insert(holders[c], at, who[start:end])
                over = prices[c].size - cap[c]
                if over >= 0:
                    outbid.append(holders[c][:over])
                    prices[c], holders[c] = prices[c][over:], holders[c][over:]
                    cheapest[c] = prices[c][0]
            bidders = np.concatenate(outbid) if outbid else np.empty(0, dtype=np.int64)
        floor = cheapest  # the next, finer step starts from these prices
    labels = np.empty(n, dtype=np.int64)
    for c in range(k):
        labels[holders[c]] = c
    return labels


def squared_distances(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(N, K) squared Euclidean distances, in float64."""
    sq = np.einsum("ij,ij->i", vectors, vectors).astype(np.float64)[:, None]
    cross = (vectors @ centroids.T.astype(vectors.dtype)).astype(np.float64)
    return np.maximum(sq - 2 * cross + (centroids.astype(np.float64) ** 2).sum(axis=1), 0.0)


def cluster_means(vectors: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    from scipy.sparse import csr_matrix

    members = csr_matrix((np.ones(labels.size, dtype=np.float32), (labels, np.arange(labels.size))),
                         shape=(k, labels.size))
    sums = np.asarray(members @ vectors, dtype=np.float64)
    return sums / np.bincount(labels, minlength=k)[:, None]


def balanced_kmeans(vectors: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Balanced Lloyd iterations from `centroids` (plain k-means's): (labels, centroids, iterations)."""
    n, k = vectors.shape[0], centroids.shape[0]
    labels, last, iterations = None, np.inf, 0
    while iterations < MAX_ITER:
        iterations += 1
        cost = squared_distances(vectors, centroids)
        cap = capacities(n, k, np.bincount(cost.argmin(axis=1), minlength=k))
        new = balanced_assignment(cost, cap)
        mean = float(cost[np.arange(n), new].mean())
        done = labels is not None and (np.array_equal(new, labels) or mean > last * (1 - TOL))
        labels, last = new, mean
        centroids = cluster_means(vectors, labels, k)
        if done:
            break
    return labels, centroids, iterations
