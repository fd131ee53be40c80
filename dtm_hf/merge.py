"""Step 3 of Disperse-Then-Merge: merge the LoRA sub-models into one model with mergekit.

    dtm-hf merge --submodels out/cluster_0 out/cluster_1 out/cluster_2 out/cluster_3 --method linear \
        --output_dir merged --push_to_hub --hub_model_id my-org/llama-2-7b-dtm

The merge is a mergekit configuration (`OUT/mergekit_config.yml`, `base+adapter` references, absolute paths)
that also runs unchanged with the `mergekit-yaml` command printed by `--emit_only`. `--output_format adapter`
writes the linear merge as one LoRA adapter instead (exact, or SVD-truncated with `--adapter_rank`), and
`--method paper` the published code's merge (LoRA A and B averaged separately), also as an adapter.
"""

import json
import math
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .cli import run_command
from .errors import DtmError

PAPER = "paper"
DTYPES = ("float16", "bfloat16", "float32")
FORMATS = ("full", "adapter", "both")
ROUTES = ("auto", "stream", "mergekit")
# The files mergekit copies from the base when it keeps the base's tokenizer as it is.
TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer.model",
                   "added_tokens.json", "merges.txt", "chat_template.jinja", "generation_config.json", "chat_template.json")
SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
ADAPTER_SUBFOLDER = "adapter"
RANK_ERRORS_FILE = "adapter_rank_errors.json"


@dataclass
class MergeArguments:
    # Inputs
    submodels: list[str] = field(default=None, metadata={
        "help": "Sub-model folders written by `dtm-hf train`, a training output root (all its clusters, not `all`), "
                "or Hub repo ids of LoRA adapters.", "nargs": "+"})
    base_model: str | None = field(default=None, metadata={
        "help": "Base model folder or Hub id; defaults to the base recorded in the adapters."})
    # Method
    method: str = field(default="linear", metadata={
        "help": "linear, ties, task_arithmetic, dare_ties (mergekit), or paper (LoRA A and B averaged separately, "
                "as the paper's code did; written as an adapter)."})
    weights: str | None = field(default=None, metadata={
        "help": "Mix ratio, one per sub-model, e.g. 1,1,1,1 (default: equal). Normalised to sum to 1 for linear "
                "and paper unless --normalize false."})
    density: float = field(default=0.5, metadata={"help": "Fraction of each task vector kept by ties and dare_ties."})
    normalize: bool | None = field(default=None, metadata={
        "help": "Divide by the sum of the weights. Default: true for linear and paper, mergekit's default otherwise "
                "(true for ties, false for dare_ties and task_arithmetic)."})
    dtype: str | None = field(default=None, metadata={
        "help": "float16, bfloat16 or float32: dtype of the merge and the output (default: the base model's)."})
    seed: int = field(default=42, metadata={"help": "Random seed of dare_ties (mergekit's --random-seed)."})
    device: str = field(default="cpu", metadata={
        "help": "Where the merge arithmetic runs: cpu, or cuda / cuda:N to do it on a GPU (tensors are read and "
                "written through the CPU either way)."})
    lora_route: str = field(default="auto", metadata={
        "help": "How LoRA sub-models reach mergekit: stream (each tensor computed on the fly as W + scale * B @ A, "
                "the base read once, nothing cached), mergekit (its `base+adapter` route: one merged copy of the base "
                "per sub-model in a temporary cache) or auto (stream, but mergekit for dare_ties so that its random "
                "drops match `mergekit-yaml --random-seed`)."})
    # Output
    output_dir: str = field(default=None, metadata={"help": "Folder to write the merged model into."})
    overwrite: bool = field(default=False, metadata={"help": "Replace a non-empty output folder."})
    emit_only: bool = field(default=False, metadata={
        "help": "Write OUT/mergekit_config.yml, print the mergekit-yaml command that runs it, and stop."})
    output_format: str | None = field(default=None, metadata={
        "help": "full (a model), adapter (one LoRA adapter; linear and paper only) or both (the adapter in "
                "OUT/adapter). Default: full, or adapter for --method paper."})
    adapter_rank: int | None = field(default=None, metadata={
        "help": "Truncate the merged adapter to this rank by SVD (default: exact, rank = the sum of the ranks)."})
    max_shard_size: str = field(default="5GB", metadata={"help": "Largest safetensors shard of the output, e.g. 2GB."})
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the merged model to --hub_model_id."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub model repo, e.g. my-org/llama-2-7b-dtm."})
    private: bool = field(default=False, metadata={"help": "Create the Hub repo as private."})


