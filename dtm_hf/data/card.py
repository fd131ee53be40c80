"""The distribute output's card (`README.md`, whose YAML lists the configs, with a table of what is in each
cluster) and its chart of cluster sizes by source (`stats.png`)."""

import re
from pathlib import Path

import numpy as np

from ..hub import card_text, display_ref
from ..names import ALL, cluster_name, cluster_names, config_names
from .palette import distinct_colors, text_color

EMBEDDED = {"instruction": "instruction", "response": "response", "both": "instruction and the response"}
CARD_TERMS = 5
CARD_EXAMPLE_CHARS = 100
CARD_SOURCES = 3


def _cell(text: str, limit: int | None = None) -> str:
    """`text` on one line, safe inside a Markdown table cell."""
    text = re.sub(r"\s+", " ", text).strip()
    if limit and len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _how(stats: dict) -> str:
    embeddings = (f"L2-normalised `{display_ref(str(stats.get('embedding_model')))}` embeddings "
                  f"({stats.get('embedding_backend')} backend) of the {EMBEDDED.get(stats.get('embed_field'))}")
    return {
        "random": "a seeded random split into parts whose sizes differ by at most one",
        "kmeans": f"k-means over {embeddings}",
        "balanced_kmeans": (f"balanced k-means over {embeddings}: k-means, then iterations that assign the rows "
                            "to the centroids under equal capacities, as c-BTM does, so that sizes differ by at "
                            "most one"),
        "source": f"whole sources of the column `{stats.get('source_column')}`",
    }[stats["method"]]


def _balance_line(stats: dict) -> str:
    balance = stats.get("balance")
    if not balance:
        return ""
    change = round(balance["cost_increase"], 4) + 0.0  # no "-0.00%"
    return (f"- Balance: plain k-means gave sizes {balance['kmeans_sizes']}; balancing them changed the mean "
            f"distance to the assigned centroid by {change:+.2%} ({balance['kmeans_mean_distance']:.4f} to "
            f"{balance['mean_distance']:.4f}) in {balance['iterations']} iterations\n")


