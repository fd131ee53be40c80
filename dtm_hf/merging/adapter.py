"""Merges of LoRA sub-models written as one PEFT LoRA adapter instead of a full model.

- exact: the linear merge sum_i w_i (W + s_i B_i A_i) = W + sum_i w_i s_i B_i A_i (weights summing to 1) is itself
  a LoRA of rank sum_i r_i: stack the A_i and put the B_i side by side with w_i s_i folded in.
- truncated (`--adapter_rank R`): the best rank-R approximation of each module's delta, by an SVD of the small
  (sum r_i)-square core left after QR of the stacked factors; the relative Frobenius error is reported per module.
- paper: the published code's merge, which averaged the A matrices and the B matrices separately. That is not
  the average of the weight deltas (B_1 A_1 + B_2 A_2 != (B_1 + B_2)(A_1 + A_2) / 2).
`modules_to_save` weights are averaged with the same weights (the base weight standing in where one is missing).
"""

import json
import logging
from pathlib import Path

from ..errors import DtmError
from .methods import METHODS
from .stream.writer import check_finite
from .submodels import ADAPTER_CONFIG, ADAPTER_WEIGHTS, PEFT_PREFIX, SubModel, model_shapes

logger = logging.getLogger(__name__)
RANK_ERRORS_FILE = "adapter_rank_errors.json"

UNSUPPORTED = ("fan_in_fan_out", "lora_bias", "trainable_token_indices", "target_parameters", "layer_replication",
               "rank_pattern", "alpha_pattern")


def check_supported(submodels: list[SubModel]) -> None:
    for sub in submodels:
        used = [key for key in UNSUPPORTED if sub.adapter_config.get(key)]
        if used:
            raise DtmError(f"sub-model {sub.ref} uses {', '.join(used)}, which the adapter output does not handle; "
                           "use --output_format full")


def _load(sub: SubModel) -> tuple[dict, dict]:
    """({base weight: (A, B)}, {base weight: saved module weight}) in float32."""
    loras, saved = sub.load_tensors()
    return ({w: (a.float(), b.float()) for w, (a, b) in loras.items()}, {k: t.float() for k, t in saved.items()})


def _base_tensors(base_path: Path, names: set[str]) -> dict:
    from safetensors import safe_open

    index = base_path / "model.safetensors.index.json"
    files = json.loads(index.read_text())["weight_map"] if index.is_file() else {}
    shapes = model_shapes(base_path)
    found = {}
    for name in sorted(names):
        if name not in shapes:
            raise DtmError(f"{name} of modules_to_save is not a weight of the base model")
        with safe_open(base_path / files.get(name, "model.safetensors"), framework="pt") as f:
            found[name] = f.get_tensor(name).float()
    return found


def _average_saved(saved: list[dict], weights: list[float], base_path: Path) -> dict:
    names = set().union(*saved)
    base = _base_tensors(base_path, {n for n in names if any(n not in s for s in saved)}) if names else {}
    return {name: sum(w * s.get(name, base.get(name)) for w, s in zip(weights, saved, strict=True))
            for name in sorted(names)}


def concat(submodels: list[SubModel], weights: list[float], base_path: Path) -> tuple[dict, dict, int]:
    """The exact merge: ({module: (A, B)} with scale 1, merged modules_to_save, rank)."""
    import torch

    loaded = [_load(sub) for sub in submodels]
    modules = sorted(set().union(*(loras for loras, _ in loaded)))
    rank = sum(sub.rank for sub in submodels)
    merged = {}
    for module in modules:
        parts = [(loras[module], w * sub.scale) for (loras, _), w, sub in zip(loaded, weights, submodels, strict=True)
                 if module in loras]
        a = torch.cat([a for (a, _), _ in parts])
        b = torch.cat([c * b for (_, b), c in parts], dim=1)
        pad = rank - a.shape[0]  # modules that only some sub-models adapt get zero rows
        merged[module] = (torch.nn.functional.pad(a, (0, 0, 0, pad)), torch.nn.functional.pad(b, (0, pad)))
    return merged, _average_saved([saved for _, saved in loaded], weights, base_path), rank


