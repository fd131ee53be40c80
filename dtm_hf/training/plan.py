"""What `dtm-hf train` will do, decided before any training: every input checked, each sub-model's rows selected,
and each output folder's state (train, resume, skip, or push only)."""

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DtmError, first_line
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


def check_settings(training_args, model_args) -> None:
    """TRL's and transformers' settings that would otherwise fail deep inside training (or train nothing), as one
    line each before any work: types and choices as flags are checked, then ranges and combinations."""
    from ..arguments import Arguments, check_fields

    check_fields(training_args)
    check_fields(model_args)
    t, m, in_range = training_args, model_args, Arguments.in_range
    if t.max_length is None:
        raise DtmError("--max_length must be set: dtm-hf encodes each row up to max_length tokens")
    in_range("max_length", t.max_length, 2)
    in_range("learning_rate", t.learning_rate, 0)
    in_range("per_device_train_batch_size", t.per_device_train_batch_size, 1)
    in_range("gradient_accumulation_steps", t.gradient_accumulation_steps, 1)
    if t.max_steps <= 0:  # epochs decide the length of the run
        in_range("num_train_epochs", t.num_train_epochs, 0, low_open=True)
    in_range("weight_decay", t.weight_decay, 0)
    in_range("adam_beta1", t.adam_beta1, 0, 1, high_open=True)
    in_range("adam_beta2", t.adam_beta2, 0, 1, high_open=True)
    in_range("adam_epsilon", t.adam_epsilon, 0)
    in_range("seed", t.seed, 0, 2**32 - 1)
    in_range("dataloader_num_workers", t.dataloader_num_workers, 0)
    if t.save_strategy == "steps":
        in_range("save_steps", t.save_steps, 0, low_open=True)
    if t.eval_strategy != "no":
        strategy = getattr(t.eval_strategy, "value", t.eval_strategy)
        raise DtmError(f"--eval_strategy {strategy}: dtm-hf train has no evaluation split; set eval_strategy: no and "
                       "score held-out rows with --held_out and `dtm-hf evaluate`")
    _check_reporting(t.report_to)
    if m.use_peft:
        in_range("lora_r", m.lora_r, 1)
        in_range("lora_alpha", m.lora_alpha, 0, low_open=True)
        in_range("lora_dropout", m.lora_dropout, 0, 1, high_open=True)
        from trl import get_peft_config

        try:  # PEFT's own checks of the LoRA configuration (the task type, ...)
            get_peft_config(m)
        except (ValueError, TypeError) as err:
            raise DtmError(f"invalid LoRA settings: {first_line(err)}") from err


def _check_reporting(report_to) -> None:
    from transformers.integrations import get_available_reporting_integrations

    available = get_available_reporting_integrations()
    for name in report_to or []:
        if name not in ("none", "all") and name not in available:
            raise DtmError(f"--report_to {name}: its package is not installed here; install it or set report_to: none")


def check_target_modules(model_args, base: str) -> None:
    """LoRA's target modules and modules_to_save must name modules of the base (PEFT says so only once the model
    is loaded). A single plain name is a list of one, as `--lora_target_modules q_proj` means, not a regular
    expression over full module names (how PEFT reads a string)."""
    import re

    targets = model_args.lora_target_modules
    if not model_args.use_peft or targets is None:
        return
    if isinstance(targets, str) and targets != "all-linear" and re.fullmatch(r"[\w.]+", targets):
        model_args.lora_target_modules = targets = [targets]
    names = _module_names(model_args, base)
    if isinstance(targets, str):
        found = targets == "all-linear" or any(re.fullmatch(targets, n) for n in names)
        missing = [] if found else [targets]
    else:
        missing = [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in names)]
    missing += [t for t in model_args.lora_modules_to_save or [] if not any(n == t or n.endswith(f".{t}")
                                                                            for n in names)]
    if missing:
        inner = {n.rpartition(".")[0] for n in names}
        leaves = sorted({n.rsplit(".", 1)[-1] for n in names if n and n not in inner})
        raise DtmError(f"LoRA module(s) {missing} are not in the base model {base}; its modules are named "
                       f"{', '.join(leaves)}")


def _module_names(model_args, base: str) -> list[str]:
    """The base's module names, from its config on the meta device (no weights read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    remote = bool(getattr(model_args, "trust_remote_code", False))
    try:
        config = AutoConfig.from_pretrained(base, revision=model_args.model_revision, trust_remote_code=remote)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=remote)
    except (OSError, ValueError) as err:
        raise DtmError(f"cannot read the base model {base}: {first_line(err)}") from err
    return [name for name, _ in model.named_modules()]


def _complete(checkpoint: Path) -> bool:
    """The Trainer writes trainer_state.json last: a checkpoint whose state parses was saved whole."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return True


def _checkpoints(folder: Path) -> list[Path]:
    """`checkpoint-N` folders, the last first."""
    found = [p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]), reverse=True)


def last_checkpoint(folder: Path) -> str | None:
    """The last complete `checkpoint-N`: a job killed while saving leaves an incomplete one after it."""
    return next((str(p) for p in _checkpoints(folder) if _complete(p)), None)


def set_aside_incomplete(folder: Path) -> None:
    """Move the incomplete checkpoints after the last complete one out of the Trainer's way, as
    `.incomplete-checkpoint-N` (called by the main process, with the folder's lock held)."""
    for checkpoint in _checkpoints(folder):
        if _complete(checkpoint):
            return
        aside = folder / f".incomplete-{checkpoint.name}"
        shutil.rmtree(aside, ignore_errors=True)
        checkpoint.rename(aside)
        logger.warning(f"{checkpoint} was not saved whole (interrupted?): set aside as {aside.name}")


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
