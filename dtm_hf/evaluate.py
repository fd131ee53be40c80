"""Measure the alignment tax: held-out loss per cluster (and, optionally, lm-evaluation-harness tasks).

    dtm-hf evaluate --models base=meta-llama/Llama-2-7b-hf merged=out/merged sub0=out/train/cluster_0 \
        --dataset my-org/tulu-v2-k4 --held_out 0.05 --output_dir eval

For every model (a full model or a LoRA adapter, local or on the Hub) and every cluster of a distribute output,
the mean cross-entropy on the assistant reply and its EOS over the held-out rows (the rows that
`dtm-hf train --held_out` kept out of training), per cluster and overall. Writes `results.json`,
`results.md` (models x clusters, best per column in bold), `results.png` and prints the table.
"""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .cli import run_command
from .errors import DtmError


@dataclass
class EvaluateArguments:
    models: list[str] = field(default_factory=list, metadata={
        "help": "NAME=PATH_OR_ID pairs: full models or LoRA adapters, local folders or Hub repos."})
    dataset: str = field(default=None, metadata={"help": "A distribute output folder or its Hub dataset id."})
    held_out: float = field(default=0.05, metadata={
        "help": "Fraction of each cluster held out of training (the same value and seed given to dtm-hf train)."})
    seed: int = field(default=42, metadata={"help": "Seed of the held-out choice (the training seed)."})
    max_rows_per_cluster: int | None = field(default=None, metadata={
        "help": "Evaluate at most this many held-out rows per cluster."})
    max_length: int = field(default=1024, metadata={"help": "Truncate each conversation to this many tokens."})
    batch_size: int = field(default=8, metadata={"help": "Conversations per forward pass."})
    dtype: str = field(default="auto", metadata={"help": "auto, float32, bfloat16 or float16."})
    lm_eval_tasks: str | None = field(default=None, metadata={
        "help": "Comma-separated lm-evaluation-harness tasks (e.g. mmlu,gsm8k,bbh); needs the `eval` extra."})
    lm_eval_limit: int | None = field(default=None, metadata={"help": "At most this many examples per lm-eval task."})
    lm_eval_include_path: str | None = field(default=None, metadata={
        "help": "A folder of custom lm-eval task YAMLs to register."})
    output_dir: str = field(default=None, metadata={"help": "Folder for results.json, results.md, results.png."})
    overwrite: bool = field(default=False, metadata={"help": "Replace a non-empty output folder."})


def parse_models(pairs: list[str]) -> dict[str, str]:
    models = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise DtmError(f"--models takes NAME=PATH_OR_ID pairs, got {pair!r}")
        if name in models:
            raise DtmError(f"--models names {name!r} twice; give each model its own name")
        models[name] = path
    if not models:
        raise DtmError("--models is required: one or more NAME=PATH_OR_ID pairs")
    return models


def held_out_rows(dataset: str, fraction: float, seed: int, limit: int | None) -> dict[str, list[dict]]:
    """Each cluster's held-out rows (`messages` and `row`), at most `limit` per cluster."""
    from .cluster_data import load_rows, read_distribute_output
    from .held_out import is_held_out

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

    from .tiny_model import default_chat_template

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
        raise DtmError(f"cannot load the model {path!r}: {str(err).splitlines()[0]}") from err
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


def run_lm_eval(path: str, tasks: str, limit: int | None, include_path: str | None) -> dict:
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        raise DtmError("--lm_eval_tasks needs lm-evaluation-harness: pip install 'dtm-hf[eval]'") from err
    import torch

    results = lm_eval.simple_evaluate(
        model="hf", model_args={"pretrained": path}, tasks=tasks.split(","), limit=limit,
        device="cuda" if torch.cuda.is_available() else "cpu",
        task_manager=TaskManager(include_path=include_path), log_samples=False,
    )
    # lm-eval names metrics "acc,none" (metric, filter); keep the scores, not their stderr or sample counts.
    return {task: {key.removesuffix(",none"): value for key, value in metrics.items()
                   if "," in key and "_stderr" not in key and isinstance(value, int | float)}
            for task, metrics in results["results"].items()}