def truncate(merged: dict, rank: int) -> tuple[dict, dict]:
    """Best rank-`rank` approximation of each module's B @ A; returns it and the relative error per module."""
    import torch

    truncated, errors = {}, {}
    for module, (a, b) in merged.items():
        q_b, r_b = torch.linalg.qr(b.double())
        q_a, r_a = torch.linalg.qr(a.double().T)
        u, s, vh = torch.linalg.svd(r_b @ r_a.T)
        keep = min(rank, s.numel())
        root = s[:keep].sqrt()
        new_b = (q_b @ u[:, :keep]) * root
        new_a = root[:, None] * (vh[:keep] @ q_a.T)
        total = s.square().sum()
        errors[module] = float((s[keep:].square().sum() / total).sqrt()) if total > 0 else 0.0
        pad = rank - keep
        truncated[module] = (torch.nn.functional.pad(new_a.float(), (0, 0, 0, pad)),
                             torch.nn.functional.pad(new_b.float(), (0, pad)))
    return truncated, errors


def paper(submodels: list[SubModel], weights: list[float], base_path: Path) -> tuple[dict, dict]:
    """The paper's merge: A and B each averaged with the weights; rank and alpha stay the sub-models'."""
    loaded = [_load(sub) for sub in submodels]
    merged = {}
    for module in loaded[0][0]:
        merged[module] = (sum(w * loras[module][0] for (loras, _), w in zip(loaded, weights, strict=True)),
                          sum(w * loras[module][1] for (loras, _), w in zip(loaded, weights, strict=True)))
    return merged, _average_saved([saved for _, saved in loaded], weights, base_path)


def save(out: Path, merged: dict, saved: dict, template: SubModel, base_ref: str, rank: int, alpha: float,
         dtype: str | None) -> None:
    """Write `adapter_config.json` and `adapter_model.safetensors` in PEFT's layout."""
    import torch
    from safetensors.torch import save_file

    cast = getattr(torch, dtype) if dtype else torch.float32
    tensors = {}
    for module, (a, b) in merged.items():
        stem = PEFT_PREFIX + module.removesuffix(".weight")
        tensors[stem + ".lora_A.weight"] = a.to(cast).contiguous()
        tensors[stem + ".lora_B.weight"] = b.to(cast).contiguous()
    tensors.update({PEFT_PREFIX + name: t.to(cast).contiguous() for name, t in saved.items()})
    for name, tensor in tensors.items():
        check_finite(name, tensor)
    targets = sorted({module.removesuffix(".weight").rsplit(".", 1)[-1] for module in merged})
    config = dict(template.adapter_config, r=rank, lora_alpha=alpha, target_modules=targets,
                  base_model_name_or_path=base_ref, use_rslora=False, rank_pattern={}, alpha_pattern={},
                  inference_mode=True)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def write_adapter(plan, out: Path, adapter_rank: int | None, dtype: str | None) -> dict | None:
    """The merge of `plan` as one LoRA adapter in `out`; returns the SVD's relative error per module, if truncated."""
    template = plan.submodels[0]
    if METHODS[plan.method].adapter == "paper":
        merged, saved = paper(plan.submodels, plan.weights, plan.base_path)
        save(out, merged, saved, template, plan.base_ref, template.rank,
             template.scale * template.rank, dtype)  # the saved config is plain LoRA (scale alpha / r): same scale
        return None
    merged, saved, rank = concat(plan.submodels, plan.weights, plan.base_path)
    errors = None
    if adapter_rank is not None:
        merged, errors = truncate(merged, adapter_rank)
        rank = adapter_rank
        out.mkdir(parents=True, exist_ok=True)
        (out / RANK_ERRORS_FILE).write_text(json.dumps(errors, indent=2) + "\n")
        worst = max(errors, key=errors.get)
        logger.info(f"Rank-{rank} adapter: relative error per module mean {sum(errors.values()) / len(errors):.4g}, "
                    f"worst {errors[worst]:.4g} ({worst}); all in {RANK_ERRORS_FILE}")
    save(out, merged, saved, template, plan.base_ref, rank, rank, dtype)
    return errors
