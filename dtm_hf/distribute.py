"""Step 1 of Disperse-Then-Merge: distribute instruction data into K portions as Hub dataset configs.

    dtm-hf distribute --dataset allenai/tulu-v2-sft-mixture --n_clusters 4 --method kmeans \
        --embedding_backend static --output_dir tulu-v2-k4 --push_to_hub --hub_dataset_id my-org/tulu-v2-k4

Every row is reduced to its first turn ([system], user, assistant); rows that yield none are skipped and
counted by reason. The output folder is a Hub-shaped dataset repository with configs `cluster_0` ...
`cluster_{K-1}` and `all`, a card, `clusters.json`, `stats.json` and `stats.png`.
"""

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .cli import run_command
from .errors import DtmError
from .formats import FORMAT_COLUMNS, SKIP_REASONS, detect_format, reduce_row


@dataclass
class DistributeArguments:
    # Input
    dataset: str = field(default=None, metadata={"help": "A .jsonl / .json / .parquet file, a folder of them, or a "
                                                          "Hub dataset id."})
    dataset_config: str | None = field(default=None, metadata={"help": "The Hub dataset's config name, if any."})
    split: str = field(default="train", metadata={"help": "The split to read."})
    format: str = field(default="auto", metadata={
        "help": "Row format: auto (detect from the columns), messages, sharegpt, alpaca or prompt_completion.",
        "choices": ["auto", *FORMAT_COLUMNS]})
    max_samples: int | None = field(default=None, metadata={"help": "Use only the first N rows of the input."})
    keep_system: bool = field(default=True, metadata={"help": "Keep a leading system message in the first turn."})
    source_column: str = field(default="dataset", metadata={
        "help": "Column naming each row's source (tulu-v2's `dataset`); kept as `source` when present."})
    # Distribution
    n_clusters: int | None = field(default=None, metadata={
        "help": "K, the number of portions. Required for random and kmeans; for source, defaults to one per source."})
    method: str = field(default="random", metadata={"help": "random, kmeans or source.",
                                                    "choices": ["random", "kmeans", "source"]})
    seed: int = field(default=42, metadata={"help": "Seed of the shuffle and of k-means."})
    embed_field: str = field(default="response", metadata={
        "help": "What k-means embeds: the instruction, the response (as the paper's code did) or both.",
        "choices": ["instruction", "response", "both"]})
    embedding_model: str = field(default="sentence-transformers/all-MiniLM-L6-v2", metadata={
        "help": "Sentence-transformers model (Hub id or local folder), or a model2vec model for the static backend."})
    embedding_backend: str = field(default="transformer", metadata={
        "help": "transformer (the model itself) or static (a model2vec distillation of it: ~200x faster on CPU).",
        "choices": ["transformer", "static"]})
    embedding_batch_size: int = field(default=256, metadata={"help": "Rows per embedding batch."})
    # Output
    output_dir: str = field(default=None, metadata={"help": "Folder to write the dataset repository into."})
    overwrite: bool = field(default=False, metadata={"help": "Replace a non-empty output folder."})
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the result to --hub_dataset_id."})
    hub_dataset_id: str | None = field(default=None, metadata={"help": "Hub dataset repo, e.g. my-org/tulu-v2-k4."})
    private: bool = field(default=False, metadata={"help": "Create the Hub repo as private."})


DATA_EXTENSIONS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def _local_files(path: Path) -> tuple[str, list[str]]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in DATA_EXTENSIONS)
    builders = {DATA_EXTENSIONS.get(p.suffix) for p in files}
    if not files or None in builders:
        raise DtmError(f"{path} is not a .jsonl, .json or .parquet file, nor a folder of them")
    if len(builders) > 1:
        raise DtmError(f"{path} mixes JSON and parquet files; keep one kind per input")
    return builders.pop(), [str(p) for p in files]


def load_input(args: DistributeArguments):
    """The input rows as a (memory-mapped) datasets.Dataset."""
    from datasets import load_dataset

    path = Path(args.dataset).expanduser()
    try:
        if path.exists():
            builder, files = _local_files(path)
            data = load_dataset(builder, data_files=files, split="train")
        else:
            data = load_dataset(args.dataset, name=args.dataset_config, split=args.split)
    except DtmError:
        raise
    except Exception as err:  # noqa: BLE001 - any loader failure is the user's input; say which and why
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DtmError(f"cannot read the dataset {args.dataset!r}: {reason}") from err
    if args.max_samples is not None:
        data = data.select(range(min(args.max_samples, len(data))))
    return data