@dataclass
class MergePlan:
    """Everything the merge needs, checked before any work."""

    output: Path
    submodels: list
    base_ref: str
    base_path: Path
    method: str
    weights: list[float]
    output_format: str
    chat_template: str | None
    route: str
    shard_bytes: int

    def recipe(self, args: MergeArguments, local: bool):
        """The mergekit recipe; `local` names downloaded Hub inputs by their snapshot folders, for the run here."""
        from .merge_config import MergeRecipe

        return MergeRecipe(
            method=self.method, base=str(self.base_path) if local else self.base_ref,
            submodels=[str(s.path) if local else s.ref for s in self.submodels], weights=self.weights,
            density=args.density, normalize=_normalize(args), dtype=args.dtype, chat_template=self.chat_template)


def _normalize(args: MergeArguments) -> bool | None:
    if args.method in ("linear", PAPER):
        return True if args.normalize is None else args.normalize
    return args.normalize


def parse_weights(weights, count: int) -> list[float]:
    if weights is None:
        return [1.0] * count
    items = weights if isinstance(weights, list) else str(weights).replace(",", " ").split()
    try:
        values = [float(w) for w in items]
    except ValueError as err:
        raise DtmError(f"--weights must be numbers separated by commas, e.g. 1,1,2; got {weights!r}") from err
    if len(values) != count:
        raise DtmError(f"--weights has {len(values)} value(s) but there are {count} sub-models; give one per sub-model")
    if not all(math.isfinite(v) for v in values):
        raise DtmError(f"--weights must be finite numbers; got {weights!r}")
    return values


def _chat_template(folder: Path) -> str | None:
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    config = folder / "tokenizer_config.json"
    return json.loads(config.read_text()).get("chat_template") if config.is_file() else None


def _check_flags(args: MergeArguments) -> tuple[str, int]:
    """The checks that need no input read; returns the output format and the shard size in bytes."""
    from .hub import require_push_target
    from .merge_config import BUILDERS

    methods = [*BUILDERS, PAPER]
    if args.method not in methods:
        raise DtmError(f"unknown --method {args.method!r}; choose one of {', '.join(methods)}")
    if not args.submodels:
        raise DtmError("--submodels is required: sub-model folders, a training output root, or Hub repo ids")
    if not args.output_dir:
        raise DtmError("--output_dir is required")
    if args.dtype not in (None, *DTYPES):
        raise DtmError(f"unknown --dtype {args.dtype!r}; choose one of {', '.join(DTYPES)}")
    if args.lora_route not in ROUTES:
        raise DtmError(f"unknown --lora_route {args.lora_route!r}; choose one of {', '.join(ROUTES)}")
    shard_bytes = parse_size(args.max_shard_size)
    _check_device(args.device)
    if not 0 < args.density <= 1:
        raise DtmError(f"--density must be in (0, 1], got {args.density}")
    output_format = args.output_format or ("adapter" if args.method == PAPER else "full")
    if output_format not in FORMATS:
        raise DtmError(f"unknown --output_format {output_format!r}; choose one of {', '.join(FORMATS)}")
    if args.method == PAPER and output_format != "adapter":
        raise DtmError("--method paper is written as an adapter: pass --output_format adapter (or leave it out)")
    if args.method not in ("linear", PAPER) and output_format != "full":
        raise DtmError(f"--output_format {output_format} is exact only for --method linear; use --output_format full "
                       f"for {args.method}")
    if args.adapter_rank is not None and (output_format == "full" or args.method == PAPER):
        raise DtmError("--adapter_rank applies to the linear merge's adapter: add --output_format adapter or both")
    if args.adapter_rank is not None and args.adapter_rank < 1:
        raise DtmError(f"--adapter_rank must be at least 1, got {args.adapter_rank}")
    if args.emit_only and args.method == PAPER:
        raise DtmError("--emit_only writes a mergekit configuration, and mergekit has no `paper` method")
    if args.emit_only and args.push_to_hub:
        raise DtmError("--emit_only writes no model to push; drop --push_to_hub")
    require_push_target(args.push_to_hub, args.hub_model_id, "--hub_model_id")
    return output_format, shard_bytes


