"""Training one sub-model: TRL's SFTTrainer on the run's rows, then the adapter, the card and the marker; and its
upload to the Hub."""

import copy
import json
import logging
import os
import shutil
import time
from pathlib import Path

from ..errors import DtmError
from ..log import is_main_process
from ..names import MARKER
from ..outputs import write_atomic
from .plan import Run

logger = logging.getLogger(__name__)
PROGRESS_FILE = "DTM_PROGRESS_FILE"


def build_trainer(run: Run, tokenizer, base: str, training_args, model_args):
    """An SFTTrainer for one run, writing its checkpoints into the run's folder. The rows are encoded here (the
    reply and its end of turn labelled, long rows skipped or cut: counted in `run.outcomes`); TRL packs them."""
    from accelerate import PartialState
    from trl import SFTTrainer, get_peft_config, get_quantization_config

    from .tokenize import SKIPPED, TRUNCATED, encode_rows

    with PartialState().main_process_first():  # one process encodes, the others read its cached result
        data, run.outcomes = encode_rows(run.data, tokenizer, training_args.max_length,
                                         training_args.assistant_only_loss)
    if run.outcomes:
        logger.info(f"[{run.name}] {run.outcomes.get(SKIPPED, 0)} row(s) skipped (the prompt alone fills max_length "
                    f"{training_args.max_length}), {run.outcomes.get(TRUNCATED, 0)} reply(ies) cut at max_length")
    if len(data) == 0:
        raise DtmError(f"{run.name}: every row's prompt fills max_length {training_args.max_length}; raise max_length")
    args = copy.deepcopy(training_args)
    args.output_dir = str(run.folder)
    # dtm-hf pushes each finished sub-model itself, to its own repo; the Trainer must not push checkpoints, and
    # must not write the token into the checkpoints' training_args.bin
    args.push_to_hub, args.hub_model_id, args.hub_token = False, None, None
    # The labels are made above; TRL's masks for conversational rows would ask for {% generation %} markers
    args.assistant_only_loss, args.completion_only_loss, args.chat_template_path = False, None, None
    args.model_init_kwargs = {"revision": model_args.model_revision, "attn_implementation": model_args.attn_implementation,
                              "dtype": model_args.dtype, **(training_args.model_init_kwargs or {})}
    trainer = SFTTrainer(model=base, args=args, train_dataset=data, processing_class=tokenizer,
                         peft_config=get_peft_config(model_args), quantization_config=get_quantization_config(model_args))
    if os.environ.get(PROGRESS_FILE):  # `dtm-hf run` draws a progress line per job from it
        trainer.add_callback(progress_callback(Path(os.environ[PROGRESS_FILE])))
    return trainer


def progress_callback(path: Path):
    """A TrainerCallback that keeps `path` at {"step", "max_steps"} (written whole, main process only)."""
    from transformers import TrainerCallback

    class ProgressFile(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                write_atomic(path, json.dumps({"step": state.global_step, "max_steps": state.max_steps}))

        on_train_begin = on_step_end

    return ProgressFile()


def final_loss(log_history: list[dict], mean_loss: float | None) -> float | None:
    """The last logged training loss; the run's mean loss when no step was logged."""
    losses = [entry["loss"] for entry in log_history if "loss" in entry]
    return float(losses[-1]) if losses else mean_loss


def train_one(run: Run, tokenizer, base: str, dtm_args, training_args, model_args, template_origin: str):
    from accelerate import PartialState

    from .card import adapter_kind, hyperparameters, write_card, write_marker
    from .plan import set_aside_incomplete
    from .tokenize import SKIPPED

    state = PartialState()
    if state.is_main_process:  # with the folder's lock held (train.main)
        if dtm_args.overwrite and run.folder.exists():
            shutil.rmtree(run.folder)
        elif run.folder.is_dir():
            set_aside_incomplete(run.folder)
    state.wait_for_everyone()
    start = time.perf_counter()
    trainer = build_trainer(run, tokenizer, base, training_args, model_args)
    result = trainer.train(resume_from_checkpoint=run.checkpoint)
    trainer.save_model(str(run.folder))
    if state.is_main_process:
        folder = run.folder
        trainer.state.save_to_json(str(folder / "trainer_state.json"))
        (folder / "training_args.bin").unlink(missing_ok=True)  # a pickle, and it may hold a hub token
        # optimizer states, and checkpoints an interrupted save left incomplete; the sub-model is what is kept
        for checkpoint in [*folder.glob("checkpoint-*"), *folder.glob(".incomplete-checkpoint-*")]:
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
            "train_rows": len(run.data) - run.outcomes.get(SKIPPED, 0),
            "held_out_rows": run.held_out_rows,
            "long_rows": run.outcomes,
            "data_ratio": dtm_args.data_ratio,
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
    from ..hub import push_folder
    from .card import write_card, write_marker

    if not is_main_process():
        return
    marker = {**json.loads((run.folder / MARKER).read_text()), "hub_model_id": run.hub_repo}
    write_card(run.folder, marker)  # the card names the repo; the marker does once the upload succeeded
    url = push_folder(run.folder, run.hub_repo, "model", training_args.hub_private_repo or False,
                      f"dtm-hf train: {run.name} sub-model", token=training_args.hub_token,
                      retry="the same dtm-hf train command (a complete sub-model is only uploaded)")
    write_marker(run.folder, marker)
    logger.info(f"[{run.name}] pushed to {url}")
