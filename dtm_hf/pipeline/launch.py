"""Training a sub-model in processes of its own: `accelerate launch -m dtm_hf.train` on the resolved recipe
section, for recipes that name an `accelerate_config` (several GPUs, FSDP, DeepSpeed)."""

import logging
import subprocess
import sys

import yaml

from ..errors import DtmError

logger = logging.getLogger(__name__)


def accelerate_launch(p, cluster: str, job: tuple) -> None:
    """Train `cluster` under `accelerate launch` with the recipe's config. The child reads the train section with
    this run's paths filled in, from the one file it needs."""
    dtm_args, training_args, _ = job
    values = {**p.recipe.sections["train"], "dataset": dtm_args.dataset, "cluster": cluster, "baseline": False,
              "held_out": dtm_args.held_out, "overwrite": dtm_args.overwrite, "push_to_hub": False,
              "output_dir": training_args.output_dir}
    recipe_file = p.layout.run_dir / f"train_{cluster}.yaml"
    recipe_file.write_text(yaml.safe_dump(values))
    # This interpreter's accelerate, so that the run works without the environment's bin/ on PATH.
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", p.recipe.accelerate_config,
               "-m", "dtm_hf.train", "--config", str(recipe_file)]
    logger.info("$ " + " ".join(command))
    if subprocess.run(command).returncode:
        raise DtmError(f"training {cluster} under accelerate failed; see the log above")
