"""Step 3 of Disperse-Then-Merge: merge the LoRA sub-models into one model with mergekit.

    dtm-hf merge --submodels out/cluster_0 out/cluster_1 out/cluster_2 out/cluster_3 --method linear \
        --output_dir merged --push_to_hub --hub_model_id my-org/llama-2-7b-dtm

The merge is a mergekit configuration (`OUT/mergekit_config.yml`, `base+adapter` references, absolute paths)
that also runs unchanged with the `mergekit-yaml` command printed by `--emit_only`. `--output_format adapter`
writes the linear merge as one LoRA adapter instead (exact, or SVD-truncated with `--adapter_rank`), and
`--method paper` the published code's merge (LoRA A and B averaged separately), also as an adapter.
"""

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from .arguments import Arguments
from .cli import add_config_flag, run_command
from .errors import DtmError
from .hub import require_push_target
from .merging.methods import METHODS
from .merging.plan import parse_size

logger = logging.getLogger("dtm_hf.merge")  # also when run as __main__
ADAPTER_SUBFOLDER = "adapter"


@dataclass
class MergeArguments(Arguments):
    # Inputs
    submodels: list[str] | None = field(default=None, metadata={
        "help": "Sub-model folders written by `dtm-hf train`, a training output root (all its clusters, not `all`), "
                "or Hub repo ids of LoRA adapters.", "nargs": "+"})
    base_model: str | None = field(default=None, metadata={
        "help": "Base model folder or Hub id; defaults to the base recorded in the adapters."})
    # Method
    method: str = field(default="linear", metadata={
        "help": "linear, ties, task_arithmetic, dare_ties (mergekit), or paper (LoRA A and B averaged separately, "
                "as the paper's code did; written as an adapter).", "choices": list(METHODS)})
    weights: str | None = field(default=None, metadata={
        "help": "Mix ratio, one per sub-model, e.g. 1,1,1,1 (default: equal). Normalised to sum to 1 for linear "
                "and paper unless --normalize false."})
    density: float = field(default=0.5, metadata={"help": "Fraction of each task vector kept by ties and dare_ties."})
    normalize: bool | None = field(default=None, metadata={
        "help": "Divide by the sum of the weights. Default: true for linear and paper, mergekit's default otherwise "
                "(true for ties, false for dare_ties and task_arithmetic)."})
    dtype: str | None = field(default=None, metadata={
        "help": "float16, bfloat16 or float32: dtype of the merge and the output (default: the base model's).",
        "choices": ["float16", "bfloat16", "float32"]})
    seed: int = field(default=42, metadata={"help": "Random seed of dare_ties (mergekit's --random-seed)."})
    device: str = field(default="cpu", metadata={
        "help": "Where the merge arithmetic runs: cpu, or cuda / cuda:N to do it on a GPU (tensors are read and "
                "written through the CPU either way)."})
    lora_route: str = field(default="auto", metadata={
        "help": "How LoRA sub-models reach mergekit: stream (each tensor computed on the fly as W + scale * B @ A, "
                "the base read once, nothing cached), mergekit (its `base+adapter` route: one merged copy of the base "
                "per sub-model in a temporary cache) or auto (stream, but mergekit for dare_ties so that its random "
                "drops match `mergekit-yaml --random-seed`).", "choices": ["auto", "stream", "mergekit"]})
    # Output
    output_dir: str | None = field(default=None, metadata={"help": "Folder to write the merged model into."})
    overwrite: bool = field(default=False, metadata={"help": "Replace a non-empty output folder."})
    emit_only: bool = field(default=False, metadata={
        "help": "Write OUT/mergekit_config.yml, print the mergekit-yaml command that runs it, and stop."})
    output_format: str | None = field(default=None, metadata={
        "help": "full (a model), adapter (one LoRA adapter; linear and paper only) or both (the adapter in "
                "OUT/adapter). Default: full, or adapter for --method paper.", "choices": ["full", "adapter", "both"]})
    adapter_rank: int | None = field(default=None, metadata={
        "help": "Truncate the merged adapter to this rank by SVD (default: exact, rank = the sum of the ranks)."})
    max_shard_size: str = field(default="5GB", metadata={"help": "Largest safetensors shard of the output, e.g. 2GB."})
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the merged model to --hub_model_id."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub model repo, e.g. my-org/llama-2-7b-dtm."})
    private: bool = field(default=False, metadata={"help": "Create the Hub repo as private."})

    def __post_init__(self):
        if isinstance(self.weights, list):  # a YAML list, as the flag's comma-separated text
            self.weights = ",".join(map(str, self.weights))
        super().__post_init__()
        self.require(self.submodels, "--submodels is required: sub-model folders, a training output root, or Hub "
                                     "repo ids")
        self.require(self.output_dir, "--output_dir is required")
        method = METHODS[self.method]
        parse_size(self.max_shard_size)
        check_device(self.device)
        self.in_range("density", self.density, 0, 1, low_open=True)
        if self.normalize is None and method.averages:
            self.normalize = True
        self.output_format = self.output_format or ("full" if method.mergekit else "adapter")
        if method.mergekit is None and self.output_format != "adapter":
            raise DtmError(f"--method {self.method} is written as an adapter: pass --output_format adapter (or leave "
                           "it out)")
        if method.adapter is None and self.output_format != "full":
            raise DtmError(f"--output_format {self.output_format} is exact only for --method linear; use "
                           f"--output_format full for {self.method}")
        if self.adapter_rank is not None and method.adapter != "exact":
            raise DtmError(f"--adapter_rank truncates an exact adapter, which --method {self.method} does not write; "
                           "use it with --method linear")
        if self.adapter_rank is not None and self.output_format == "full":
            raise DtmError("--adapter_rank applies to the linear merge's adapter: add --output_format adapter or both")
        self.in_range("adapter_rank", self.adapter_rank, 1)
        if self.emit_only and method.mergekit is None:
            raise DtmError(f"--emit_only writes a mergekit configuration, and mergekit has no `{self.method}` method")
        if self.emit_only and self.push_to_hub:
            raise DtmError("--emit_only writes no model to push; drop --push_to_hub")
        require_push_target(self.push_to_hub, self.hub_model_id, "--hub_model_id")


