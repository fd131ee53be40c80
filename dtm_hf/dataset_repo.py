"""Writes the distribute output: a folder shaped like a Hub dataset repository.

    cluster_0/train-00000-of-00001-<digest>.parquet ... cluster_{K-1}/...   all/...
    README.md (dataset card whose YAML lists the configs)   clusters.json   stats.json   stats.png

`datasets.load_dataset(FOLDER, "cluster_0")` works on the folder itself and, after an upload, on the repo.
"""

import hashlib
import json
import math
from pathlib import Path

import numpy as np

MAX_SHARD_BYTES = 500 * 2**20


def config_names(n_clusters: int) -> list[str]:
    return [f"cluster_{i}" for i in range(n_clusters)] + ["all"]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(2**24):
            digest.update(chunk)
    return digest.hexdigest()


def _write_config(data, folder: Path, name: str, total_bytes: int, total_rows: int) -> list[str]:
    """Parquet shards named with a digest of their bytes, so that `datasets`, which caches a local folder by its
    name and its YAML `data_files` alone, can never serve an older output's rows for a new one."""
    shards = max(1, math.ceil(total_bytes * len(data) / max(total_rows, 1) / MAX_SHARD_BYTES))
    (folder / name).mkdir()
    paths = []
    for i in range(shards):
        tmp = folder / name / f"shard-{i}.tmp"
        data.shard(shards, i, contiguous=True).to_parquet(str(tmp))
        digest = _sha256(tmp)[:16]
        path = f"{name}/train-{i:05d}-of-{shards:05d}-{digest}.parquet"
        tmp.rename(folder / path)
        paths.append(path)
    return paths


def write_configs(data, labels: np.ndarray, folder: Path) -> dict[str, list[str]]:
    """One parquet config per cluster and `all`; rows keep their input order, with a `cluster` column.
    Returns each config's files, relative to `folder`."""
    from tqdm.auto import tqdm

    data = data.add_column("cluster", labels.tolist())
    total_bytes, n_clusters = data.data.nbytes, int(labels.max()) + 1
    files = {}
    for cluster in tqdm(range(n_clusters), desc="Writing cluster configs"):
        subset = data.select(np.flatnonzero(labels == cluster))
        files[f"cluster_{cluster}"] = _write_config(subset, folder, f"cluster_{cluster}", total_bytes, len(data))
    files["all"] = _write_config(data, folder, "all", total_bytes, len(data))
    return files


def _card_body(stats: dict) -> str:
    k = stats["n_clusters"]
    method = stats["method"]
    how = {
        "random": "a seeded random split into parts whose sizes differ by at most one",
        "kmeans": (f"k-means over L2-normalised `{stats.get('embedding_model')}` embeddings "
                   f"({stats.get('embedding_backend')} backend) of the {stats.get('embed_field')}"),
        "source": f"whole sources of the column `{stats.get('source_column')}`",
    }[method]
    sizes = "\n".join(f"| `cluster_{i}` | {n} |" for i, n in enumerate(stats["sizes"]))
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
    DatasetCard(f"---\n{data.to_yaml()}\n---\n{_card_body(stats)}").save(folder / "README.md")


def write_stats_plot(folder: Path, stats: dict) -> None:
    """A stacked bar chart of cluster sizes by source, like the paper's statistics figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clusters = [f"cluster_{i}" for i in range(stats["n_clusters"])]
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


def write_metadata(folder: Path, labels: np.ndarray, stats: dict, files: dict[str, list[str]]) -> None:
    (folder / "clusters.json").write_text(json.dumps(labels.tolist()))
    (folder / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    write_card(folder, stats, files)
    write_stats_plot(folder, stats)
