"""The distribute output's card (`README.md`, whose YAML lists the configs) and its chart of cluster sizes by
source (`stats.png`)."""

from pathlib import Path

import numpy as np

from ..hub import card_text
from ..names import cluster_name, cluster_names, config_names


def _card_body(stats: dict) -> str:
    k = stats["n_clusters"]
    method = stats["method"]
    how = {
        "random": "a seeded random split into parts whose sizes differ by at most one",
        "kmeans": (f"k-means over L2-normalised `{stats.get('embedding_model')}` embeddings "
                   f"({stats.get('embedding_backend')} backend) of the {stats.get('embed_field')}"),
        "source": f"whole sources of the column `{stats.get('source_column')}`",
    }[method]
    sizes = "\n".join(f"| `{cluster_name(i)}` | {n} |" for i, n in enumerate(stats["sizes"]))
    skipped = ", ".join(f"{reason}: {n}" for reason, n in stats["skipped"].items()) or "none"
    return f"""
# {stats['input']} in {k} clusters

Instruction data distributed for [Disperse-Then-Merge](https://aclanthology.org/2024.findings-acl.175/)
(Fu et al., Findings of ACL 2024) by `dtm-hf distribute`: one config per portion, `cluster_0` to
`cluster_{k - 1}`, and `all` with every row. Each row holds the first turn of a conversation as `messages`
(ready for TRL's `SFTTrainer`), its `row` index in the input, its `cluster` and, when the input had one, its
`source`.

## How it was split

- Method: `{method}`, {how}
- Seed: {stats['seed']}
- Input rows: {stats['input_rows']}; kept: {stats['kept_rows']}; skipped: {skipped}

| config | rows |
|---|---|
{sizes}
| `all` | {stats['kept_rows']} |

![cluster sizes by source](stats.png)

`clusters.json` lists the cluster of every kept row in input order; `stats.json` has the full statistics.

## Use

```python
from datasets import load_dataset

cluster_0 = load_dataset("REPO_ID", "cluster_0", split="train")
```
"""


def write_card(folder: Path, stats: dict, files: dict[str, list[str]]) -> None:
    from huggingface_hub import DatasetCard, DatasetCardData

    configs = [{"config_name": name, "data_files": [{"split": "train", "path": files[name]}]}
               for name in config_names(stats["n_clusters"])]
    data = DatasetCardData(
        configs=configs,
        tags=["dtm-hf", "disperse-then-merge", "instruction-tuning"],
        task_categories=["text-generation"],
        pretty_name=f"{stats['input']} in {stats['n_clusters']} clusters",
    )
    DatasetCard(card_text(data, _card_body(stats))).save(folder / "README.md")


def write_stats_plot(folder: Path, stats: dict) -> None:
    """A stacked bar chart of cluster sizes by source, like the paper's statistics figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clusters = cluster_names(stats["n_clusters"])
    by_source = stats["cluster_source_counts"]
    sources = sorted({s for counts in by_source.values() for s in counts})
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(clusters)), 4.5))
    bottom = np.zeros(len(clusters))
    cmap = plt.get_cmap("tab20")
    for i, source in enumerate(sources):
        heights = np.array([by_source[c].get(source, 0) for c in clusters])
        ax.bar(clusters, heights, bottom=bottom, label=source, color=cmap(i % 20))
        bottom += heights
    ax.set_ylabel("rows")
    ax.set_title(f"{stats['method']} split of {stats['kept_rows']} rows into {stats['n_clusters']} clusters")
    if len(sources) > 1:
        ax.legend(title="source", fontsize="small", bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    fig.savefig(folder / "stats.png", dpi=120)
    plt.close(fig)
