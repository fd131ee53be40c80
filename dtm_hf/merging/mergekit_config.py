"""The merge as a mergekit configuration, built from the method's entry in `methods.METHODS` and validated by
mergekit's own schema.

LoRA sub-models are `base+adapter` references, so the YAML runs unchanged with
`mergekit-yaml mergekit_config.yml OUT --lora-merge-cache DIR`.
"""

import shlex
from dataclasses import dataclass

from ..errors import DtmError
from .methods import METHODS

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


def build(recipe: MergeRecipe):
    """The recipe as a validated mergekit `MergeConfiguration`."""
    from mergekit.config import MergeConfiguration

    config = {"merge_method": recipe.method, **METHODS[recipe.method].mergekit(recipe)}
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
    command = shlex.join(["mergekit-yaml", config_path, out]) + ' --lora-merge-cache "$(mktemp -d)"'
    return command + (f" --random-seed {seed}" if METHODS[method].randomised else "")
