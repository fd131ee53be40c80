"""Reading the instruction data (local files or a Hub dataset) and reducing every row to its first turn."""

from collections import Counter
from pathlib import Path

from ..errors import DtmError, first_line
from .formats import SKIP_REASONS, reduce_row

DATA_EXTENSIONS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def _local_files(path: Path) -> tuple[str, list[str]]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in DATA_EXTENSIONS)
    builders = {DATA_EXTENSIONS.get(p.suffix) for p in files}
    if not files or None in builders:
        raise DtmError(f"{path} is not a .jsonl, .json or .parquet file, nor a folder of them")
    if len(builders) > 1:
        raise DtmError(f"{path} mixes JSON and parquet files; keep one kind per input")
    return builders.pop(), [str(p) for p in files]


def load_input(dataset: str, config: str | None, split: str, max_samples: int | None):
    """The input rows as a (memory-mapped) datasets.Dataset."""
    from datasets import load_dataset

    path = Path(dataset).expanduser()
    try:
        if path.exists():
            builder, files = _local_files(path)
            data = load_dataset(builder, data_files=files, split="train")
        else:
            data = load_dataset(dataset, name=config, split=split)
    except DtmError:
        raise
    except Exception as err:  # noqa: BLE001 - any loader failure is the user's input; say which and why
        raise DtmError(f"cannot read the dataset {dataset!r}: {first_line(err)}") from err
    if max_samples is not None:
        data = data.select(range(min(max_samples, len(data))))
    return data


def reduce_dataset(data, fmt: str, keep_system: bool, source_column: str):
    """Rows -> kept rows of (first-turn `messages`, `source`, `row`), and the skipped rows counted by reason.

    Skipped rows are dropped inside the batched map itself, so the result has no index mapping that later
    steps would have to flatten (a full rewrite of the data)."""
    from datasets import Features, Value

    has_source = source_column in data.column_names
    features = {"messages": [{"role": Value("string"), "content": Value("string")}], "row": Value("int64")}
    if has_source:
        features["source"] = Value("string")
    skipped = Counter()

    def reduce_batch(batch, indices):
        out = {"messages": [], "row": []}
        if has_source:
            out["source"] = []
        for i, values in enumerate(zip(*batch.values(), strict=True)):
            messages, reason = reduce_row(dict(zip(batch, values, strict=True)), fmt, keep_system)
            if reason:
                skipped[reason] += 1
                continue
            out["messages"].append(messages)
            out["row"].append(indices[i])
            if has_source:
                source = batch[source_column][i]
                out["source"].append(None if source is None else str(source))
        return out

    kept = data.map(reduce_batch, batched=True, batch_size=2000, with_indices=True, load_from_cache_file=False,
                    remove_columns=data.column_names, features=Features(features), desc="First turns")
    return kept, {reason: skipped[reason] for reason in SKIP_REASONS if skipped[reason]}
