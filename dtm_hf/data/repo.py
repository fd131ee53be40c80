"""The distribute output, written and read: a folder shaped like a Hub dataset repository.

    cluster_0/train-00000-of-00001-<digest>.parquet ... cluster_{K-1}/...   all/...
    README.md (dataset card whose YAML lists the configs)   clusters.json   stats.json   stats.png   [map.png]

`datasets.load_dataset(FOLDER, "cluster_0")` works on the folder itself and, after an upload, on the repo. The
reader recognises an output by its card's configs and its `stats.json`, locally or on the Hub, and loads a
training selection: one config (`cluster_3`, `all`), a union (`cluster_0+cluster_1`) or every cluster in turn
(`all_clusters`).
"""

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DtmError, first_line
from ..names import ALL, ALL_CLUSTERS, CLUSTER, cluster_name
from .card import write_card, write_stats_plot

MAX_SHARD_BYTES = 500 * 2**20


# ---- Writing ------------------------------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
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
        digest = sha256_file(tmp)[:16]
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
        name = cluster_name(cluster)
        files[name] = _write_config(subset, folder, name, total_bytes, len(data))
    files[ALL] = _write_config(data, folder, ALL, total_bytes, len(data))
    return files


def write_metadata(folder: Path, labels: np.ndarray, stats: dict, files: dict[str, list[str]], ref: str) -> None:
    """clusters.json, stats.json, the card (whose usage snippet loads `ref`) and stats.png."""
    (folder / "clusters.json").write_text(json.dumps(labels.tolist()))
    (folder / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    write_card(folder, stats, files, ref)
    write_stats_plot(folder, stats)


# ---- Reading ------------------------------------------------------------------------------------------------------


@dataclass
class DistributeOutput:
    ref: str  # what `load_dataset` takes: an absolute folder or a Hub dataset id
    clusters: list[str]  # cluster_0 ... cluster_{K-1}
    stats: dict


def _metadata_files(dataset: str) -> tuple[str, Path, Path]:
    """(ref, README.md, stats.json) of a local folder or a Hub dataset repo."""
    from ..hub import download, local_or_hub

    ref, local = local_or_hub(dataset, "--dataset", "--dataset (the output of `dtm-hf distribute`)")
    folder = Path(ref) if local else download(dataset, "dataset", ["README.md", "stats.json"], repo_type="dataset")
    return ref, folder / "README.md", folder / "stats.json"


def read_distribute_output(dataset: str) -> DistributeOutput:
    """Check that `dataset` is a distribute output and list its clusters; reads metadata only."""
    from huggingface_hub import DatasetCard

    ref, card, stats_file = _metadata_files(dataset)
    not_ours = (f"{dataset} is not a `dtm-hf distribute` output (it needs README.md with configs cluster_0 ... and "
                "all, and stats.json); run `dtm-hf distribute` first and pass its output folder or Hub repo")
    if not card.is_file() or not stats_file.is_file():
        raise DtmError(not_ours)
    try:
        configs = DatasetCard.load(card).data.to_dict().get("configs") or []
        names = [c["config_name"] for c in configs]
        stats = json.loads(stats_file.read_text())
    except (ValueError, KeyError, TypeError) as err:
        raise DtmError(not_ours) from err
    clusters = sorted((n for n in names if CLUSTER.fullmatch(n)), key=lambda n: int(n.split("_")[1]))
    if not clusters or ALL not in names or stats.get("n_clusters") != len(clusters):
        raise DtmError(not_ours)
    return DistributeOutput(ref=ref, clusters=clusters, stats=stats)


def expand_clusters(selection: str, source: DistributeOutput, baseline: bool) -> list[list[str]]:
    """The runs a selection asks for, each as the configs it trains on: `cluster_0+cluster_1` is one run on two."""
    known = f"{', '.join(source.clusters)}, {ALL}, {ALL_CLUSTERS} or a union such as cluster_0+cluster_1"
    if not selection:
        raise DtmError(f"--cluster is required: {known}")
    if selection == ALL_CLUSTERS:
        runs = [[c] for c in source.clusters]
    elif selection == ALL:
        runs = [[ALL]]
    else:
        parts = selection.split("+")
        unknown = [p for p in parts if p not in source.clusters]
        if unknown:
            raise DtmError(f"unknown cluster {unknown[0]!r} in --cluster {selection}; {source.ref} has {known}")
        if len(set(parts)) < len(parts):
            raise DtmError(f"--cluster {selection} names a cluster twice")
        runs = [parts]
    if baseline and [ALL] not in runs:
        runs.append([ALL])
    return runs


def load_rows(source: DistributeOutput, configs: list[str]):
    """The configs' `train` splits, concatenated in the order given."""
    from datasets import concatenate_datasets, load_dataset

    try:
        parts = [load_dataset(source.ref, config, split="train") for config in configs]
    except Exception as err:  # noqa: BLE001 - an unreadable config is a broken input; say which
        raise DtmError(f"cannot load {'+'.join(configs)} of {source.ref}: {first_line(err)}") from err
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)