def results_table(losses: dict[str, dict[str, float]], extra: dict[str, dict[str, float]]) -> str:
    """Markdown: models x (clusters, overall, lm-eval metrics); the best (lowest loss, highest metric) in bold."""
    models = list(losses)
    columns = [(c, "min") for c in next(iter(losses.values()))]
    columns += sorted({(k, "max") for scores in extra.values() for k in scores})
    cells = {m: {**losses[m], **extra.get(m, {})} for m in models}
    best = {c: (min if how == "min" else max)(cells[m].get(c, math.nan) for m in models if c in cells[m])
            for c, how in columns}
    lines = ["| model | " + " | ".join(c for c, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for m in models:
        row = [f"**{cells[m][c]:.4f}**" if cells[m].get(c) == best[c] else
               (f"{cells[m][c]:.4f}" if c in cells[m] else "-") for c, _ in columns]
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot_results(losses: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models, columns = list(losses), list(next(iter(losses.values())))
    x = np.arange(len(columns))
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(columns)), 4.5))
    for i, model in enumerate(models):
        ax.bar(x + i * width - 0.4 + width / 2, [losses[model][c] for c in columns], width, label=model)
    values = [v for scores in losses.values() for v in scores.values()]
    span = max(values) - min(values) or 1.0
    ax.set_ylim(min(values) - 0.15 * span, max(values) + 0.05 * span)  # the differences, not the distance to 0
    ax.set_xticks(x, columns)
    ax.set_ylabel("held-out loss on assistant tokens (lower is better)")
    ax.legend(fontsize="small", bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def evaluate(args: EvaluateArguments) -> Path:
    from tqdm.auto import tqdm

    from .outputs import atomic_output_dir, check_output_dir

    models = parse_models(args.models)
    if not args.dataset or not args.output_dir:
        raise DtmError("--dataset and --output_dir are required")
    if not 0 < args.held_out < 1:
        raise DtmError(f"--held_out must be in (0, 1), got {args.held_out}")
    output = check_output_dir(args.output_dir, args.overwrite)
    rows = held_out_rows(args.dataset, args.held_out, args.seed, args.max_rows_per_cluster)
    losses, lm_eval_scores = {}, {}
    for name, path in tqdm(models.items(), desc="Evaluating models", unit="model"):
        model, tokenizer = load_model(path, args.dtype)
        sums = {c: cluster_loss(model, tokenizer, r, args.max_length, args.batch_size) for c, r in rows.items()}
        losses[name] = {c: total / count for c, (total, count) in sums.items()}
        losses[name]["overall"] = sum(t for t, _ in sums.values()) / sum(n for _, n in sums.values())
        del model
        if args.lm_eval_tasks:
            scores = run_lm_eval(path, args.lm_eval_tasks, args.lm_eval_limit, args.lm_eval_include_path)
            lm_eval_scores[name] = {f"{task}/{metric}": v for task, m in scores.items() for metric, v in m.items()}
    table = results_table(losses, lm_eval_scores)
    results = {
        "dataset": args.dataset, "held_out": args.held_out, "seed": args.seed, "models": models,
        "loss": losses, "lm_eval": lm_eval_scores,
        "held_out_rows": {c: [r["row"] for r in rs] for c, rs in rows.items()},
    }
    with atomic_output_dir(output, args.overwrite) as tmp:
        (tmp / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (tmp / "results.md").write_text(f"# Held-out loss on assistant tokens\n\n{table}")
        plot_results(losses, tmp / "results.png")
    print(table)
    return output


def main(args: EvaluateArguments) -> Path:
    return evaluate(args)


def make_parser(prog: str | None = None):
    from trl import TrlParser

    return TrlParser((EvaluateArguments,), prog=prog)


if __name__ == "__main__":
    run_command(make_parser, main)
