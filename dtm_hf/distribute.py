"""Step 1 of Disperse-Then-Merge: distribute instruction data into K portions as Hub dataset configs.

    dtm-hf distribute --dataset allenai/tulu-v2-sft-mixture --n_clusters 4 --method kmeans \
        --embedding_backend static --output_dir tulu-v2-k4 --push_to_hub --hub_dataset_id my-org/tulu-v2-k4

Every row is reduced to its first turn ([system], user, assistant); rows that yield none are skipped and
counted by reason. The output folder is a Hub-shaped dataset repository with configs `cluster_0` ...
`cluster_{K-1}` and `all`, a card that says what is in each cluster, `clusters.json`, `stats.json`, `stats.png`
and, for the embedding methods (or with `--map true`), `map.png`.
"""

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .arguments import Arguments
from .cli import add_config_flag, run_command
from .data.embeddings import BACKENDS
from .data.formats import FORMAT_COLUMNS, detect_format
from .data.partition import METHODS
from .errors import DtmError
from .hub import require_push_target
from .names import cluster_name

logger = logging.getLogger("dtm_hf.distribute")  # also when run as __main__


@dataclass
class DistributeArguments(Arguments):
    # Input
    dataset: str | None = field(default=None, metadata={"help": "A .jsonl / .json / .parquet file, a folder of them, or a "
                                                          "Hub dataset id."})
    dataset_config: str | None = field(default=None, metadata={"help": "The Hub dataset's config name, if any."})
    split: str = field(default="train", metadata={"help": "The split to read."})
    columns: str | None = field(default=None, metadata={
        "help": "Rename input columns onto a known format's, e.g. question=instruction,answer=output (Alpaca)."})
    format: str = field(default="auto", metadata={
        "help": "Row format: auto (detect from the columns), messages, sharegpt, alpaca or prompt_completion.",
        "choices": ["auto", *FORMAT_COLUMNS]})
    max_samples: int | None = field(default=None, metadata={"help": "Use only the first N rows of the input."})
    keep_system: bool = field(default=True, metadata={"help": "Keep a leading system message in the first turn."})
    source_column: str = field(default="dataset", metadata={
        "help": "Column naming each row's source (tulu-v2's `dataset`); kept as `source` when present."})
    # Distribution
    n_clusters: int | None = field(default=None, metadata={
        "help": "K, the number of portions. Required for random and the k-means methods; for source, defaults to "
                "one per source."})
    method: str = field(default="random", metadata={
        "help": "random, kmeans, balanced_kmeans (k-means whose clusters differ in size by at most one row) or "
                "source.", "choices": list(METHODS)})
    seed: int = field(default=42, metadata={"help": "Seed of the shuffle and of k-means."})
    embed_field: str = field(default="response", metadata={
        "help": "What the k-means methods (and the map) embed: the instruction, the response (as the paper's code "
                "did) or both.",
        "choices": ["instruction", "response", "both"]})
    embedding_model: str = field(default="sentence-transformers/all-MiniLM-L6-v2", metadata={
        "help": "Sentence-transformers model (Hub id or local folder), or a model2vec model for the static backend."})
    embedding_backend: str = field(default="transformer", metadata={
        "help": "transformer (the model itself) or static (a model2vec distillation of it: ~200x faster on CPU).",
        "choices": list(BACKENDS)})
    embedding_batch_size: int = field(default=256, metadata={"help": "Rows per embedding batch."})
    map: bool = field(default=False, metadata={
        "help": "Draw map.png for random and source too, embedding a sample of at most 20,000 rows for it (the "
                "k-means methods always draw it, from the embeddings they clustered)."})
    # Output
    output_dir: str | None = field(default=None, metadata={"help": "Folder to write the dataset repository into."})
    overwrite: bool = field(default=False, metadata={"help": "Replace a non-empty output folder."})
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the result to --hub_dataset_id."})
    hub_dataset_id: str | None = field(default=None, metadata={"help": "Hub dataset repo, e.g. my-org/tulu-v2-k4."})
    private: bool = field(default=False, metadata={"help": "Create the Hub repo as private."})

    def __post_init__(self):
        super().__post_init__()
        self.require(self.dataset, "--dataset is required: a .jsonl / .json / .parquet file, a folder of them, or a "
                                   "Hub id")
        self.require(self.output_dir, "--output_dir is required")
        if self.n_clusters is None and self.method != "source":
            raise DtmError(f"--n_clusters is required for --method {self.method}")
        self.in_range("n_clusters", self.n_clusters, 2)
        self.in_range("max_samples", self.max_samples, 1)
        self.in_range("embedding_batch_size", self.embedding_batch_size, 1)
        require_push_target(self.push_to_hub, self.hub_dataset_id, "--hub_dataset_id")


