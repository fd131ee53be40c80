"""`map.png`: a 2-D projection of a sample of the rows' embeddings, coloured by cluster, with each cluster's top
terms by its centre. PCA from scikit-learn, or UMAP when `umap-learn` is installed."""

import logging
from pathlib import Path

import numpy as np

from ..names import cluster_names
from .palette import distinct_colors
from .partition import Split, embed

MAP_ROWS = 20_000
MAP_TERMS = 3
LABEL_LIFT = 0.07  # axes fraction between a cluster's centre and its label

logger = logging.getLogger(__name__)


def map_sample(n: int, seed: int) -> np.ndarray:
    """At most MAP_ROWS row indices, seeded and sorted."""
    if n <= MAP_ROWS:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, MAP_ROWS, replace=False))


def project(vectors: np.ndarray, seed: int) -> tuple[np.ndarray, str, tuple[str, str]]:
    """(points, projection name, axis labels)."""
    try:
        import umap
    except ImportError:
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2, random_state=seed)
        points = pca.fit_transform(vectors)
        share = pca.explained_variance_ratio_
        return points, "pca", (f"PC1 ({share[0]:.0%} of the variance)", f"PC2 ({share[1]:.0%})")
    logger.info(f"Projecting {len(vectors)} embeddings with UMAP")
    points = umap.UMAP(n_components=2, metric="cosine", random_state=seed).fit_transform(vectors)
    return points, "umap", ("UMAP 1", "UMAP 2")


def write_map(path: Path, data, split: Split, args, clusters: dict) -> dict:
    """Draw the map of `split` to `path`; embeds the sample first for a split without embeddings (random,
    source). Returns what stats.json records about it."""
    k = len(clusters)
    sample = map_sample(len(split.labels), args.seed)
    if split.vectors is not None:
        vectors = split.vectors[sample]
    else:
        logger.info(f"Embedding {sample.size} rows for the map")
        vectors = embed(data.select(sample), args)
    points, projection, axes = project(vectors, args.seed)
    labels = split.labels[sample]
    _draw(path, points, labels, clusters, axes,
          f"{args.method} split into {k} clusters: {projection.upper()} of {sample.size} rows' embeddings")
    return {"projection": projection, "rows": int(sample.size)}


def _spread(spots: np.ndarray, width: float = 0.24, height: float = 0.07) -> np.ndarray:
    """Label positions (axes fractions) moved apart vertically until no two boxes of about `width` x `height`
    overlap: labels of clusters whose centres are close (or, in a random split, all alike) stay readable."""
    spots = spots.copy()
    spots[:, 0] = np.clip(spots[:, 0], width / 2, 1 - width / 2)  # inside the axes, clear of the legend
    for _ in range(200):
        moved = False
        for i in range(len(spots)):
            for j in range(i + 1, len(spots)):
                dx, dy = spots[j] - spots[i]
                if abs(dx) < width and abs(dy) < height:
                    push = (height - abs(dy)) / 2 + 1e-3
                    step = push if dy > 0 or (dy == 0 and j > i) else -push
                    spots[i, 1] -= step
                    spots[j, 1] += step
                    moved = True
        if not moved:
            break
    spots[:, 1] = np.clip(spots[:, 1], height / 2, 1 - height / 2)
    return spots


def _draw(path: Path, points: np.ndarray, labels: np.ndarray, clusters: dict, axes: tuple[str, str], title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = cluster_names(len(clusters))
    colors = distinct_colors(len(names))
    fig, ax = plt.subplots(figsize=(9, 7.5))
    size = float(np.clip(4000 / len(points), 2, 30))
    ax.scatter(points[:, 0], points[:, 1], c=[colors[c] for c in labels], s=size, alpha=0.55, linewidths=0,
               rasterized=True)
    present = [c for c in range(len(names)) if (labels == c).any()]
    centres = np.array([np.median(points[labels == c], axis=0) for c in present]).reshape(-1, 2)
    ax.scatter(centres[:, 0], centres[:, 1], marker="x", s=30, color="black", linewidths=1.2)
    ax.autoscale_view()
    # Each label sits a little above its centre, tied to it by a line, so that it hides none of a tight cluster.
    spots = _spread(ax.transLimits.transform(centres) + [0, LABEL_LIFT]) if len(present) else centres
    for c, centre, spot in zip(present, centres, spots, strict=True):
        terms = ", ".join(clusters[names[c]]["top_terms"][:MAP_TERMS])
        ax.annotate(f"{names[c]}\n{terms}" if terms else names[c], centre, xytext=spot, textcoords="axes fraction",
                    ha="center", va="center", fontsize=8.5, arrowprops={"arrowstyle": "-", "color": "0.3"},
                    bbox={"boxstyle": "round,pad=0.3", "facecolor": "white", "edgecolor": colors[c],
                          "linewidth": 2, "alpha": 0.85})
    if len(names) <= 20:
        handles = [plt.Line2D([], [], marker="o", linestyle="", color=colors[c], label=f"{name} "
                              f"({clusters[name]['rows']} rows)") for c, name in enumerate(names)]
        ax.legend(handles=handles, fontsize="small", bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
