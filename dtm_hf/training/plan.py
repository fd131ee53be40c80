"""What `dtm-hf train` will do, decided before any training: every input checked, each sub-model's rows selected,
and each output folder's state (train, resume, skip, or push only)."""

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DtmError
from ..names import MARKER

logger = logging.getLogger(__name__)


@dataclass
class Run:
    """One sub-model to train: the configs it trains on and the state of its output folder."""

    configs: list[str]
    folder: Path
    data: object  # datasets.Dataset of first turns: `messages` and their input `row`
    cluster_rows: int
    held_out_rows: int
    action: str  # "train", "resume", "skip" or "push" (complete, but not yet on the Hub repo asked for)
    checkpoint: str | None = None
    hub_repo: str | None = None
    outcomes: dict = field(default_factory=dict)  # rows skipped or cut for length, by outcome (tokenize.py)

    @property
    def name(self) -> str:
        return "+".join(self.configs)


def resolve_model(model_args) -> str:
    """An absolute path for a local base, so the adapter's `base_model_name_or_path` works from anywhere."""
    from ..hub import local_or_hub

    if not model_args.model_name_or_path:
        raise DtmError("--model_name_or_path is required: a local folder or a Hub model id")
    return local_or_hub(model_args.model_name_or_path, "the base model", "--model_name_or_path")[0]


def check_quantization(model_args, training_args) -> None:
    if not (model_args.load_in_4bit or model_args.load_in_8bit):
        return
    if not model_args.use_peft:
        raise DtmError("load_in_4bit / load_in_8bit train a LoRA adapter on a quantized base; set use_peft: true")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise DtmError("load_in_4bit needs bitsandbytes: pip install 'dtm-hf[qlora]' (or set load_in_4bit: false "
                       "to train LoRA on the unquantized base)") from err
    import torch

    if training_args.use_cpu or not torch.cuda.is_available():
        logger.info("Note: 4-bit on CPU runs bitsandbytes' CPU kernels: it works, but is much slower than LoRA on the "
                    "unquantized base; use it to test a QLoRA recipe, train on a GPU.")


def _complete(checkpoint: Path) -> bool:
    """The Trainer writes trainer_state.json last: a checkpoint whose state parses was saved whole."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return True


def last_checkpoint(folder: Path) -> str | None:
    """The last complete `checkpoint-N` (a job killed while saving leaves an incomplete one: it is set aside, as
    `.incomplete-checkpoint-N`, by the main process)."""
    from ..log import is_main_process

    steps = {int(p.name.split("-")[1]): p for p in folder.glob("checkpoint-*")
             if p.is_dir() and p.name.split("-")[1].isdigit()}
    for step in sorted(steps, reverse=True):
        if _complete(steps[step]):
            return str(steps[step])
        if is_main_process():
            aside = folder / f".incomplete-{steps[step].name}"
            shutil.rmtree(aside, ignore_errors=True)
            steps[step].rename(aside)
            logger.warning(f"{steps[step]} was not saved whole (interrupted?): set aside as {aside.name}")
    return None


def folder_state(folder: Path, overwrite: bool) -> tuple[str, str | None]:
    """(action, checkpoint) for one sub-model's folder."""
    if folder.exists() and not folder.is_dir():
        raise DtmError(f"{folder} is a file where the sub-model's folder goes; move it away")
    if not folder.is_dir() or overwrite:
        return "train", None
    if (folder / MARKER).is_file():
        return "skip", None
    checkpoint = last_checkpoint(folder)
    return ("resume", checkpoint) if checkpoint else ("train", None)


def hub_repo(template: str, name: str) -> str:
    try:
        return template.format(cluster=name.replace("+", "-"))
    except (KeyError, IndexError, ValueError) as err:
        raise DtmError(f"--hub_model_id {template} may contain only the placeholder {{cluster}}") from err


def plan(dtm_args, training_args) -> list[Run]:
    """Every run the arguments ask for, with its rows, after checking every input."""
    from ..data.held_out import select_rows
    from ..data.repo import expand_clusters, load_rows, read_distribute_output
    from ..hub import require_push_target

    if not dtm_args.dataset:
        raise DtmError("--dataset is required: the output folder or Hub dataset id of `dtm-hf distribute`")
    source = read_distribute_output(dtm_args.dataset)
    selections = expand_clusters(dtm_args.cluster, source, dtm_args.baseline)
    push = training_args.push_to_hub
    require_push_target(push, training_args.hub_model_id, "--hub_model_id", placeholder="{cluster}",
                        token=training_args.hub_token)
    if push and len(selections) > 1 and "{cluster}" not in training_args.hub_model_id:
        raise DtmError(f"--hub_model_id {training_args.hub_model_id} would receive all {len(selections)} sub-models; "
                       "put {cluster} in it, e.g. my-org/llama2-7b-dtm-{cluster}")
    output_dir = Path(training_args.output_dir).expanduser().absolute()
    if output_dir.exists() and not output_dir.is_dir():
        raise DtmError(f"--output_dir {output_dir} is a file; choose a folder")
    runs = []
    for configs in selections:
        data = load_rows(source, configs)
        rows, held = select_rows(data, dtm_args.held_out, training_args.seed, dtm_args.data_ratio)
        name = "+".join(configs)
        if len(rows) == 0:
            raise DtmError(f"{name} has no rows to train on ({len(data)} rows, {held} held out, data_ratio "
                           f"{dtm_args.data_ratio}); lower --held_out or raise --data_ratio")
        folder = output_dir / name
        action, checkpoint = folder_state(folder, dtm_args.overwrite)
        repo = hub_repo(training_args.hub_model_id, name) if push else None
        if action == "skip" and push and json.loads((folder / MARKER).read_text()).get("hub_model_id") != repo:
            action = "push"
        runs.append(Run(configs, folder, rows, len(data), held, action, checkpoint, repo))
    return runs


def describe(run: Run) -> str:
    return {
        "train": f"train on {len(run.data)} rows ({run.held_out_rows} held out)",
        "resume": f"resume from {Path(run.checkpoint or '').name} ({len(run.data)} rows)",
        "skip": f"skip: complete ({run.folder.name}/{MARKER} exists); pass --overwrite to retrain",
        "push": f"complete; push to {run.hub_repo}",
    }[run.action]
