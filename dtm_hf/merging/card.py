"""The merged model's card: which sub-models, trained on what, merged how (with the mergekit YAML); and
`dtm_merge.json`, the same facts for programs (evaluation reads what each sub-model trained on)."""

import json

from ..hub import PAPER, card_text, display_ref, is_hub_id
from ..names import MERGE_MARKER
from .methods import METHODS
from .submodels import SubModel

TAGS = ["dtm-hf", "merge", "mergekit", "disperse-then-merge"]


def write_card(out, *, submodels: list[SubModel], base_ref: str, method: str, weights: list[float],
               density: float | None, output_format: str, adapter_rank: int | None, yaml_text: str | None,
               command: str | None, rank_errors: dict | None) -> None:
    from huggingface_hub import ModelCard, ModelCardData

    entry = METHODS[method]
    # The metadata takes Hub ids only: the merged sub-models when they are on the Hub, else the base they share.
    on_hub = [sub.ref for sub in submodels if is_hub_id(sub.ref)]
    parents, relation = (on_hub, "merge") if len(on_hub) == len(submodels) else (
        ([base_ref], "finetune") if is_hub_id(base_ref) else (None, None))
    datasets = sorted({name for sub in submodels for name, _ in sub.datasets if is_hub_id(name)})
    data = ModelCardData(base_model=parents, base_model_relation=relation, datasets=datasets or None,
                         tags=TAGS, library_name="peft" if output_format == "adapter" else "transformers")
    rows = "\n".join(
        f"| `{display_ref(sub.ref)}` | {sub.name} | "
        f"{', '.join(f'`{display_ref(d)}`' + (f' (`{c}`)' if c else '') for d, c in sub.datasets) or '?'} "
        f"| {w:.6g} |" for sub, w in zip(submodels, weights, strict=True))
    base = display_ref(base_ref)
    what = {"full": "a full model", "adapter": f"one LoRA adapter on `{base}`",
            "both": f"a full model, and the same merge as one LoRA adapter on `{base}` in `adapter/`"}[output_format]
    lines = [
        f"# Disperse-Then-Merge: {len(submodels)} sub-models merged",
        "",
        f"A {PAPER} model written by `dtm-hf merge` as {what}: LoRA sub-models of `{base}`, each trained on one "
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
    if yaml_text and is_hub_id(base_ref) and len(on_hub) == len(submodels):
        lines += ["", "## Merge configuration (mergekit)", "", "```yaml", yaml_text.rstrip(), "```", "",
                  "It runs unchanged with mergekit:", "", "```bash", command, "```"]
    elif yaml_text:  # local paths would mean nothing on the Hub
        lines += ["", "## Merge configuration (mergekit)", "", "`mergekit_config.yml` beside this card holds the "
                  "configuration, with the local paths of the machine that merged; with them in place it runs with "
                  "`mergekit-yaml mergekit_config.yml OUT --lora-merge-cache CACHE_DIR`."]
    ModelCard(card_text(data, "\n".join(lines))).save(out / "README.md")


def write_merge_marker(out, plan) -> None:
    subs = [{"ref": sub.ref, "weight": w, "training": sub.marker} for sub, w in zip(plan.submodels, plan.weights,
                                                                                    strict=True)]
    record = {"method": plan.method, "base_model": plan.base_ref, "submodels": subs}
    (out / MERGE_MARKER).write_text(json.dumps(record, indent=2) + "\n")
