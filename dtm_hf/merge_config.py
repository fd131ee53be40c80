"""The merge as a mergekit configuration: one builder per method name, validated by mergekit's own schema.

LoRA sub-models are `base+adapter` references, so the YAML runs unchanged with
`mergekit-yaml mergekit_config.yml OUT --lora-merge-cache DIR`.
"""

import shlex
from collections.abc import Callable
from dataclasses import dataclass

from .errors import DtmError

CONFIG_FILE = "mergekit_config.yml"


@dataclass(frozen=True)
class MergeRecipe:
    method: str
    base: str  # the base model reference
    submodels: list[str]  # adapter references, one per sub-model
    weights: list[float]
    density: float
    normalize: bool | None  # None: the method's own default
    dtype: str | None
    chat_template: str | None


def _models(recipe: MergeRecipe, density: bool) -> list[dict]:
    models = []
    for adapter, weight in zip(recipe.submodels, recipe.weights, strict=True):
        parameters = {"weight": weight} | ({"density": recipe.density} if density else {})
        models.append({"model": f"{recipe.base}+{adapter}", "parameters": parameters})
    return models


def _linear(recipe: MergeRecipe) -> dict:
    # The weights arrive already normalised when asked; `normalize` keeps mergekit from dividing again by a sum
    # that is then 1, and lets --normalize false mean a plain weighted sum.
    return {"models": _models(recipe, density=False), "parameters": {"normalize": bool(recipe.normalize)}}


def _task_vectors(density: bool) -> Callable[[MergeRecipe], dict]:
    """TIES, DARE-TIES and task arithmetic: weighted task vectors (sub-model minus base) added to the base."""

    def build(recipe: MergeRecipe) -> dict:
        config = {"models": _models(recipe, density), "base_model": recipe.base}
        if recipe.normalize is not None:
            config["parameters"] = {"normalize": recipe.normalize}
        return config

    return build


BUILDERS: dict[str, Callable[[MergeRecipe], dict]] = {
    "linear": _linear,
    "task_arithmetic": _task_vectors(density=False),
    "ties": _task_vectors(density=True),
    "dare_ties": _task_vectors(density=True),
}
RANDOMISED = {"dare_ties"}  # methods whose result depends on mergekit's --random-seed


def build(recipe: MergeRecipe):
    """The recipe as a validated mergekit `MergeConfiguration`."""
    from mergekit.config import MergeConfiguration

    if recipe.method not in BUILDERS:
        raise DtmError(f"mergekit has no method {recipe.method!r} here; choose one of {', '.join(BUILDERS)}")
    config = {"merge_method": recipe.method, **BUILDERS[recipe.method](recipe)}
    if recipe.dtype:
        config["dtype"] = recipe.dtype
    if recipe.chat_template:
        config["chat_template"] = recipe.chat_template
    try:
        return MergeConfiguration.model_validate(config)
    except Exception as err:  # noqa: BLE001 - pydantic / mergekit validation; our builders should never fail it
        raise DtmError(f"mergekit rejects the merge configuration: {err}") from err


def mergekit_command(config_path: str, out: str, method: str, seed: int) -> str:
    """The exact `mergekit-yaml` command that runs the emitted file with a fresh LoRA merge cache."""
    parts = ["mergekit-yaml", config_path, out]
    command = shlex.join(parts) + ' --lora-merge-cache "$(mktemp -d)"'
    return command + (f" --random-seed {seed}" if method in RANDOMISED else "")