def check_device(device: str) -> None:
    if not re.fullmatch(r"cpu|cuda(:[0-9]+)?", device):
        raise DtmError(f"unknown --device {device!r}; choose cpu, cuda or cuda:N")
    if device != "cpu":
        import torch

        index = int(device.partition(":")[2] or 0)
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise DtmError(f"--device {device}: no such CUDA GPU is visible here; use --device cpu")


def merge(args: MergeArguments) -> Path:
    """Run the whole step; returns the output folder."""
    from .hub import push_folder
    from .merging.adapter import write_adapter
    from .merging.card import write_card, write_merge_marker
    from .merging.mergekit_config import CONFIG_FILE, build, mergekit_command
    from .merging.mergekit_route import run_mergekit
    from .merging.plan import make_plan
    from .merging.stream.merge import stream_merge
    from .merging.tokenizer import save_tokenizer
    from .outputs import atomic_output_dir

    plan = make_plan(args)
    method = METHODS[plan.method]
    yaml_text = command = None
    if method.mergekit:
        yaml_text = build(plan.recipe(args, local=False)).to_yaml() + "\n"
        command = mergekit_command(str(plan.output / CONFIG_FILE), str(plan.output) + "-mergekit", plan.method,
                                   args.seed)
    with atomic_output_dir(plan.output, args.overwrite) as tmp:
        if yaml_text:
            (tmp / CONFIG_FILE).write_text(yaml_text)
        if args.emit_only:
            logger.info(f"Wrote {plan.output / CONFIG_FILE}; run the merge with:\n{command}")
            return plan.output
        if plan.output_format in ("full", "both") and plan.route == "mergekit":
            run_mergekit(build(plan.recipe(args, local=True)), tmp, args.seed, plan.shard_bytes, args.device)
        else:
            if plan.output_format in ("full", "both"):
                stream_merge(build(plan.recipe(args, local=True)), tmp, plan.base_path, plan.submodels, args.seed,
                             plan.shard_bytes, args.device)
            save_tokenizer(plan.base_path, plan.chat_template, tmp)
        errors = None
        if plan.output_format in ("adapter", "both"):
            errors = write_adapter(plan, tmp if plan.output_format == "adapter" else tmp / ADAPTER_SUBFOLDER,
                                   args.adapter_rank, args.dtype)
        write_card(tmp, submodels=plan.submodels, base_ref=plan.base_ref, method=plan.method, weights=plan.weights,
                   density=args.density if method.density else None, output_format=plan.output_format,
                   adapter_rank=args.adapter_rank, yaml_text=yaml_text, command=command, rank_errors=errors)
        write_merge_marker(tmp, plan)
    logger.info(f"Merged {len(plan.submodels)} sub-models ({plan.method}) into {plan.output}")
    if args.push_to_hub:
        url = push_folder(plan.output, args.hub_model_id, "model", args.private,
                          f"dtm-hf merge: {plan.method} of {len(plan.submodels)} sub-models")
        logger.info(f"Pushed to {url}")
    return plan.output


def main(args: MergeArguments) -> Path:
    from .outputs import output_lock

    with output_lock(args.output_dir):  # one writer at a time
        return merge(args)


def make_parser(prog: str | None = None):
    from trl import TrlParser

    return add_config_flag(TrlParser((MergeArguments,), prog=prog or "dtm-hf merge"))


if __name__ == "__main__":
    run_command(make_parser, main)
