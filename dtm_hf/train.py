"""Step 2 of Disperse-Then-Merge: train one LoRA / QLoRA sub-model per cluster with TRL's SFTTrainer.

    accelerate launch --config_file recipes/accelerate_configs/ddp.yaml -m dtm_hf.train \
        --config recipes/llama-2-7b/dtm_lora.yaml --cluster cluster_0
    dtm-hf train --config recipes/tiny/dtm_lora.yaml --cluster all_clusters --baseline

The input is a `dtm-hf distribute` output (its folder or its Hub dataset repo). `--cluster` names one config
(`cluster_3`), a union (`cluster_0+cluster_1`), `all` (every row: the paper's baseline) or `all_clusters` (each
cluster in turn; `--baseline` adds `all`). Each run writes `OUTPUT_DIR/<cluster>/`: the adapter, the tokenizer
with its chat template, `trainer_state.json`, a card, and last `dtm_train.json`, which marks it complete. A
complete run is skipped on a rerun unless `--overwrite`; an interrupted one resumes from its last complete
checkpoint.

The loss covers the assistant reply and the token that ends its turn only (`assistant_only_loss`), with any chat
template (training/tokenize.py); base models without a template get dtm-hf's default (Tulu's format).
"""

import contextlib
import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path

from .arguments import Arguments
from .cli import add_config_flag, run_command
from .training.attention import CHOICES

logger = logging.getLogger("dtm_hf.train")  # also when run as __main__


@dataclass
class DtmArguments(Arguments):
    # Data
    dataset: str | None = field(default=None, metadata={"help": "A `dtm-hf distribute` output: its folder or Hub dataset id."})
    cluster: str | None = field(default=None, metadata={
        "help": "cluster_3; a union cluster_0+cluster_1; all (every row: the baseline); or all_clusters (each in turn)."})
    baseline: bool = field(default=False, metadata={"help": "Also train on `all` (vanilla SFT on all the data)."})
    data_ratio: float = field(default=1.0, metadata={
        "help": "Train on this fraction of the rows: the first ones after a shuffle seeded with --seed."})
    held_out: float = field(default=0.0, metadata={
        "help": "Fraction of rows kept out of training for `dtm-hf evaluate` (chosen by row index and --seed)."})
    # Model
    chat_template: str | None = field(default=None, metadata={
        "help": "A .jinja file or a template literal; default: the tokenizer's, else dtm-hf's (Tulu format)."})
    packed_attention: str = field(default="auto", metadata={
        "choices": list(CHOICES),
        "help": "How packed documents keep to themselves: varlen (torch's varlen kernels), flex (flex_attention), "
                "flash (flash-attn) or sdpa (a dense mask over the row); auto: on CUDA the fastest available, "
                "elsewhere sdpa. Used with packing: true."})
    # Output
    overwrite: bool = field(default=False, metadata={"help": "Retrain sub-models that are already complete."})

    def __post_init__(self):
        super().__post_init__()
        self.in_range("data_ratio", self.data_ratio, 0, 1, low_open=True)
        self.in_range("held_out", self.held_out, 0, 1, high_open=True)


def main(dtm_args: DtmArguments, training_args, model_args) -> list[Path]:
    """Train every sub-model asked for; returns their folders."""
    from .log import is_main_process
    from .outputs import check_apart, output_lock
    from .training.attention import resolve_attention
    from .training.chat_template import load_tokenizer
    from .training.kernels import check_kernels
    from .training.plan import check_quantization, describe, plan
    from .training.trainer import push, train_one

    model_args = copy.copy(model_args)  # the pipeline passes one ModelConfig to every sub-model's run
    base = check(training_args, model_args)
    model_args.model_name_or_path = base
    check_quantization(model_args, training_args)
    check_kernels(training_args, model_args)
    # Sub-models go to OUTPUT/<cluster>/: beside the inputs is fine, inside them is not
    check_apart(training_args.output_dir, {"the dataset": dtm_args.dataset, "the base model": base},
                may_hold=True)
    model_args.attn_implementation = resolve_attention(dtm_args.packed_attention, training_args, model_args)
    tokenizer, template_origin = load_tokenizer(dtm_args, model_args, training_args, base)
    runs = plan(dtm_args, training_args)
    logger.info(f"dtm-hf train: {len(runs)} sub-model(s) of {base} into {Path(training_args.output_dir).absolute()}")
    for run in runs:
        logger.info(f"  {run.name}: {describe(run)}")
    trainer = None
    for run in runs:
        if run.action in ("train", "resume"):
            logger.info(f"[{run.name}] {describe(run)}")
            # One writer per sub-model folder: the main process holds its lock (another run's, or a job's, is named)
            with output_lock(run.folder) if is_main_process() else contextlib.nullcontext():
                trainer = train_one(run, tokenizer, base, dtm_args, training_args, model_args, template_origin)
            logger.info(f"[{run.name}] complete: {run.folder}")
        if run.hub_repo and run.action != "skip":
            push(run, training_args)
    if trainer is not None:
        trainer.end()  # once, at the end: it closes the trackers and the process group that every run shares
    return [run.folder for run in runs]


def check(training_args, model_args, hub: bool = True) -> str:
    """The TRL and transformers settings and the LoRA modules against the base (its config), checked before any
    work; also by `dtm-hf run` when it reads a recipe, with `hub` off: a Hub base is checked when training starts.
    Returns the base: an absolute folder, or a Hub id."""
    from .training.plan import check_settings, check_target_modules, resolve_model

    check_settings(training_args, model_args)
    base = resolve_model(model_args)
    if hub or Path(base).is_dir():
        check_target_modules(model_args, base)
    return base


def make_parser(prog: str | None = None):
    from trl import ModelConfig, SFTConfig, TrlParser

    parser = TrlParser((DtmArguments, SFTConfig, ModelConfig), prog=prog or "dtm-hf train")
    # dtm-hf's defaults where they differ from TRL's: LoRA sub-models, loss on the assistant reply and EOS only
    parser.set_defaults(use_peft=True, assistant_only_loss=True)
    return add_config_flag(parser)


if __name__ == "__main__":
    run_command(make_parser, main)
