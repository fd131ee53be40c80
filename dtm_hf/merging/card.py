"""The merged model's card: which sub-models, trained on what, merged how (with the mergekit YAML); and
`dtm_merge.json`, the same facts for programs (evaluation reads what each sub-model trained on)."""

import json

from ..hub import PAPER, card_text
from ..names import MERGE_MARKER
from .methods import METHODS
from .submodels import SubModel

TAGS = ["dtm-hf", "merge", "mergekit", "disperse-then-merge"]


def write_card(out, *, submodels: list[SubModel], base_ref: str, method: str, weights: list[float],
               density: float | None, output_format: str, adapter_rank: int | None, yaml_text: str | None,
               command: str | None, rank_errors: dict | None) -> None:
    from huggingface_hub import ModelCard, ModelCardData

    entry = METHODS[method]
    datasets = sorted({name for sub in submodels for name, _ in sub.datasets})
    data = ModelCardData(base_model=[sub.ref for sub in submodels], base_model_relation="merge", datasets=datasets,
                         tags=TAGS, library_name="peft" if output_format == "adapter" else "transformers")
    rows = "\n".join(
        f"| `{sub.ref}` | {sub.name} | {', '.join(f'`{d}`' + (f' (`{c}`)' if c else '') for d, c in sub.datasets) or '?'} "
        f"| {w:.6g} |" for sub, w in zip(submodels, weights, strict=True))
    what = {"full": "a full model", "adapter": f"one LoRA adapter on `{base_ref}`",
            "both": f"a full model, and the same merge as one LoRA adapter on `{base_ref}` in `adapter/`"}[output_format]
    lines = [
        f"# Disperse-Then-Merge: {len(submodels)} sub-models merged",
        "",
        f"A {PAPER} model written by `dtm-hf merge` as {what}: LoRA sub-models of `{base_ref}`, each trained on one "
        f"portion of the instruction data, merged with **{method}**, {entry.summary}"
        + (f" (density {density:g})." if density is not None else "."),
        "",
        "| sub-model | cluster | trained on (config) | weight |",
        "|---|---|---|---|",
        rows,
    ]
    if entry.note:
        lines += ["", entry.note]
    if output_format in ("adapter", "both") and entry.adapter == "exact":
        if adapter_rank is None:
            lines += ["", "The adapter is exact: the sub-models' ranks concatenated with the weights folded into B, so "
                          "merging it into the base gives the full linear merge's weights to float tolerance."]
        else:
            worst = max(rank_errors.values(), default=0.0)
            mean = sum(rank_errors.values()) / max(len(rank_errors), 1)
            lines += ["", f"The adapter is truncated to rank {adapter_rank} by an SVD of each module's merged delta: "
                          f"relative error (Frobenius) mean {mean:.4g}, worst {worst:.4g} (per module in "
                          "`adapter_rank_errors.json`)."]
    if yaml_text:
        lines += ["", "## Merge configuration (mergekit)", "", "```yaml", yaml_text.rstrip(), "```", "",
                  "It runs unchanged with mergekit:", "", "```bash", command, "```"]
    ModelCard(card_text(data, "\n".join(lines))).save(out / "README.md")


def write_merge_marker(out, plan) -> None:
    subs = [{"ref": sub.ref, "weight": w, "training": sub.marker} for sub, w in zip(plan.submodels, plan.weights,
                                                                                    strict=True)]
    record = {"method": plan.method, "base_model": plan.base_ref, "submodels": subs}
    (out / MERGE_MARKER).write_text(json.dumps(record, indent=2) + "\n")
