"""Step 2 of Disperse-Then-Merge: train one LoRA / QLoRA sub-model per cluster with TRL's SFTTrainer.

    accelerate launch --config_file recipes/accelerate_configs/ddp.yaml -m dtm_hf.train \
        --config recipes/llama-2-7b/dtm_lora.yaml --cluster cluster_0
    dtm-hf train --config recipes/tiny/dtm_lora.yaml --cluster all_clusters --baseline

The input is a `dtm-hf distribute` output (its folder or its Hub dataset repo). `--cluster` names one config
(`cluster_3`), a union (`cluster_0+cluster_1`), `all` (every row: the paper's baseline) or `all_clusters` (each
cluster in turn; `--baseline` adds `all`). Each run writes `OUTPUT_DIR/<cluster>/`: the adapter, the tokenizer
with its chat template, `trainer_state.json`, a card, and last `dtm_train.json`, which marks it complete. A
complete run is skipped on a rerun unless `--overwrite`; an interrupted one resumes from its last checkpoint.

The loss covers the assistant reply and its EOS token only (`assistant_only_loss`), which needs a chat template
with `{% generation %}` markers: base models without a template get dtm-hf's default (Tulu's format).
"""

import copy
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from .cli import run_command
from .errors import DtmError


@dataclass
class DtmArguments:
    # Data
    dataset: str = field(default=None, metadata={"help": "A `dtm-hf distribute` output: its folder or Hub dataset id."})
    cluster: str = field(default=None, metadata={
        "help": "cluster_3; a union cluster_0+cluster_1; all (every row: the baseline); or all_clusters (each in turn)."})
    baseline: bool = field(default=False, metadata={"help": "Also train on `all` (vanilla SFT on all the data)."})
    data_ratio: float = field(default=1.0, metadata={
        "help": "Train on this fraction of the rows: the first ones after a shuffle seeded with --seed."})
    held_out: float = field(default=0.0, metadata={
        "help": "Fraction of rows kept out of training for `dtm-hf evaluate` (chosen by row index and --seed)."})
    # Model
    chat_template: str | None = field(default=None, metadata={
        "help": "A .jinja file or a template literal; default: the tokenizer's, else dtm-hf's (Tulu format)."})
    # Output
    overwrite: bool = field(default=False, metadata={"help": "Retrain sub-models that are already complete."})


@dataclass
class Run:
    """One sub-model to train: the configs it trains on and the state of its output folder."""

    configs: list[str]
    folder: Path
    data: object  # datasets.Dataset with `messages` only
    cluster_rows: int
    held_out_rows: int
    action: str  # "train", "resume", "skip" or "push" (complete, but not yet on the Hub repo asked for)
    checkpoint: str | None = None
    hub_repo: str | None = None

    @property
    def name(self) -> str:
        return "+".join(self.configs)


def is_main_process(training_args) -> bool:
    return training_args.process_index == 0


def log(training_args, message: str) -> None:
    if is_main_process(training_args):
        print(message, flush=True)


# ---- Validation: everything is checked before any training ------------------------------------------------------


def resolve_model(model_args) -> str:
    """An absolute path for a local base, so the adapter's `base_model_name_or_path` works from anywhere."""
    ref = model_args.model_name_or_path
    if not ref:
        raise DtmError("--model_name_or_path is required: a local folder or a Hub model id")
    path = Path(ref).expanduser()
    if path.is_dir():
        return str(path.absolute())
    if path.exists() or path.is_absolute() or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", ref):
        raise DtmError(f"the base model {ref} does not exist; pass a local model folder or a Hub model id")
    return ref


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
        log(training_args, "Note: 4-bit on CPU runs bitsandbytes' CPU kernels: it works, but is much slower than "
                           "LoRA on the unquantized base; use it to test a QLoRA recipe, train on a GPU.")


