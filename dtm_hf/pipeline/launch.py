"""The command that trains one sub-model in processes of its own: `python -m dtm_hf.train`, or `accelerate launch
-m dtm_hf.train` with the recipe's `accelerate_config` (or several GPUs of a job's slice), on the recipe's train
section resolved for this run. The child reads that section from the one file it needs, beside its log."""

import sys
from pathlib import Path

import yaml

from .jobs import Slot, slot_env


def job_recipe(p, cluster: str, job: tuple) -> Path:
    """The train section with this run's paths and this job's cluster filled in."""
    dtm_args, training_args, _ = job
    # The child only trains (this run pushes); a token in the section stays out of the file.
    section = {k: v for k, v in p.recipe.sections["train"].items() if k != "hub_token"}
    values = {**section, "dataset": dtm_args.dataset, "cluster": cluster, "baseline": False,
              "held_out": dtm_args.held_out, "overwrite": dtm_args.overwrite, "push_to_hub": False,
              "output_dir": training_args.output_dir}
    path = p.layout.logs_dir / f"train-{cluster}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def train_command(p, cluster: str, job: tuple, slot: Slot) -> tuple[list[str], dict[str, str]]:
    """argv and environment of the job that trains `cluster` in `slot`."""
    recipe = job_recipe(p, cluster, job)
    train = ["-m", "dtm_hf.train", "--config", str(recipe)]
    # This interpreter's accelerate, so that the run works without the environment's bin/ on PATH.
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--main_process_port", str(slot.port)]
    if slot.devices is not None:
        launch += ["--num_processes", str(len(slot.devices))]
    if p.recipe.accelerate_config:
        argv = [*launch[:3], "--config_file", p.recipe.accelerate_config, *launch[3:], *train]
    elif slot.devices is not None and len(slot.devices) > 1:
        argv = [*launch, "--multi_gpu", *train]
    else:
        argv = [sys.executable, *train]
    return argv, slot_env(slot)