def distribute(args: DistributeArguments) -> Path:
    """Run the whole step; returns the output folder."""
    import numpy as np

    from .data.describe import describe_clusters
    from .data.inputs import load_input, reduce_dataset
    from .data.map import write_map
    from .data.repo import write_configs, write_metadata
    from .hub import push_folder
    from .outputs import atomic_output_dir, check_apart, check_output_dir

    check_apart(args.output_dir, {"the dataset": args.dataset})
    output = check_output_dir(args.output_dir, args.overwrite)
    timings = {}
    start = time.perf_counter()
    data = load_input(args.dataset, args.dataset_config, args.split, args.max_samples, args.columns)
    fmt = detect_format(data.column_names, args.format)
    input_rows = len(data)
    timings["load"] = time.perf_counter() - start

    start = time.perf_counter()
    kept, skipped = reduce_dataset(data, fmt, args.keep_system, args.source_column)
    kept_rows = len(kept)
    timings["reduce"] = time.perf_counter() - start
    logger.info(f"{input_rows} rows read ({fmt} format); {kept_rows} kept, {input_rows - kept_rows} skipped {skipped}")
    k = args.n_clusters
    if k is not None and k > kept_rows:
        raise DtmError(f"--n_clusters {k} is more than the {kept_rows} usable rows; lower it or add data")

    start = time.perf_counter()
    split = METHODS[args.method](kept, args)
    labels, info = split.labels, split.info
    k = int(labels.max()) + 1 if k is None else k
    sizes = np.bincount(labels, minlength=k).tolist()
    timings.update(info.pop("timings_s", {"split": time.perf_counter() - start}))
    if 0 in sizes:
        raise DtmError(f"{cluster_name(sizes.index(0))} is empty ({args.method} gave sizes {sizes}); lower --n_clusters")

    sources = kept.data.column("source").to_pylist() if "source" in kept.column_names else ["all"] * len(kept)
    cluster_source_counts = {cluster_name(c): {} for c in range(k)}
    for (cluster, source), n in sorted(Counter(zip(labels.tolist(), sources, strict=True)).items(), key=str):
        cluster_source_counts[cluster_name(cluster)][str(source)] = n
    stats = {
        "input": args.dataset, "format": fmt, "method": args.method, "n_clusters": k, "seed": args.seed,
        "input_rows": input_rows, "kept_rows": kept_rows, "skipped": skipped, "sizes": sizes,
        "cluster_source_counts": cluster_source_counts, "source_column": args.source_column, **info,
        "timings_s": timings,
    }
    draw_map = split.vectors is not None or args.map
    if draw_map:
        stats.update(embedding_model=args.embedding_model, embedding_backend=args.embedding_backend,
                     embed_field=args.embed_field)

    start = time.perf_counter()
    stats["clusters"], stats["cluster_examples"] = describe_clusters(kept, split, k, cluster_source_counts, args.seed)
    timings["describe"] = time.perf_counter() - start
    for name, cluster in stats["clusters"].items():
        logger.info(f"{name}: {cluster['rows']} rows; {', '.join(cluster['top_terms'][:5])}")

    with atomic_output_dir(output, args.overwrite) as tmp:
        if draw_map:
            start = time.perf_counter()
            stats["map"] = write_map(tmp / "map.png", kept, split, args, stats["clusters"])
            timings["map"] = time.perf_counter() - start
        start = time.perf_counter()
        files = write_configs(kept, labels, tmp)
        timings["write"] = time.perf_counter() - start
        write_metadata(tmp, labels, stats, files, args.hub_dataset_id if args.push_to_hub else str(output))
    logger.info(f"Wrote {k} cluster configs (sizes {sizes}) and `all` to {output}")
    if args.push_to_hub:
        url = push_folder(output, args.hub_dataset_id, "dataset", args.private,
                          f"dtm-hf distribute: {args.method} split into {k} clusters")
        logger.info(f"Pushed to {url}")
    return output


def main(args: DistributeArguments) -> Path:
    from .outputs import output_lock

    with output_lock(args.output_dir):  # one writer at a time
        return distribute(args)


def make_parser(prog: str | None = None):
    from trl import TrlParser

    return add_config_flag(TrlParser((DistributeArguments,), prog=prog or "dtm-hf distribute"))


if __name__ == "__main__":
    run_command(make_parser, main)
