"""The whole Disperse-Then-Merge pipeline from one recipe; with no recipe, an offline CPU demo.

    dtm-hf run                                              # demo: ./dtm-demo, a few minutes on 2 CPU cores
    dtm-hf run --config recipes/llama-2-7b/dtm.yaml --run_dir runs/llama2-dtm

A pipeline recipe has one section per step, `distribute:`, `train:`, `merge:` (a list) and `evaluate:`, whose
keys are exactly those of the step commands (copy a section into a step's own `--config`), and `hub:`
(`namespace`, `push`, `private`, `prefix`). The run folder holds `data/`, `submodels/<cluster>/`, `baseline/`,
`merged/<name>/`, `eval/`, `logs/` and `recipe.yaml`. A stage whose settings and input contents are unchanged and
whose outputs are complete is skipped; a changed setting re-runs that stage and the ones whose inputs it changes.
"""

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from .arguments import Arguments
from .cli import run_command
from .errors import DtmError
from .pipeline.stages import STAGES

logger = logging.getLogger("dtm_hf.run")  # also when run as __main__
DEMO_DIR, RUN_DIR = "dtm-demo", "dtm-run"


@dataclass
class RunArguments(Arguments):
    config: str | None = field(default=None, metadata={"help": "Pipeline recipe (YAML); the offline demo if unset."})
    run_dir: str | None = field(default=None, metadata={
        "help": f"Run folder (default: ./{DEMO_DIR} for the demo, ./{RUN_DIR} for a recipe)."})
    stages: str = field(default=",".join(STAGES), metadata={
        "help": "Comma-separated stages to run; they always run in pipeline order."})
    overwrite: bool = field(default=False, metadata={"help": "Re-run every stage even when its outputs are current."})
    parallel_submodels: int | None = field(default=None, metadata={
        "help": "Sub-model trainings at the same time, each a process of its own (default: the recipe's, else 1: one "
                "after another in this process)."})
    gpus_per_submodel: int | None = field(default=None, metadata={
        "help": "GPUs per training (default: the recipe's, else the visible GPUs divided by parallel_submodels)."})
    only: str | None = field(default=None, metadata={
        "help": "Train only this sub-model (cluster_2; `all` for the baseline): one job per node on a cluster, e.g. a "
                "SLURM array; with --stages train."})

    def __post_init__(self):
        super().__post_init__()
        bad = [s for s in self.stage_list if s not in STAGES]
        if bad:
            raise DtmError(f"unknown stage(s) {bad}; the stages are {', '.join(STAGES)}")
        self.in_range("parallel_submodels", self.parallel_submodels, 1)
        self.in_range("gpus_per_submodel", self.gpus_per_submodel, 1)
        if self.only and self.stage_list != ["train"]:
            raise DtmError("--only trains one sub-model: use it with --stages train")

    @property
    def stage_list(self) -> list[str]:
        return [s.strip() for s in self.stages.split(",") if s.strip()]


def run(args: RunArguments) -> Path:
    import yaml

    from .hub import redact
    from .outputs import write_atomic
    from .pipeline.engine import Pipeline
    from .pipeline.layout import RunLayout
    from .pipeline.push import check_repo_ids
    from .pipeline.recipe import load_recipe, parse_recipe
    from .pipeline.stages import missing_inputs, summary

    layout = RunLayout(Path(args.run_dir or (DEMO_DIR if args.config is None else RUN_DIR)).absolute())
    sections = load_recipe(args.config, layout)
    recipe = parse_recipe(sections, layout, args.stage_list, args.parallel_submodels, args.gpus_per_submodel)
    if recipe.hub.push and "push" in args.stage_list:
        check_repo_ids(recipe, layout.run_dir)  # the ids and the token, before hours of training
    pipeline = Pipeline(recipe, layout, args.overwrite, args.only)
    chosen = [name for name, stage in STAGES.items() if name in args.stage_list and stage.asked(recipe)]
    if problem := missing_inputs(pipeline, chosen):
        raise DtmError(problem)
    layout.run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(layout.recipe_file, yaml.safe_dump(redact(sections), sort_keys=False))
    start = time.perf_counter()
    for name in chosen:
        STAGES[name].run(pipeline)
    logger.info(summary(pipeline, time.perf_counter() - start))
    return layout.run_dir


def main(args: RunArguments) -> Path:
    import contextlib

    from .outputs import output_lock

    # One run per run folder; `--only` jobs of an array share it, each holding its sub-model's lock instead.
    run_dir = Path(args.run_dir or (DEMO_DIR if args.config is None else RUN_DIR))
    if run_dir.exists() and not run_dir.is_dir():
        raise DtmError(f"--run_dir {run_dir} is a file; choose a folder")
    with output_lock(run_dir) if not args.only else contextlib.nullcontext():
        return run(args)


def make_parser(prog: str | None = None):
    from transformers import HfArgumentParser

    # `--config` is this command's own flag (the pipeline recipe), so the plain HfArgumentParser is used.
    return HfArgumentParser((RunArguments,), prog=prog or "dtm-hf run")


if __name__ == "__main__":
    run_command(make_parser, main)
