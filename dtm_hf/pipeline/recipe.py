"""A pipeline recipe: one section per step, each parsed in memory by that step's own parser into its dataclasses
(so a section is checked exactly as the step's `--config` file would be), with the run folder's paths filled in,
and the references between sections checked before any stage runs."""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from .. import distribute, evaluate, merge, train
from ..arguments import Arguments
from ..cli import parse_values, read_yaml
from ..distribute import DistributeArguments
from ..errors import DtmError
from ..evaluate import EvaluateArguments
from ..names import ALL, ALL_CLUSTERS, cluster_names
from .layout import RunLayout

SECTIONS = ("distribute", "train", "merge", "evaluate", "hub", "accelerate_config", "parallel_submodels",
            "gpus_per_submodel")


@dataclass
class HubSettings(Arguments):
    namespace: str | None = field(default=None, metadata={"help": "The user or organisation that receives the repos."})
    push: bool = field(default=False, metadata={"help": "Push the data, the sub-models and the merges."})
    private: bool = field(default=False, metadata={"help": "Create the repos as private."})
    prefix: str | None = field(default=None, metadata={"help": "Repo name prefix (default: the run folder's name)."})

    def __post_init__(self):
        super().__post_init__()
        if self.push and not self.namespace:
            raise DtmError("recipe section 'hub' has push: true but no namespace (a user or organisation name)")


@dataclass
class Recipe:
    """The recipe's sections as written (what each stage's fingerprint records) and as parsed."""

    sections: dict
    distribute: DistributeArguments | None = None
    train: tuple | None = None  # (DtmArguments, SFTConfig, ModelConfig), output under submodels/
    merges: dict = field(default_factory=dict)  # merged/<name> -> MergeArguments
    evaluate: EvaluateArguments | None = None
    hub: HubSettings = field(default_factory=HubSettings)
    accelerate_config: str | None = None
    parallel_submodels: int = 1  # sub-model trainings at the same time
    gpus_per_submodel: int | None = None  # GPUs per training (default: the visible GPUs divided evenly)


def load_recipe(path: str | None, layout: RunLayout) -> dict:
    """The recipe file's sections; with no file, the offline demo's (its inputs written under the run folder)."""
    if path is None:
        from ..demo.recipe import prepare_demo

        return prepare_demo(layout.run_dir)
    recipe = read_yaml(path, "recipe")
    unknown = sorted(set(recipe) - set(SECTIONS))
    if unknown:
        raise DtmError(f"unknown section(s) {unknown} in {path}; the sections are {', '.join(SECTIONS)}")
    return recipe


def _section(recipe: dict, name: str, kind: type):
    value = recipe.get(name)
    if value is not None and not isinstance(value, kind):
        shape = "a list of merge settings (one mapping per merge)" if kind is list else "a mapping of keys to values"
        raise DtmError(f"recipe section {name!r} must be {shape}")
    return value


def parse_section(module, values: dict, overrides: dict, label: str) -> tuple:
    """A section through its step's parser, with the run's paths (`overrides`) over the section's own keys."""
    try:
        return parse_values(module.make_parser(), {**values, **overrides}, [])
    except DtmError as err:
        raise DtmError(f"recipe section {label!r}: {err}") from err


def merge_name(section: dict) -> str:
    """merged/<name>: the section's output_dir's last part, else its method."""
    return Path(section.get("output_dir") or section.get("method") or merge.MergeArguments.method).name


def _count(value, name: str, flag: int | None):
    """A positive count from the run's flag, else the recipe's key."""
    value = flag if flag is not None else value
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise DtmError(f"{name} must be a positive integer, got {value!r}")
    return value


