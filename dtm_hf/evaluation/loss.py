"""Held-out loss on the assistant tokens: the rows `dtm-hf train --held_out` kept out of training, per cluster,
for a full model or a LoRA adapter (local or on the Hub)."""

from dataclasses import dataclass
from pathlib import Path

from ..errors import DtmError, first_line


def held_out_rows(source, fraction: float, seed: int, limit: int | None) -> dict[str, list[dict]]:
    """Each cluster's held-out rows (`messages` and `row`) of a distribute output, at most `limit` per cluster."""
    from ..data.held_out import is_held_out
    from ..data.repo import load_rows

    rows = {}
    for cluster in source.clusters:
        data = load_rows(source, [cluster])
        keep = [i for i, row in enumerate(data["row"]) if is_held_out(row, fraction, seed)][:limit]
        if not keep:
            raise DtmError(f"no held-out rows in {cluster} at --held_out {fraction}; raise it or add data")
        rows[cluster] = data.select(keep).select_columns(["messages", "row"]).to_list()
    return rows


def check_weights(path: str) -> None:
    """A model to score must have safetensors weights: a `.bin` is a pickle, which can run code when loaded, so it
    is refused (as `dtm-hf merge` refuses it) before any model is loaded."""
    from ..hub import local_or_hub

    ref, local = local_or_hub(path, "the model", "--models")
    if local:
        files = {p.name for p in Path(ref).iterdir()}
    else:
        from huggingface_hub import list_repo_files

        try:
            files = set(list_repo_files(ref))
        except Exception as err:  # noqa: BLE001 - any Hub failure means this model is unusable; say which and why
            raise DtmError(f"cannot list the files of the Hub model {ref!r} ({first_line(err)}); check the id, the "
                           "network and HF_TOKEN") from err
    if "adapter_config.json" in files:
        safe, pickled = "adapter_model.safetensors" in files, "adapter_model.bin" in files
    elif "config.json" in files:
        safe = "model.safetensors" in files or "model.safetensors.index.json" in files
        pickled = any(f.startswith("pytorch_model") and f.endswith(".bin") for f in files)
    else:
        raise DtmError(f"the model {path} has neither config.json nor adapter_config.json; pass a model or LoRA "
                       "adapter folder (or Hub repo) with --models")
    if pickled and not safe:
        raise DtmError(f"the model {path} has only pickled (.bin) weights: safetensors only (a pickle can run code "
                       "when loaded); re-save it with save_pretrained()")
    if not safe:
        raise DtmError(f"the model {path} has no weights (no model.safetensors, index or adapter_model.safetensors); "
                       "is it complete?")


def load_model(path: str, dtype: str):
    """A full model or a LoRA adapter (on its recorded base), with a tokenizer that has a chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..hub import local_or_hub
    from ..training.chat_template import ensure_chat_template

    ref, local = local_or_hub(path, "the model", "--models")
    try:
        if local:
            is_adapter = (Path(ref) / "adapter_config.json").is_file()
        else:
            from huggingface_hub import file_exists

            is_adapter = file_exists(ref, "adapter_config.json")
        if is_adapter:
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(ref, dtype=dtype, use_safetensors=True).merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(ref, dtype=dtype, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(ref)
    except (OSError, ValueError) as err:
        raise DtmError(f"cannot load the model {path!r}: {first_line(err)}") from err
    ensure_chat_template(tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval(), tokenizer


@dataclass
class ClusterLoss:
    total: float  # summed token cross-entropy over the labelled tokens
    tokens: int
    rows: int  # rows scored
    long_rows: dict  # rows skipped or cut for length, by outcome (training/tokenize.py)


def cluster_loss(model, tokenizer, rows: list[dict], max_length: int, batch_size: int) -> ClusterLoss:
    """The loss over the tokens training labels (the reply and its end of turn), encoded as training encodes."""
    import torch

    from ..training.tokenize import IGNORE, encode_turn, stop_ids

    stops = stop_ids(tokenizer)
    encoded = [encode_turn(tokenizer, r["messages"], max_length, stops=stops) for r in rows]
    long_rows = {}
    for row in encoded:
        if row.outcome:
            long_rows[row.outcome] = long_rows.get(row.outcome, 0) + 1
    scored = [row for row in encoded if row.input_ids and any(label != IGNORE for label in row.labels[1:])]
    total, count = 0.0, 0
    for start in range(0, len(scored), batch_size):
        batch = scored[start : start + batch_size]
        width = max(len(row.input_ids) for row in batch)
        pad = tokenizer.pad_token_id

        def padded(values, fill, width=width):
            return values + [fill] * (width - len(values))

        input_ids = torch.tensor([padded(r.input_ids, pad) for r in batch], device=model.device)
        labels = torch.tensor([padded(r.labels, IGNORE) for r in batch], device=model.device)
        attention = torch.tensor([padded([1] * len(r.input_ids), 0) for r in batch], device=model.device)
        with torch.no_grad():
            logits = model(input_ids=input_ids, attention_mask=attention, use_cache=False).logits.float()
        shifted = labels[:, 1:]
        losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), shifted, reduction="none",
                                                   ignore_index=IGNORE)
        total += losses.sum().item()
        count += int((shifted != IGNORE).sum())
    return ClusterLoss(total=total, tokens=count, rows=len(scored), long_rows=long_rows)