def load_tokenizer(dtm_args, model_args, training_args, base: str):
    """The base's tokenizer with the chat template to train with; returns (tokenizer, where the template is from)."""
    from transformers import AutoTokenizer
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    from .tiny_model import default_chat_template

    try:
        tokenizer = AutoTokenizer.from_pretrained(base, revision=model_args.model_revision,
                                                  trust_remote_code=training_args.trust_remote_code)
    except (OSError, ValueError) as err:
        raise DtmError(f"cannot load the tokenizer of {base}: {str(err).splitlines()[0]}") from err
    if dtm_args.chat_template and training_args.chat_template_path:
        raise DtmError("set either chat_template or chat_template_path, not both")
    template = dtm_args.chat_template
    if template and "{" not in template:
        path = Path(template).expanduser()
        if not path.is_file():
            raise DtmError(f"chat_template {template} is neither a file nor a Jinja template; pass a .jinja file")
        tokenizer.chat_template, origin = path.read_text(), str(path.absolute())
    elif template:
        tokenizer.chat_template, origin = template, "the recipe"
    elif tokenizer.chat_template is None and not training_args.chat_template_path:
        tokenizer.chat_template, origin = default_chat_template(), "dtm-hf default (Tulu format)"
    else:
        origin = training_args.chat_template_path or "the tokenizer"
    if (training_args.assistant_only_loss and tokenizer.chat_template
            and not has_generation_markers(tokenizer.chat_template)):
        try:  # TRL ships training versions (with markers) of the common templates and swaps them in itself
            patched = get_training_chat_template(tokenizer)
        except Exception as err:  # noqa: BLE001 - any failure means TRL has no training version of it
            raise DtmError(f"the chat template from {origin} has no {{% generation %}} markers, which "
                           "assistant_only_loss needs, and TRL knows no training version of it; pass chat_template "
                           "with markers (see dtm_hf/templates/chat_template.jinja)") from err
        if patched:
            origin += " (TRL's training version)"
    return tokenizer, origin


def folder_state(folder: Path, overwrite: bool) -> tuple[str, str | None]:
    """(action, checkpoint) for one sub-model's folder."""
    from transformers.trainer_utils import get_last_checkpoint

    from .submodel_card import MARKER

    if not folder.is_dir() or overwrite:
        return "train", None
    if (folder / MARKER).is_file():
        return "skip", None
    checkpoint = get_last_checkpoint(str(folder))
    return ("resume", checkpoint) if checkpoint else ("train", None)


def hub_repo(template: str, name: str) -> str:
    try:
        return template.format(cluster=name.replace("+", "-"))
    except (KeyError, IndexError, ValueError) as err:
        raise DtmError(f"--hub_model_id {template} may contain only the placeholder {{cluster}}") from err


def plan(dtm_args, training_args, model_args) -> list[Run]:
    """Every run the arguments ask for, with its rows, after checking every input."""
    import json

    from .cluster_data import expand_clusters, load_rows, read_distribute_output, select_rows
    from .hub import require_push_target
    from .submodel_card import MARKER

    if not 0 < dtm_args.data_ratio <= 1:
        raise DtmError(f"--data_ratio must be in (0, 1], got {dtm_args.data_ratio}")
    if not 0 <= dtm_args.held_out < 1:
        raise DtmError(f"--held_out must be in [0, 1), got {dtm_args.held_out}")
    if not dtm_args.dataset:
        raise DtmError("--dataset is required: the output folder or Hub dataset id of `dtm-hf distribute`")
    source = read_distribute_output(dtm_args.dataset)
    selections = expand_clusters(dtm_args.cluster, source, dtm_args.baseline)
    push = training_args.push_to_hub
    require_push_target(push, training_args.hub_model_id, "--hub_model_id")
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
        "skip": f"skip: complete ({run.folder.name}/dtm_train.json exists); pass --overwrite to retrain",
        "push": f"complete; push to {run.hub_repo}",
    }[run.action]


# ---- Training -------------------------------------------------------------------------------------------------


def build_trainer(run: Run, tokenizer, base: str, training_args, model_args):
    """An SFTTrainer for one run, writing its checkpoints into the run's folder."""
    from trl import SFTTrainer, get_peft_config, get_quantization_config

    args = copy.deepcopy(training_args)
    args.output_dir = str(run.folder)
    # dtm-hf pushes each finished sub-model itself, to its own repo; the Trainer must not push checkpoints
    args.push_to_hub, args.hub_model_id = False, None
    args.model_init_kwargs = {"revision": model_args.model_revision, "attn_implementation": model_args.attn_implementation,
                              "dtype": model_args.dtype, **(training_args.model_init_kwargs or {})}
    return SFTTrainer(model=base, args=args, train_dataset=run.data, processing_class=tokenizer,
                      peft_config=get_peft_config(model_args), quantization_config=get_quantization_config(model_args))


