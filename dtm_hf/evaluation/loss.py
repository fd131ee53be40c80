"""Held-out loss on the assistant tokens: the rows `dtm-hf train --held_out` kept out of training, per cluster,
for a full model or a LoRA adapter (local or on the Hub)."""

from pathlib import Path

from ..errors import DtmError, first_line


def held_out_rows(dataset: str, fraction: float, seed: int, limit: int | None) -> dict[str, list[dict]]:
    """Each cluster's held-out rows (`messages` and `row`), at most `limit` per cluster."""
    from ..data.held_out import is_held_out
    from ..data.repo import load_rows, read_distribute_output

    source = read_distribute_output(dataset)
    rows = {}
    for cluster in source.clusters:
        data = load_rows(source, [cluster])
        keep = [i for i, row in enumerate(data["row"]) if is_held_out(row, fraction, seed)][:limit]
        if not keep:
            raise DtmError(f"no held-out rows in {cluster} at --held_out {fraction}; raise it or add data")
        rows[cluster] = data.select(keep).select_columns(["messages", "row"]).to_list()
    return rows


def load_model(path: str, dtype: str):
    """A full model or a LoRA adapter (on its recorded base), with a tokenizer that has a chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..training.chat_template import default_chat_template

    is_adapter = (Path(path) / "adapter_config.json").is_file()
    try:
        if not is_adapter and not Path(path).is_dir():
            from huggingface_hub import file_exists

            is_adapter = file_exists(path, "adapter_config.json")
        if is_adapter:
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(path, dtype=dtype).merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise DtmError(f"cannot load the model {path!r}: {first_line(err)}") from err
    if tokenizer.chat_template is None:
        tokenizer.chat_template = default_chat_template()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval(), tokenizer


def assistant_labels(tokenizer, messages: list[dict], max_length: int) -> tuple[list[int], list[int]]:
    """Token ids of the conversation and its labels: the ids on the assistant reply and EOS, -100 elsewhere."""
    encoded = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = encoded["input_ids"][:max_length], encoded["assistant_masks"][:max_length]
    if not any(mask):
        raise DtmError("the chat template marks no assistant tokens; it needs {% generation %} markers")
    return ids, [t if m else -100 for t, m in zip(ids, mask, strict=True)]


def cluster_loss(model, tokenizer, rows: list[dict], max_length: int, batch_size: int) -> tuple[float, int]:
    """(summed token cross-entropy, token count) over the assistant tokens of `rows`."""
    import torch

    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        pairs = [assistant_labels(tokenizer, r["messages"], max_length) for r in rows[start : start + batch_size]]
        width = max(len(ids) for ids, _ in pairs)
        pad = tokenizer.pad_token_id
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in pairs], device=model.device)
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in pairs], device=model.device)
        attention = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in pairs], device=model.device)
        with torch.no_grad():
            logits = model(input_ids=input_ids, attention_mask=attention).logits.float()
        shifted = labels[:, 1:]
        losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), shifted, reduction="none",
                                                   ignore_index=-100)
        total += losses.sum().item()
        count += int((shifted != -100).sum())
    return total, count
