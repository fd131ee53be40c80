"""Reading the instruction data (local files or a Hub dataset) and reducing every row to its first turn."""

from collections import Counter
from pathlib import Path

from ..errors import DtmError, first_line
from .formats import SKIP_REASONS, reduce_row

# File kind -> the `datasets` builder and its options.
DATA_EXTENSIONS = {".jsonl": ("json", {}), ".json": ("json", {}), ".parquet": ("parquet", {}),
                   ".csv": ("csv", {}), ".tsv": ("csv", {"delimiter": "\t"})}
KINDS = ", ".join(DATA_EXTENSIONS)


def _local_files(path: Path) -> tuple[str, dict, list[str]]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in DATA_EXTENSIONS)
    if not files or any(p.suffix not in DATA_EXTENSIONS for p in files):
        raise DtmError(f"{path} is not a {KINDS} file, nor a folder of them")
    kinds = {p.suffix.replace(".jsonl", ".json") for p in files}
    if len(kinds) > 1:
        raise DtmError(f"{path} mixes {', '.join(sorted(kinds))} files; keep one kind per input")
    builder, options = DATA_EXTENSIONS[files[0].suffix]
    return builder, options, [str(p) for p in files]


def parse_columns(text: str | None) -> dict[str, str]:
    """`question=instruction,answer=output` as {input column: the known format's column}."""
    mapping = {}
    for pair in (text or "").split(","):
        source, sep, target = (part.strip() for part in pair.partition("="))
        if not pair.strip():
            continue
        if not sep or not source or not target:
            raise DtmError(f"--columns takes INPUT=FORMAT pairs such as question=instruction,answer=output; got {pair!r}")
        mapping[source] = target
    return mapping


def load_input(dataset: str, config: str | None, split: str, max_samples: int | None, columns: str | None = None):
    """The input rows as a (memory-mapped) datasets.Dataset, with `columns` renamed onto a known format's names."""
    from datasets import load_dataset

    path = Path(dataset).expanduser()
    try:
        if path.exists():
            builder, options, files = _local_files(path)
            data = load_dataset(builder, data_files=files, split="train", **options)
        else:
            data = load_dataset(dataset, name=config, split=split)
    except DtmError:
        raise
    except Exception as err:  # noqa: BLE001 - any loader failure is the user's input; say which and why
        raise DtmError(f"cannot read the dataset {dataset!r}: {first_line(err)}") from err
    mapping = parse_columns(columns)
    missing = [c for c in mapping if c not in data.column_names]
    if missing:
        raise DtmError(f"--columns names {missing}, which the data does not have; its columns are "
                       f"{sorted(data.column_names)}")
    clashes = [t for s, t in mapping.items() if t in data.column_names and t not in mapping]
    if clashes:
        raise DtmError(f"--columns would rename onto {clashes}, which the data already has; map those too or drop them")
    if mapping:
        data = data.rename_columns(mapping)
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
