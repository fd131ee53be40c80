"""Measure the alignment tax: held-out loss per cluster (and, optionally, lm-evaluation-harness tasks).

    dtm-hf evaluate --models base=meta-llama/Llama-2-7b-hf merged=out/merged sub0=out/train/cluster_0 \
        --dataset my-org/tulu-v2-k4 --held_out 0.05 --output_dir eval

For every model (a full model or a LoRA adapter, local or on the Hub) and every cluster of a distribute output,
the mean cross-entropy on the assistant reply and the token that ends its turn (the tokens training labels) over
the held-out rows (the rows that `dtm-hf train --held_out` kept out of training), per cluster and overall. A model
that trained on a row to be scored is refused. Writes `results.json`, `results.md` (models x clusters, best per
column in bold, the rows behind each loss), `results.png` and prints the table.
"""

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from .arguments import Arguments
from .cli import add_config_flag, run_command
from .errors import DtmError

logger = logging.getLogger("dtm_hf.evaluate")  # also when run as __main__


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


@dataclass
class EvaluateArguments(Arguments):
    models: list[str] = field(default_factory=list, metadata={
        "help": "NAME=PATH_OR_ID pairs: full models or LoRA adapters, local folders or Hub repos."})
    dataset: str | None = field(default=None, metadata={"help": "A distribute output folder or its Hub dataset id."})
    held_out: float = field(default=0.05, metadata={
        "help": "Fraction of each cluster held out of training (the same value and seed given to dtm-hf train)."})
    seed: int = field(default=42, metadata={"help": "Seed of the held-out choice (the training seed)."})
    max_rows_per_cluster: int | None = field(default=None, metadata={
        "help": "Evaluate at most this many held-out rows per cluster."})
    max_length: int = field(default=1024, metadata={"help": "Truncate each conversation to this many tokens."})
    batch_size: int = field(default=8, metadata={"help": "Conversations per forward pass."})
    dtype: str = field(default="auto", metadata={"help": "auto, float32, bfloat16 or float16.",
                                                 "choices": ["auto", "float32", "bfloat16", "float16"]})
    lm_eval_tasks: str | None = field(default=None, metadata={
        "help": "Comma-separated lm-evaluation-harness tasks (e.g. mmlu,gsm8k,bbh); needs the `eval` extra."})
    lm_eval_limit: int | None = field(default=None, metadata={"help": "At most this many examples per lm-eval task."})
    lm_eval_include_path: str | None = field(default=None, metadata={
        "help": "A folder of custom lm-eval task YAMLs to register."})
    allow_train_rows: bool = field(default=False, metadata={
        "help": "Score held-out rows even when a model's dtm_train.json says it trained on some of them."})
    output_dir: str | None = field(default=None, metadata={"help": "Folder for results.json, results.md, results.png."})
    overwrite: bool = field(default=False, metadata={"help": "Replace a non-empty output folder."})

    def __post_init__(self):
        super().__post_init__()
        parse_models(self.models)
        self.require(self.dataset, "--dataset is required: a distribute output folder or its Hub dataset id")
        self.require(self.output_dir, "--output_dir is required")
        self.in_range("held_out", self.held_out, 0, 1, low_open=True, high_open=True)
        self.in_range("max_rows_per_cluster", self.max_rows_per_cluster, 1)
        self.in_range("max_length", self.max_length, 2)
        self.in_range("batch_size", self.batch_size, 1)
        self.in_range("lm_eval_limit", self.lm_eval_limit, 1)


def evaluate(args: EvaluateArguments) -> Path:
    from tqdm.auto import tqdm

    from .data.repo import read_distribute_output
    from .evaluation.harness import run_lm_eval
    from .evaluation.loss import ClusterLoss, check_weights, cluster_loss, held_out_rows, load_model
    from .evaluation.report import plot_results, results_table
    from .evaluation.seen import check_unseen
    from .outputs import atomic_output_dir, check_apart, check_output_dir

    models = parse_models(args.models)
    for path in models.values():  # every model found, with safetensors weights, before any is loaded
        check_weights(path)
    inputs = [("the dataset", args.dataset), *((f"the model {name!r}", path) for name, path in models.items())]
    check_apart(args.output_dir, inputs)
    output = check_output_dir(args.output_dir, args.overwrite)
    source = read_distribute_output(args.dataset)
    rows = held_out_rows(source, args.held_out, args.seed, args.max_rows_per_cluster)
    if not args.allow_train_rows:
        check_unseen(models, rows, source, args.held_out, args.seed)
    losses, counts, long_rows, lm_eval_scores = {}, {}, {}, {}
    for name, path in tqdm(models.items(), desc="Evaluating models", unit="model"):
        model, tokenizer = load_model(path, args.dtype)
        scored = {c: cluster_loss(model, tokenizer, r, args.max_length, args.batch_size) for c, r in rows.items()}
        scored["overall"] = ClusterLoss(sum(s.total for s in scored.values()), sum(s.tokens for s in scored.values()),
                                        sum(s.rows for s in scored.values()), {})
        losses[name] = {c: s.total / s.tokens if s.tokens else None for c, s in scored.items()}
        counts[name] = {c: s.rows for c, s in scored.items()}
        long_rows[name] = {c: s.long_rows for c, s in scored.items() if s.long_rows}
        if long_rows[name]:
            logger.info(f"{name}: rows too long for --max_length {args.max_length}, by cluster: {long_rows[name]}")
        del model
        if args.lm_eval_tasks:
            scores = run_lm_eval(path, args.lm_eval_tasks, args.lm_eval_limit, args.lm_eval_include_path)
            lm_eval_scores[name] = {f"{task}/{metric}": v for task, m in scores.items() for metric, v in m.items()}
    table = results_table(losses, counts, lm_eval_scores, long_rows)
    results = {
        "dataset": args.dataset, "held_out": args.held_out, "seed": args.seed, "models": models,
        "loss": losses, "rows": counts, "long_rows": long_rows, "lm_eval": lm_eval_scores,
        "held_out_rows": {c: [r["row"] for r in rs] for c, rs in rows.items()},
    }
    with atomic_output_dir(output, args.overwrite) as tmp:
        (tmp / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (tmp / "results.md").write_text(f"# Held-out loss on assistant tokens\n\n{table}")
        plot_results(losses, tmp / "results.png")
    logger.info(table)
    return output


def main(args: EvaluateArguments) -> Path:
    from .outputs import output_lock

    with output_lock(args.output_dir):  # one writer at a time
        return evaluate(args)


def make_parser(prog: str | None = None):
    from trl import TrlParser

    return add_config_flag(TrlParser((EvaluateArguments,), prog=prog or "dtm-hf evaluate"))


if __name__ == "__main__":
    run_command(make_parser, main)