def _check_device(device: str) -> None:
    if not re.fullmatch(r"cpu|cuda(:[0-9]+)?", device):
        raise DtmError(f"unknown --device {device!r}; choose cpu, cuda or cuda:N")
    if device != "cpu":
        import torch

        index = int(device.partition(":")[2] or 0)
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise DtmError(f"--device {device}: no such CUDA GPU is visible here; use --device cpu")


def validate(args: MergeArguments) -> MergePlan:
    """Check every input before any work; Hub inputs are downloaded here (metadata and weights)."""
    from . import submodels as sm
    from .lora_adapter_merge import check_supported
    from .outputs import check_output_dir

    output_format, shard_bytes = _check_flags(args)
    output = check_output_dir(args.output_dir, args.overwrite)

    for ref in args.submodels:
        if "+" in ref or "@" in ref:
            raise DtmError(f"sub-model {ref!r} contains '+' or '@', which mergekit reads as model+adapter@revision; "
                           "rename or move it")
    found = sm.expand(args.submodels)
    refs = [ref for ref, _ in found]
    if len(set(refs)) != len(refs):
        raise DtmError(f"a sub-model is given twice ({', '.join(sorted({r for r in refs if refs.count(r) > 1}))}); "
                       "give each once and use --weights to weight it more")
    if any(Path(ref).is_relative_to(output) for ref in refs if Path(ref).is_absolute()):
        raise DtmError(f"the output folder {output} holds a sub-model; choose another --output_dir")
    subs = [sm.read(ref, path) for ref, path in found]
    weights = parse_weights(args.weights, len(subs))
    if args.method in ("linear", PAPER):
        if any(w < 0 for w in weights):
            raise DtmError(f"--weights must not be negative for --method {args.method}; got {args.weights}")
        if not any(weights):
            raise DtmError("--weights are all zero; give at least one sub-model a positive weight")
        if _normalize(args):
            weights = [w / sum(weights) for w in weights]
        if output_format != "full" and abs(sum(weights) - 1) > 1e-6:
            raise DtmError(f"an adapter on the base can only express weights that sum to 1, these sum to "
                           f"{sum(weights):g}; drop --normalize false or use --output_format full")
    base_ref, base_path = sm.resolve_base(args.base_model, subs)
    if "+" in base_ref or "@" in base_ref:
        raise DtmError(f"the base model path {base_ref!r} contains '+' or '@', which mergekit cannot read; move it")
    sm.check_against_base(subs, sm.model_shapes(base_path))
    if args.method == PAPER:
        sm.check_same_adapters(subs, "--method paper (A and B averaged separately)")
    if output_format != "full":
        check_supported(subs)

    templates = {_chat_template(s.path) for s in subs} - {None}
    if len(templates) > 1:
        raise DtmError("the sub-models' tokenizers have different chat templates; merge sub-models of one training run")
    template = templates.pop() if templates else None
    return MergePlan(output=output, submodels=subs, base_ref=base_ref, base_path=base_path, method=args.method,
                     weights=weights, output_format=output_format,
                     chat_template=template if template != _chat_template(base_path) else None,
                     route=_route(args), shard_bytes=shard_bytes)


def _route(args: MergeArguments) -> str:
    from .merge_config import RANDOMISED

    if args.lora_route != "auto":
        return args.lora_route
    return "mergekit" if args.method in RANDOMISED else "stream"


def parse_size(text) -> int:
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)\s*([KMG]I?B|B)?", str(text).strip().upper())
    if not match or float(match.group(1)) <= 0:
        raise DtmError(f"--max_shard_size must be a size like 5GB or 500MB, got {text!r}")
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2) or "B"])


def run_mergekit(config, out: Path, seed: int, shard_bytes: int, device: str) -> None:
    """mergekit's Python API, offline, with a LoRA merge cache made for this merge and deleted after it."""
    from mergekit.io.tasks import LoaderCache
    from mergekit.merge import MergeOptions, run_merge

    from .top_k import stable_magnitude

    cache = Path(tempfile.mkdtemp(prefix=".lora-merge-cache-", dir=out.parent))
    # mergekit keeps its loaders in a class-level dict keyed by reference: one left from an earlier merge in this
    # process would read an older (deleted) cache. Start and end empty.
    LoaderCache().loaders.clear()
    try:
        options = MergeOptions(lora_merge_cache=str(cache), write_model_card=False, random_seed=seed,
                               out_shard_size=shard_bytes, device=device)
        with stable_magnitude():
            run_merge(config, str(out), options=options)
    finally:
        LoaderCache().loaders.clear()
        shutil.rmtree(cache, ignore_errors=True)


