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
    if path.is_dir() and not files:
        raise DtmError(f"{path} is a folder with no data file in it ({KINDS}); pass a data file or a folder of them")
    if not files or any(p.suffix not in DATA_EXTENSIONS for p in files):
        raise DtmError(f"{path} is not a {KINDS} file, nor a folder of them")
    kinds = {p.suffix.replace(".jsonl", ".json") for p in files}
    if len(kinds) > 1:
        raise DtmError(f"{path} mixes {', '.join(sorted(kinds))} files; keep one kind per input")
    builder, options = DATA_EXTENSIONS[files[0].suffix]
    return builder, options, [str(p) for p in files]


def _check_readable(files: list[str], dataset: str) -> None:
    for file in files:
        try:
            with open(file, "rb") as f:
                f.read(1)
        except OSError as err:
            raise DtmError(f"cannot read {file} of the dataset {dataset!r}: {err.strerror}") from err
    if all(Path(file).stat().st_size == 0 for file in files):
        raise DtmError(f"the dataset {dataset!r} has no rows: {'its files are' if len(files) > 1 else 'the file is'} "
                       "empty")


def _bad_json(files: list[str]) -> str | None:
    """Where the first JSON file that does not parse goes wrong (file and line), to say why `datasets` failed."""
    import json

    for file in (f for f in files if f.endswith((".json", ".jsonl"))):
        with open(file, encoding="utf-8", errors="replace") as f:
            text = f.read()
        lines = text.splitlines()
        if file.endswith(".json"):  # one document (a list of rows), or JSON lines, as `datasets` accepts
            try:
                json.loads(text)
                continue
            except ValueError as err:
                document = err
            first = next((line for line in lines if line.strip()), "")
            try:
                json.loads(first)
            except ValueError:  # not JSON lines: where the document breaks
                return f"{file} line {document.lineno} is not valid JSON ({document.msg}, column {document.colno})"
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as err:
                return f"{file} line {number} is not valid JSON ({err.msg}, column {err.colno}); fix or remove it"
            if not isinstance(row, dict):
                return f"{file} line {number} is a JSON {type(row).__name__}, not an object (one row per line)"
    return None


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
    files = []
    try:
        if path.exists():
            builder, options, files = _local_files(path)
            _check_readable(files, dataset)
            data = load_dataset(builder, data_files=files, split="train", **options)
        else:
            data = load_dataset(dataset, name=config, split=split)
    except DtmError:
        raise
    except Exception as err:  # noqa: BLE001 - any loader failure is the user's input; say which and why
        if "corresponds to no data" in str(err):  # `datasets` found files but no row in them
            raise DtmError(f"the dataset {dataset!r} has no rows; check the file(s) or --split") from err
        raise DtmError(f"cannot read the dataset {dataset!r}: {_bad_json(files) or first_line(err)}") from err
    if len(data) == 0:
        raise DtmError(f"the dataset {dataset!r} has no rows; check the file(s) or --split")
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
