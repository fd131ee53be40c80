"""What `dtm-hf merge` will do, decided before any work: the sub-models and their base found and checked against
each other (metadata only; Hub inputs are downloaded here), the weights, the output form and the route."""

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import DtmError
from . import submodels as sm
from .adapter import check_supported
from .mergekit_config import MergeRecipe
from .methods import METHODS

SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text) -> int:
    """Bytes of a size such as 5GB, 500MB or 2GiB."""
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)\s*([KMG]I?B|B)?", str(text).strip().upper())
    if not match or float(match.group(1)) <= 0:
        raise DtmError(f"--max_shard_size must be a size like 5GB or 500MB, got {text!r}")
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2) or "B"])


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


def chat_template_of(folder: Path) -> str | None:
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    config = folder / "tokenizer_config.json"
    return json.loads(config.read_text()).get("chat_template") if config.is_file() else None


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

    def recipe(self, args, local: bool) -> MergeRecipe:
        """The mergekit recipe; `local` names downloaded Hub inputs by their snapshot folders, for the run here."""
        return MergeRecipe(
            method=self.method, base=str(self.base_path) if local else self.base_ref,
            submodels=[str(s.path) if local else s.ref for s in self.submodels], weights=self.weights,
            density=args.density, normalize=args.normalize, dtype=args.dtype, chat_template=self.chat_template)


def _weights(args, count: int) -> list[float]:
    weights = parse_weights(args.weights, count)
    if not METHODS[args.method].averages:
        return weights
    if any(w < 0 for w in weights):
        raise DtmError(f"--weights must not be negative for --method {args.method}; got {args.weights}")
    if not any(weights):
        raise DtmError("--weights are all zero; give at least one sub-model a positive weight")
    if args.normalize:
        weights = [w / sum(weights) for w in weights]
    if args.output_format != "full" and abs(sum(weights) - 1) > 1e-6:
        raise DtmError(f"an adapter on the base can only express weights that sum to 1, these sum to "
                       f"{sum(weights):g}; drop --normalize false or use --output_format full")
    return weights


def make_plan(args) -> MergePlan:
    """Check every input against the others; `args` (MergeArguments) checked its own values when it was built."""
    from ..outputs import check_apart, check_output_dir

    if args.base_model:
        check_apart(args.output_dir, {"the base model": args.base_model})
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
    check_apart(output, [("the sub-model", path) for _, path in found])
    subs = [sm.read(ref, path) for ref, path in found]
    weights = _weights(args, len(subs))
    base_ref, base_path = sm.resolve_base(args.base_model, subs)
    check_apart(output, {"the base model": base_path})
    if "+" in base_ref or "@" in base_ref:
        raise DtmError(f"the base model path {base_ref!r} contains '+' or '@', which mergekit cannot read; move it")
    sm.check_against_base(subs, sm.model_shapes(base_path))
    method = METHODS[args.method]
    if method.adapter == "paper":
        sm.check_same_adapters(subs, f"--method {args.method} (A and B averaged separately)")
    if args.output_format != "full":
        check_supported(subs)
    exact_rank = sum(s.rank for s in subs)
    if args.adapter_rank is not None and args.adapter_rank > exact_rank:
        raise DtmError(f"--adapter_rank {args.adapter_rank} is above the exact merge's rank {exact_rank} (the sum of "
                       "the sub-models' ranks), so it would only add zeros; leave it out for the exact adapter or "
                       f"choose at most {exact_rank}")
    for sub in subs:
        sm.check_finite(sub)

    templates = {chat_template_of(s.path) for s in subs} - {None}
    if len(templates) > 1:
        raise DtmError("the sub-models' tokenizers have different chat templates; merge sub-models of one training run")
    template = templates.pop() if templates else None
    route = args.lora_route if args.lora_route != "auto" else "mergekit" if method.randomised else "stream"
    return MergePlan(output=output, submodels=subs, base_ref=base_ref, base_path=base_path, method=args.method,
                     weights=weights, output_format=args.output_format,
                     chat_template=template if template != chat_template_of(base_path) else None,
                     route=route, shard_bytes=parse_size(args.max_shard_size))