def reduce_dataset(data, fmt: str, args: DistributeArguments):
    """Rows -> kept rows of (first-turn `messages`, `source`, `row`), and the skipped rows counted by reason.

    Skipped rows are dropped inside the batched map itself, so the result has no index mapping that later
    steps would have to flatten (a full rewrite of the data)."""
    from datasets import Features, Value

    has_source = args.source_column in data.column_names
    features = {"messages": [{"role": Value("string"), "content": Value("string")}], "row": Value("int64")}
    if has_source:
        features["source"] = Value("string")
    skipped = Counter()

    def reduce_batch(batch, indices):
        out = {"messages": [], "row": []}
        if has_source:
            out["source"] = []
        for i, values in enumerate(zip(*batch.values(), strict=True)):
            messages, reason = reduce_row(dict(zip(batch, values, strict=True)), fmt, args.keep_system)
            if reason:
                skipped[reason] += 1
                continue
            out["messages"].append(messages)
            out["row"].append(indices[i])
            if has_source:
                source = batch[args.source_column][i]
                out["source"].append(None if source is None else str(source))
        return out

    kept = data.map(reduce_batch, batched=True, batch_size=2000, with_indices=True, load_from_cache_file=False,
                    remove_columns=data.column_names, features=Features(features), desc="First turns")
    return kept, {reason: skipped[reason] for reason in SKIP_REASONS if skipped[reason]}


def validate(args: DistributeArguments) -> Path:
    """Check every argument before any work; returns the output path."""
    from .hub import require_push_target
    from .outputs import check_output_dir

    if not args.dataset:
        raise DtmError("--dataset is required: a .jsonl / .json / .parquet file, a folder of them, or a Hub id")
    if not args.output_dir:
        raise DtmError("--output_dir is required")
    if args.n_clusters is None and args.method != "source":
        raise DtmError(f"--n_clusters is required for --method {args.method}")
    if args.n_clusters is not None and args.n_clusters < 2:
        raise DtmError(f"--n_clusters must be at least 2, got {args.n_clusters}")
    require_push_target(args.push_to_hub, args.hub_dataset_id, "--hub_dataset_id")
    return check_output_dir(args.output_dir, args.overwrite)


def distribute(args: DistributeArguments) -> Path:
    """Run the whole step; returns the output folder."""
    import numpy as np

    from .dataset_repo import write_configs, write_metadata
    from .hub import push_folder
    from .outputs import atomic_output_dir
    from .partition import METHODS

    output = validate(args)
    timings = {}
    start = time.perf_counter()
    data = load_input(args)
    fmt = detect_format(data.column_names, args.format)
    input_rows = len(data)
    timings["load"] = time.perf_counter() - start

    start = time.perf_counter()
    kept, skipped = reduce_dataset(data, fmt, args)
    kept_rows = len(kept)
    timings["reduce"] = time.perf_counter() - start
    print(f"{input_rows} rows read ({fmt} format); {kept_rows} kept, {input_rows - kept_rows} skipped {skipped}")
    k = args.n_clusters
    if k is not None and k > kept_rows:
        raise DtmError(f"--n_clusters {k} is more than the {kept_rows} usable rows; lower it or add data")

    start = time.perf_counter()
    labels, info = METHODS[args.method](kept, args)
    k = int(labels.max()) + 1 if k is None else k
    sizes = np.bincount(labels, minlength=k).tolist()
    timings.update(info.pop("timings_s", {"split": time.perf_counter() - start}))
    if 0 in sizes:
        raise DtmError(f"cluster_{sizes.index(0)} is empty ({args.method} gave sizes {sizes}); lower --n_clusters")

    sources = kept.data.column("source").to_pylist() if "source" in kept.column_names else ["all"] * len(kept)
    cluster_source_counts = {f"cluster_{c}": {} for c in range(k)}
    for (cluster, source), n in sorted(Counter(zip(labels.tolist(), sources, strict=True)).items(), key=str):
        cluster_source_counts[f"cluster_{cluster}"][str(source)] = n
    stats = {
        "input": args.dataset, "format": fmt, "method": args.method, "n_clusters": k, "seed": args.seed,
        "input_rows": input_rows, "kept_rows": kept_rows, "skipped": skipped, "sizes": sizes,
        "cluster_source_counts": cluster_source_counts, "source_column": args.source_column, **info,
        "timings_s": timings,
    }
    if args.method == "kmeans":
        stats.update(embedding_model=args.embedding_model, embedding_backend=args.embedding_backend,
                     embed_field=args.embed_field)

    start = time.perf_counter()
    with atomic_output_dir(output, args.overwrite) as tmp:
        files = write_configs(kept, labels, tmp)
        timings["write"] = time.perf_counter() - start
        write_metadata(tmp, labels, stats, files)
    print(f"Wrote {k} cluster configs (sizes {sizes}) and `all` to {output}")
    if args.push_to_hub:
        url = push_folder(output, args.hub_dataset_id, "dataset", args.private,
                          f"dtm-hf distribute: {args.method} split into {k} clusters")
        print(f"Pushed to {url}")
    return output


def main(args: DistributeArguments) -> Path:
    return distribute(args)


def make_parser(prog: str | None = None):
    from trl import TrlParser

    return TrlParser((DistributeArguments,), prog=prog)


if __name__ == "__main__":
    run_command(make_parser, main)
