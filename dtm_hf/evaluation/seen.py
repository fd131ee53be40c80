"""What each evaluated model trained on, so that evaluation never scores a training row without saying so.

A sub-model records its training in `dtm_train.json` (its configs, held-out fraction, seed, data ratio); a merge
lists its sub-models' records in `dtm_merge.json`. From a record the exact training rows follow
(`data.held_out.select_rows`), and those must not meet the rows evaluation scores.
"""

import json
import logging
from pathlib import Path

from ..errors import DtmError, first_line
from ..names import MARKER, MERGE_MARKER

logger = logging.getLogger(__name__)


def _read(ref: str, name: str) -> dict | None:
    path = Path(ref) / name
    if Path(ref).is_dir():
        return json.loads(path.read_text()) if path.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return json.loads(Path(hf_hub_download(ref, name)).read_text())
    except EntryNotFoundError:
        return None
    except (OSError, ValueError) as err:  # the Hub unreachable, a broken record
        raise DtmError(f"cannot read {name} of the model {ref!r} from the Hub ({first_line(err)}); check the "
                       "network, or pass --allow_train_rows to score without checking") from err


def training_records(ref: str) -> list[dict] | None:
    """The training records behind a model: its own, or its merged sub-models'; None for a model dtm-hf did not
    train (a base model, say)."""
    if (own := _read(ref, MARKER)) is not None:
        return [own]
    merged = _read(ref, MERGE_MARKER)
    if merged is None:
        return None
    return [sub["training"] for sub in merged["submodels"] if sub.get("training")]


def _same_dataset(recorded: str | None, source) -> bool:
    path = Path(recorded or "")
    return recorded == source.ref or (path.is_dir() and str(path.resolve()) == str(Path(source.ref).resolve()))


def trained_rows(record: dict, source) -> set[int]:
    """The input rows a sub-model trained on, recomputed from its record."""
    from ..data.held_out import select_rows
    from ..data.repo import load_rows

    params = record.get("hyperparameters", {})
    rows, _ = select_rows(load_rows(source, record["configs"]), params.get("held_out", 0.0), record["seed"],
                          params.get("data_ratio", 1.0))
    return set(rows["row"])


def check_unseen(models: dict[str, str], scored: dict[str, list[dict]], source, held_out: float, seed: int) -> None:
    """Refuse, with one line naming the model, to score rows that a model trained on."""
    scored_rows = {row["row"] for rows in scored.values() for row in rows}
    known = {}  # a merge's sub-models are also evaluated alone: each selection is recomputed once
    for name, ref in models.items():
        for record in training_records(ref) or []:
            if not _same_dataset(record.get("dataset"), source):
                logger.info(f"{name} ({record.get('cluster')}) trained on {record.get('dataset')}, not on "
                            f"{source.ref}: its training rows are not checked")
                continue
            key = json.dumps([record["configs"], record["seed"], record.get("hyperparameters", {})], sort_keys=True)
            if key not in known:
                known[key] = trained_rows(record, source)
            seen = scored_rows & known[key]
            if seen:
                params = record.get("hyperparameters", {})
                raise DtmError(
                    f"model {name!r} trained on {len(seen)} of the rows to evaluate: {record.get('cluster')} was "
                    f"trained with held_out {params.get('held_out', 0.0)} and seed {record['seed']}, evaluation holds "
                    f"out {held_out} with seed {seed}; evaluate with the training's --held_out and --seed, or pass "
                    "--allow_train_rows to score them anyway")
