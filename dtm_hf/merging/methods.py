"""The merge methods, one entry each: everything the rest of the merge step needs to know about a method.

Adding a method is adding an entry to METHODS (mergekit's `merge_methods/registry.py` works the same way): its
mergekit configuration, whether it takes a density or a seed, how the streaming route may run it, whether it can
be written as one LoRA adapter, and its text on the merged model's card.
"""

from collections.abc import Callable
from dataclasses import dataclass


def _models(recipe, density: bool) -> list[dict]:
    models = []
    for adapter, weight in zip(recipe.submodels, recipe.weights, strict=True):
        parameters = {"weight": weight} | ({"density": recipe.density} if density else {})
        models.append({"model": f"{recipe.base}+{adapter}", "parameters": parameters})
    return models


def _linear(recipe) -> dict:
    # The weights arrive already normalised when asked; `normalize` keeps mergekit from dividing again by a sum
    # that is then 1, and lets --normalize false mean a plain weighted sum.
    return {"models": _models(recipe, density=False), "parameters": {"normalize": bool(recipe.normalize)}}


def _task_vectors(density: bool) -> Callable:
    """TIES, DARE-TIES and task arithmetic: weighted task vectors (sub-model minus base) added to the base."""

    def build(recipe) -> dict:
        config = {"models": _models(recipe, density), "base_model": recipe.base}
        if recipe.normalize is not None:
            config["parameters"] = {"normalize": recipe.normalize}
        return config

    return build


@dataclass(frozen=True)
class MergeMethod:
    name: str
    summary: str  # what it does, on the card: "merged with **NAME**, SUMMARY"
    # The body of its mergekit configuration from a MergeRecipe; None: mergekit has no such method, so it is only
    # written as an adapter (`adapter` must then be set).
    mergekit: Callable | None = None
    density: bool = False  # takes --density: the share of each task vector kept
    randomised: bool = False  # depends on --seed (mergekit's --random-seed); the streaming route leaves it to mergekit
    averages: bool = False  # a weighted average of the sub-models: weights >= 0, normalised unless --normalize false
    task_vectors: bool = False  # adds merged task vectors to the base: a tensor no adapter changes is the base's
    row_blocks: bool = False  # a row of the result depends on the same row of each input only (after `top_k`)
    top_k: bool = False  # each task vector is first trimmed to its top `density` by magnitude (TIES)
    # As one LoRA adapter: "exact" (the ranks concatenated; --adapter_rank truncates it by SVD) or "paper" (A and B
    # averaged separately, which needs sub-models with the same LoRA settings); None: full models only.
    adapter: str | None = None
    note: str | None = None  # a paragraph for the card


METHODS: dict[str, MergeMethod] = {m.name: m for m in [
    MergeMethod(
        "linear", "a weighted average of the sub-models' weights (the paper's merge)",
        mergekit=_linear, averages=True, row_blocks=True, adapter="exact"),
    MergeMethod(
        "ties", "TIES: sign-consensus merge of the sub-models' task vectors, each trimmed to its top `density`",
        mergekit=_task_vectors(density=True), density=True, task_vectors=True, row_blocks=True, top_k=True,
        note="Entries of a task vector whose magnitude ties at the density threshold are kept in index order, as a "
             "stable sort keeps them. `mergekit-yaml` keeps whichever its unstable sort ranks first (CPU and CUDA "
             "differ), so its output on the configuration below can differ at those entries and nowhere else."),
    MergeMethod(
        "task_arithmetic", "task arithmetic: the weighted sum of the sub-models' task vectors added to the base",
        mergekit=_task_vectors(density=False), task_vectors=True, row_blocks=True),
    MergeMethod(
        "dare_ties", "DARE-TIES: task vectors randomly dropped to `density` and rescaled, then sign-consensus merged",
        mergekit=_task_vectors(density=True), density=True, randomised=True, task_vectors=True),
    MergeMethod(
        "paper", "the paper code's merge: the LoRA A matrices and the B matrices each averaged separately",
        averages=True, adapter="paper",
        note="**Not an average of the sub-models.** Averaging A and B separately gives (sum w_i B_i)(sum w_i A_i), "
             "which is not sum w_i B_i A_i, the average of the sub-models' weight deltas. It is offered to "
             "reproduce the published numbers; `--method linear` is the average of the sub-models."),
]}