def parse_recipe(sections: dict, layout: RunLayout, stages: list[str], parallel: int | None = None,
                 gpus: int | None = None) -> Recipe:
    """The recipe's sections parsed; `parallel` and `gpus` (the run's flags) override the recipe's keys."""
    for name in ("distribute", "train"):
        if name in stages and not isinstance(sections.get(name), dict):
            raise DtmError(f"the recipe has no {name!r} section, which the {name} stage needs")
    recipe = Recipe(sections=sections, accelerate_config=sections.get("accelerate_config"),
                    parallel_submodels=_count(sections.get("parallel_submodels"), "parallel_submodels", parallel) or 1,
                    gpus_per_submodel=_count(sections.get("gpus_per_submodel"), "gpus_per_submodel", gpus))
    if recipe.accelerate_config and not Path(recipe.accelerate_config).is_file():
        raise DtmError(f"accelerate_config {recipe.accelerate_config} does not exist; give an accelerate config file "
                       "(see recipes/accelerate_configs/)")
    data = str(layout.data_dir)
    if (values := _section(sections, "distribute", dict)) is not None:
        (recipe.distribute,) = parse_section(distribute, values, {"output_dir": data, "overwrite": True,
                                                                  "push_to_hub": False}, "distribute")
    if (values := _section(sections, "train", dict)) is not None:
        recipe.train = parse_section(train, values, {
            "dataset": data, "cluster": ALL_CLUSTERS, "overwrite": False, "push_to_hub": False,
            "output_dir": str(layout.submodels_dir)}, "train")
        try:
            train.check(*recipe.train[1:], hub=False)  # offline: a Hub base is checked by the train stage
        except DtmError as err:
            raise DtmError(f"recipe section 'train': {err}") from err
    if (values := _section(sections, "evaluate", dict)) is not None:
        if recipe.train is None:
            raise DtmError("recipe section 'evaluate' needs a 'train' section: it evaluates what the recipe trains")
        dtm_args, training_args, model_args = recipe.train
        if "seed" in values and values["seed"] != training_args.seed:
            raise DtmError(f"recipe section 'evaluate' has seed {values['seed']}, training {training_args.seed}: the "
                           "held-out rows follow the training seed; leave seed out of 'evaluate'")
        # The evaluate stage lists every model when it runs; the seed is training's, so both hold out the same rows.
        (recipe.evaluate,) = parse_section(evaluate, values, {
            "models": [f"base={model_args.model_name_or_path}"], "dataset": data, "seed": training_args.seed,
            "output_dir": str(layout.eval_dir), "overwrite": True}, "evaluate")
        if "held_out" in sections["train"] and dtm_args.held_out != recipe.evaluate.held_out:
            raise DtmError(f"recipe sections 'train' and 'evaluate' hold out different fractions ({dtm_args.held_out} "
                           f"and {recipe.evaluate.held_out}); set held_out in 'evaluate' only")
        recipe.train = (dataclasses.replace(dtm_args, held_out=recipe.evaluate.held_out), training_args, model_args)
    _parse_merges(recipe, _section(sections, "merge", list) or [], layout)
    if (values := _section(sections, "hub", dict)) is not None:
        keys = [f.name for f in dataclasses.fields(HubSettings)]
        unknown = sorted(set(values) - set(keys))
        if unknown:
            raise DtmError(f"unknown key(s) {unknown} in recipe section 'hub'; its keys are {', '.join(keys)}")
        recipe.hub = HubSettings(**values)
    return recipe


def _parse_merges(recipe: Recipe, sections: list, layout: RunLayout) -> None:
    if not all(isinstance(s, dict) for s in sections):
        raise DtmError("recipe section 'merge' must be a list of merge settings (one mapping per merge)")
    k = recipe.distribute.n_clusters if recipe.distribute else None
    for section in sections:
        name = merge_name(section)
        label = f"merge {name!r}"
        if name in recipe.merges:
            raise DtmError("two merges in the recipe write to the same merged/<name>; give each its own output_dir")
        named = section.get("submodels") or []
        names = [Path(s).name for s in ([named] if isinstance(named, str) else named)]
        if k is not None:
            missing = [s for s in names if s not in cluster_names(k)]
            if missing:
                raise DtmError(f"{label} names sub-model(s) {missing} that the recipe does not train "
                               f"(it trains {', '.join(cluster_names(k))})")
        if ALL in names:
            raise DtmError(f"{label} names the all-data baseline, which is not merged")
        # No names: every cluster's sub-model, which is what the training root stands for.
        subs = [str(layout.trained_dir(s)) for s in names] or [str(layout.submodels_dir)]
        (recipe.merges[name],) = parse_section(merge, section, {
            "submodels": subs, "output_dir": str(layout.merged(name)), "overwrite": True, "push_to_hub": False}, label)
