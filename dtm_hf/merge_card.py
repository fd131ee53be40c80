"""The merged model's card: which sub-models, trained on what, merged how (with the mergekit YAML)."""

from .submodels import SubModel

TAGS = ["dtm-hf", "merge", "mergekit", "disperse-then-merge"]
PAPER = "[Disperse-Then-Merge](https://aclanthology.org/2024.findings-acl.175/) (Fu et al., Findings of ACL 2024)"
METHOD_TEXT = {
    "linear": "a weighted average of the sub-models' weights (the paper's merge)",
    "ties": "TIES: sign-consensus merge of the sub-models' task vectors, each trimmed to its top `density`",
    "dare_ties": "DARE-TIES: task vectors randomly dropped to `density` and rescaled, then sign-consensus merged",
    "task_arithmetic": "task arithmetic: the weighted sum of the sub-models' task vectors added to the base",
    "paper": "the paper code's merge: the LoRA A matrices and the B matrices each averaged separately",
}
PAPER_NOTE = ("**Not an average of the sub-models.** Averaging A and B separately gives (sum w_i B_i)(sum w_i A_i), "
              "which is not sum w_i B_i A_i, the average of the sub-models' weight deltas. It is offered to reproduce "
              "the published numbers; `--method linear` is the average of the sub-models.")

TIES_NOTE = ("Entries of a task vector whose magnitude ties at the density threshold are kept in index order, as a "
             "stable sort keeps them. `mergekit-yaml` keeps whichever its unstable sort ranks first (CPU and CUDA "
             "differ), so its output on the configuration below can differ at those entries and nowhere else.")


def write_card(out, *, submodels: list[SubModel], base_ref: str, method: str, weights: list[float],
               density: float | None, output_format: str, adapter_rank: int | None, yaml_text: str | None,
               command: str | None, rank_errors: dict | None) -> None:
    from huggingface_hub import ModelCard, ModelCardData

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
        f"portion of the instruction data, merged with **{method}**, {METHOD_TEXT[method]}"
        + (f" (density {density:g})." if density is not None else "."),
        "",
        "| sub-model | cluster | trained on (config) | weight |",
        "|---|---|---|---|",
        rows,
    ]
    if method == "paper":
        lines += ["", PAPER_NOTE]
    if method == "ties":
        lines += ["", TIES_NOTE]
    if output_format in ("adapter", "both") and method != "paper":
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
    # Not ModelCard.from_template: the YAML may hold a chat template, whose braces Jinja would expand.
    ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n").save(out / "README.md")