def final_loss(log_history: list[dict], mean_loss: float | None) -> float | None:
    """The last logged training loss; the run's mean loss when no step was logged."""
    losses = [entry["loss"] for entry in log_history if "loss" in entry]
    return float(losses[-1]) if losses else mean_loss


def train_one(run: Run, tokenizer, base: str, dtm_args, training_args, model_args, template_origin: str):
    from accelerate import PartialState

    from .submodel_card import adapter_kind, hyperparameters, write_card, write_marker

    state = PartialState()
    if dtm_args.overwrite and run.folder.exists() and state.is_main_process:
        shutil.rmtree(run.folder)
    state.wait_for_everyone()
    start = time.perf_counter()
    trainer = build_trainer(run, tokenizer, base, training_args, model_args)
    result = trainer.train(resume_from_checkpoint=run.checkpoint)
    trainer.save_model(str(run.folder))
    if state.is_main_process:
        folder = run.folder
        trainer.state.save_to_json(str(folder / "trainer_state.json"))
        (folder / "training_args.bin").unlink(missing_ok=True)  # a pickle, and it may hold a hub token
        for checkpoint in folder.glob("checkpoint-*"):  # optimizer states; the sub-model is what is kept
            shutil.rmtree(checkpoint)
        source = dtm_args.dataset
        path = Path(source).expanduser()
        marker = {
            "cluster": run.name,
            "configs": run.configs,
            "dataset": str(path.absolute()) if path.is_dir() else source,
            "dataset_config": run.name,
            "base_model": base,
            "adapter": adapter_kind(model_args),
            "cluster_rows": run.cluster_rows,
            "train_rows": len(run.data),
            "held_out_rows": run.held_out_rows,
            "seed": training_args.seed,
            "final_loss": final_loss(trainer.state.log_history, result.training_loss),
            "mean_train_loss": result.training_loss,
            "global_step": trainer.state.global_step,
            "train_seconds": round(time.perf_counter() - start, 2),
            "chat_template": template_origin,
            "hyperparameters": hyperparameters(dtm_args, training_args, model_args),
            "hub_model_id": None,
        }
        write_card(folder, marker)
        write_marker(folder, marker)
    state.wait_for_everyone()
    return trainer


def push(run: Run, training_args) -> None:
    """Upload a complete sub-model to its repo and record the repo in its marker."""
    import json

    from .hub import push_folder
    from .submodel_card import MARKER, write_marker

    if not is_main_process(training_args):
        return
    marker = json.loads((run.folder / MARKER).read_text())
    url = push_folder(run.folder, run.hub_repo, "model", training_args.hub_private_repo or False,
                      f"dtm-hf train: {run.name} sub-model")
    write_marker(run.folder, {**marker, "hub_model_id": run.hub_repo})
    log(training_args, f"[{run.name}] pushed to {url}")


def main(dtm_args: DtmArguments, training_args, model_args) -> list[Path]:
    """Train every sub-model asked for; returns their folders."""
    base = resolve_model(model_args)
    model_args.model_name_or_path = base
    check_quantization(model_args, training_args)
    tokenizer, template_origin = load_tokenizer(dtm_args, model_args, training_args, base)
    runs = plan(dtm_args, training_args, model_args)
    log(training_args, f"dtm-hf train: {len(runs)} sub-model(s) of {base} into {Path(training_args.output_dir).absolute()}")
    for run in runs:
        log(training_args, f"  {run.name}: {describe(run)}")
    trainer = None
    for run in runs:
        if run.action in ("train", "resume"):
            log(training_args, f"[{run.name}] {describe(run)}")
            trainer = train_one(run, tokenizer, base, dtm_args, training_args, model_args, template_origin)
            log(training_args, f"[{run.name}] complete: {run.folder}")
        if run.hub_repo and run.action != "skip":
            push(run, training_args)
    if trainer is not None:
        trainer.end()  # once, at the end: it closes the trackers and the process group that every run shares
    return [run.folder for run in runs]


def make_parser(prog: str | None = None):
    from trl import ModelConfig, SFTConfig, TrlParser

    parser = TrlParser((DtmArguments, SFTConfig, ModelConfig), prog=prog)
    # dtm-hf's defaults where they differ from TRL's: LoRA sub-models, loss on the assistant reply and EOS only
    parser.set_defaults(use_peft=True, assistant_only_loss=True)
    return parser


if __name__ == "__main__":
    run_command(make_parser, main)