def save_tokenizer(plan: MergePlan, out: Path) -> None:
    """What mergekit gives the full model: the base's tokenizer files, re-saved with the sub-models' chat template
    when the base has another (or none)."""
    from transformers import AutoTokenizer

    if not plan.chat_template:
        for name in TOKENIZER_FILES:
            if (plan.base_path / name).is_file():
                shutil.copy(plan.base_path / name, out / name)
        return
    tokenizer = AutoTokenizer.from_pretrained(plan.base_path)
    tokenizer.chat_template = plan.chat_template
    tokenizer.save_pretrained(out)


def write_adapter(plan: MergePlan, args: MergeArguments, out: Path) -> dict | None:
    """The merge as one LoRA adapter in `out`; returns the SVD's relative error per module, if truncated."""
    from . import lora_adapter_merge as lam

    template = plan.submodels[0]
    if plan.method == PAPER:
        merged, saved = lam.paper(plan.submodels, plan.weights, plan.base_path)
        lam.save(out, merged, saved, template, plan.base_ref, template.rank, template.alpha, args.dtype)
        return None
    merged, saved, rank = lam.concat(plan.submodels, plan.weights, plan.base_path)
    errors = None
    if args.adapter_rank is not None:
        merged, errors = lam.truncate(merged, args.adapter_rank)
        rank = args.adapter_rank
        (out / RANK_ERRORS_FILE).parent.mkdir(parents=True, exist_ok=True)
        (out / RANK_ERRORS_FILE).write_text(json.dumps(errors, indent=2) + "\n")
        worst = max(errors, key=errors.get)
        print(f"Rank-{rank} adapter: relative error per module mean {sum(errors.values()) / len(errors):.4g}, "
              f"worst {errors[worst]:.4g} ({worst}); all in {RANK_ERRORS_FILE}")
    lam.save(out, merged, saved, template, plan.base_ref, rank, rank, args.dtype)
    return errors


def merge(args: MergeArguments) -> Path:
    """Run the whole step; returns the output folder."""
    from .hub import push_folder
    from .lora_stream import stream_merge
    from .merge_card import write_card
    from .merge_config import CONFIG_FILE, build, mergekit_command
    from .outputs import atomic_output_dir

    plan = validate(args)
    yaml_text = command = None
    if plan.method != PAPER:
        yaml_text = build(plan.recipe(args, local=False)).to_yaml() + "\n"
        command = mergekit_command(str(plan.output / CONFIG_FILE), str(plan.output) + "-mergekit", plan.method,
                                   args.seed)
    with atomic_output_dir(plan.output, args.overwrite) as tmp:
        if yaml_text:
            (tmp / CONFIG_FILE).write_text(yaml_text)
        if args.emit_only:
            print(f"Wrote {plan.output / CONFIG_FILE}; run the merge with:\n{command}")
            return plan.output
        if plan.output_format in ("full", "both") and plan.route == "mergekit":
            run_mergekit(build(plan.recipe(args, local=True)), tmp, args.seed, plan.shard_bytes, args.device)
        else:
            if plan.output_format in ("full", "both"):
                stream_merge(build(plan.recipe(args, local=True)), tmp, plan.base_path, plan.submodels, args.seed,
                             plan.shard_bytes, args.device)
            save_tokenizer(plan, tmp)
        errors = None
        if plan.output_format in ("adapter", "both"):
            errors = write_adapter(plan, args, tmp if plan.output_format == "adapter" else tmp / ADAPTER_SUBFOLDER)
        write_card(tmp, submodels=plan.submodels, base_ref=plan.base_ref, method=plan.method, weights=plan.weights,
                   density=args.density if plan.method in ("ties", "dare_ties") else None,
                   output_format=plan.output_format, adapter_rank=args.adapter_rank, yaml_text=yaml_text,
                   command=command, rank_errors=errors)
    print(f"Merged {len(plan.submodels)} sub-models ({plan.method}) into {plan.output}")
    if args.push_to_hub:
        url = push_folder(plan.output, args.hub_model_id, "model", args.private,
                          f"dtm-hf merge: {plan.method} of {len(plan.submodels)} sub-models")
        print(f"Pushed to {url}")
    return plan.output


def main(args: MergeArguments) -> Path:
    return merge(args)


def make_parser(prog: str | None = None):
    from trl import TrlParser

    return TrlParser((MergeArguments,), prog=prog)


if __name__ == "__main__":
    run_command(make_parser, main)