def _cluster_table(stats: dict) -> str:
    clusters = stats["clusters"]
    with_sources = len({s for c in clusters.values() for s in c["sources"]}) > 1
    head = ["config", "rows", *(["sources"] if with_sources else []), "top terms", f"examples ({stats['cluster_examples']})"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for i in range(stats["n_clusters"]):
        name = cluster_name(i)
        cluster = clusters[name]
        sources = list(cluster["sources"].items())
        listed = sources if len(sources) <= CARD_SOURCES + 1 else sources[:CARD_SOURCES]
        shown = ", ".join(f"{_cell(s)} {v['share_of_cluster']:.0%}" for s, v in listed)
        more = f", {len(sources) - len(listed)} more" if len(sources) > len(listed) else ""
        cells = [f"`{name}`", str(cluster["rows"]), *([shown + more] if with_sources else []),
                 _cell(", ".join(cluster["top_terms"][:CARD_TERMS])),
                 "<br>".join(_cell(e["instruction"], CARD_EXAMPLE_CHARS) for e in cluster["examples"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("| " + " | ".join([f"`{ALL}`", str(stats["kept_rows"])] + [""] * (len(head) - 2)) + " |")
    return "\n".join(lines)


def _map_note(stats: dict) -> str:
    if "map" not in stats:
        return ""
    return (f"\n![map of the clusters](map.png)\n\n`map.png`: a {stats['map']['projection'].upper()} projection of "
            f"{stats['map']['rows']} rows' `{display_ref(stats['embedding_model'])}` embeddings "
            f"({stats['embedding_backend']} backend) of the {EMBEDDED[stats['embed_field']]}, coloured by cluster, "
            "each cluster's top terms by its centre.\n")


def card_title(stats: dict) -> str:
    return f"{display_ref(stats['input'])} in {stats['n_clusters']} clusters"


def _card_body(stats: dict, ref: str) -> str:
    k = stats["n_clusters"]
    skipped = ", ".join(f"{reason}: {n}" for reason, n in stats["skipped"].items()) or "none"
    return f"""
# {card_title(stats)}

Instruction data distributed for [Disperse-Then-Merge](https://aclanthology.org/2024.findings-acl.175/)
(Fu et al., Findings of ACL 2024) by `dtm-hf distribute`: one config per portion, `cluster_0` to
`cluster_{k - 1}`, and `all` with every row. Each row holds the first turn of a conversation as `messages`
(ready for TRL's `SFTTrainer`), its `row` index in the input, its `cluster` and, when the input had one, its
`source`.

## How it was split

- Input: `{display_ref(stats['input'])}`
- Method: `{stats['method']}`, {_how(stats)}
{_balance_line(stats)}- Seed: {stats['seed']}
- Input rows: {stats['input_rows']}; kept: {stats['kept_rows']}; skipped: {skipped}

## What is in each cluster

Top terms: the words whose TF-IDF weight over the instructions is highest in the cluster against the others.

{_cluster_table(stats)}

![cluster sizes by source](stats.png)
{_map_note(stats)}
`clusters.json` lists the cluster of every kept row in input order; `stats.json` has the full statistics,
with ten top terms per cluster and each cluster's share of every source.

## Use

```python
from datasets import load_dataset

cluster_0 = load_dataset("{ref}", "cluster_0", split="train")
```
"""


def write_card(folder: Path, stats: dict, files: dict[str, list[str]], ref: str) -> None:
    """The card; `ref` is what `load_dataset` takes in its usage snippet (the Hub id, or the local folder)."""
    from huggingface_hub import DatasetCard, DatasetCardData

    configs = [{"config_name": name, "data_files": [{"split": "train", "path": files[name]}]}
               for name in config_names(stats["n_clusters"])]
    data = DatasetCardData(
        configs=configs,
        tags=["dtm-hf", "disperse-then-merge", "instruction-tuning"],
        task_categories=["text-generation"],
        pretty_name=card_title(stats),
    )
    DatasetCard(card_text(data, _card_body(stats, ref))).save(folder / "README.md")


def write_stats_plot(folder: Path, stats: dict) -> None:
    """A stacked bar chart of cluster sizes by source, like the paper's statistics figure: one colour per source,
    each bar's total above it and the count of every segment tall enough to hold it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clusters = cluster_names(stats["n_clusters"])
    by_source = stats["cluster_source_counts"]
    sources = sorted({s for counts in by_source.values() for s in counts})
    colors = distinct_colors(len(sources))
    fig, ax = plt.subplots(figsize=(max(6.5, 1.1 * len(clusters) + 3), 4.8))
    bottom = np.zeros(len(clusters))
    tallest = max(stats["sizes"])
    for source, color in zip(sources, colors, strict=True):
        heights = np.array([by_source[c].get(source, 0) for c in clusters])
        bars = ax.bar(clusters, heights, bottom=bottom, label=source, color=color, edgecolor="white", linewidth=0.5)
        # A segment's count, where it fits and is not the whole bar (whose total is written above it).
        labels = [f"{h}" if 0.06 * tallest <= h < total else "" for h, total in zip(heights, stats["sizes"], strict=True)]
        ax.bar_label(bars, labels=labels, label_type="center", fontsize=7, color=text_color(color))
        bottom += heights
    totals = ax.bar(clusters, np.zeros(len(clusters)), bottom=bottom)  # invisible, to label each bar's top
    ax.bar_label(totals, labels=[str(n) for n in stats["sizes"]], padding=2, fontsize=9, fontweight="bold")
    ax.set_ylim(0, tallest * 1.1)
    ax.set_ylabel("rows")
    ax.set_title(f"{stats['method']} split of {stats['kept_rows']} rows into {stats['n_clusters']} clusters")
    ax.spines[["top", "right"]].set_visible(False)
    if len(sources) > 1:  # listed top to bottom as the segments are stacked
        handles, names = ax.get_legend_handles_labels()
        ax.legend(handles[::-1], names[::-1], title="source", fontsize="small", bbox_to_anchor=(1.01, 1),
                  loc="upper left")
    if len(clusters) > 8:
        ax.tick_params(axis="x", labelrotation=45)
    fig.tight_layout()
    fig.savefig(folder / "stats.png", dpi=120)
    plt.close(fig)
