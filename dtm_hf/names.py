"""Names every step agrees on: the distribute output's configs, the all-data baseline, the training marker.

A distribute output has the configs `cluster_0` ... `cluster_{K-1}` and `all` (every row). `dtm-hf train` writes
one folder per selection under its output root and marks a finished one with `dtm_train.json`, written last;
`dtm-hf merge` records its sub-models in `dtm_merge.json`.
"""

import re

ALL = "all"  # the config with every row, and the sub-model trained on it: the paper's all-data baseline
ALL_CLUSTERS = "all_clusters"  # the training selection "each cluster in turn"
BASELINE = "baseline"  # how `dtm-hf run` names the sub-model trained on `all` (its folder, evaluation, Hub repo)
MARKER = "dtm_train.json"
MERGE_MARKER = "dtm_merge.json"  # beside a merge: its sub-models and what each trained on
CLUSTER = re.compile(r"cluster_(\d+)")


def cluster_name(index: int) -> str:
    return f"cluster_{index}"


def cluster_names(n_clusters: int) -> list[str]:
    return [cluster_name(i) for i in range(n_clusters)]


def config_names(n_clusters: int) -> list[str]:
    """Every config of a distribute output of K clusters."""
    return [*cluster_names(n_clusters), ALL]
