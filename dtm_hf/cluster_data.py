"""The training step's input: a `dtm-hf distribute` output (a folder or its Hub dataset repo) and its clusters.

A distribute output is recognised by its card (`README.md`, whose YAML lists the configs `cluster_0` ...
`cluster_{K-1}` and `all`) and its `stats.json`. A cluster selection names one config (`cluster_3`, `all`), a
union of clusters (`cluster_0+cluster_1`) or every cluster in turn (`all_clusters`).
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import DtmError

ALL_CLUSTERS = "all_clusters"
ALL = "all"
CLUSTER = re.compile(r"cluster_(\d+)")


@dataclass
class DistributeOutput:
    ref: str  # what `load_dataset` takes: an absolute folder or a Hub dataset id
    is_local: bool
    clusters: list[str]  # cluster_0 ... cluster_{K-1}
    stats: dict


def _metadata_files(dataset: str) -> tuple[str, bool, Path, Path]:
    """(ref, is_local, README.md, stats.json) of a local folder or a Hub dataset repo."""
    path = Path(dataset).expanduser()
    if path.is_dir():
        return str(path.absolute()), True, path / "README.md", path / "stats.json"
    if path.exists() or not re.fullmatch(r"[\w.-]+/[\w.-]+", dataset) or dataset.startswith((".", "~")):
        raise DtmError(f"--dataset {dataset} is not a folder nor a Hub dataset id; pass the output of `dtm-hf "
                       "distribute` (its folder or its Hub repo)")
    from huggingface_hub import hf_hub_download

    files = []
    for name in ("README.md", "stats.json"):
        try:
            files.append(Path(hf_hub_download(dataset, name, repo_type="dataset")))
        except Exception as err:  # noqa: BLE001 - a repo without these files is not a distribute output
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise DtmError(f"cannot read {name} of the Hub dataset {dataset!r} ({reason}); pass the output of "
                           "`dtm-hf distribute`") from err
    return dataset, False, files[0], files[1]


def read_distribute_output(dataset: str) -> DistributeOutput:
    """Check that `dataset` is a distribute output and list its clusters; reads metadata only."""
    from huggingface_hub import DatasetCard

    ref, is_local, card, stats_file = _metadata_files(dataset)
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
    return DistributeOutput(ref=ref, is_local=is_local, clusters=clusters, stats=stats)


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
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DtmError(f"cannot load {'+'.join(configs)} of {source.ref}: {reason}") from err
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)


def select_rows(data, held_out: float, seed: int, data_ratio: float):
    """Drop the held-out rows, then keep the first `data_ratio` of a seeded shuffle (as the paper's code did).
    Returns (rows to train on, with `messages` only; number held out)."""
    from .held_out import is_held_out

    keep = [i for i, row in enumerate(data["row"]) if not is_held_out(row, held_out, seed)]
    held = len(data) - len(keep)
    data = data.select(keep)
    if data_ratio < 1:
        data = data.shuffle(seed=seed).select(range(round(len(data) * data_ratio)))
    return data.select_columns(["messages"]), held
