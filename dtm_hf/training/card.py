"""What `dtm-hf train` records beside each sub-model: the hyper-parameters, the card and the completion marker.

`dtm_train.json` is written last, so its presence means the sub-model is complete; the merge step reads it.
"""

import json
from pathlib import Path

from ..hub import PAPER, card_text, display_ref, is_hub_id
from ..names import ALL, MARKER
from ..outputs import write_atomic

TAGS = ["dtm-hf", "trl", "sft", "disperse-then-merge"]
TRAINING_FIELDS = [
    "learning_rate", "lr_scheduler_type", "warmup_steps", "num_train_epochs", "max_steps",
    "per_device_train_batch_size", "gradient_accumulation_steps", "max_length", "packing", "packing_strategy",
    "assistant_only_loss", "optim", "adam_beta1", "adam_beta2", "adam_epsilon", "weight_decay", "max_grad_norm",
    "bf16", "fp16", "activation_checkpointing", "seed",
]
MODEL_FIELDS = ["dtype", "use_peft", "load_in_4bit", "load_in_8bit"]
LORA_FIELDS = ["lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "use_rslora", "use_dora"]
QUANT_FIELDS = ["bnb_4bit_quant_type", "use_bnb_nested_quant"]


def hyperparameters(dtm_args, training_args, model_args) -> dict:
    """The recipe settings that shape a sub-model (never the hub token), JSON-ready."""
    params = {name: getattr(training_args, name) for name in TRAINING_FIELDS}
    params["effective_batch_size"] = (training_args.per_device_train_batch_size
                                      * training_args.gradient_accumulation_steps * training_args.world_size)
    params.update({name: getattr(model_args, name) for name in MODEL_FIELDS})
    if model_args.use_peft:
        params.update({name: getattr(model_args, name) for name in LORA_FIELDS})
    if model_args.load_in_4bit:
        params.update({name: getattr(model_args, name) for name in QUANT_FIELDS})
    params.update(data_ratio=dtm_args.data_ratio, held_out=dtm_args.held_out)
    return json.loads(json.dumps(params, default=str))


def adapter_kind(model_args) -> str:
    if not model_args.use_peft:
        return "full"
    return "qlora" if model_args.load_in_4bit else "lora"


def write_card(folder: Path, marker: dict) -> None:
    (folder / "README.md").write_text(card(folder, marker))


def card(folder: Path, marker: dict, dataset_id: str | None = None) -> str:
    """The sub-model's README.md: base model, dataset and config, tags, rows, hyper-parameters, loss. Hub ids go in
    the card's metadata; local inputs are named by their folder name. `dataset_id` names the data's Hub repo when
    it was pushed apart from the sub-model (`dtm-hf run`); the marker's `hub_model_id` names this repo once pushed."""
    from huggingface_hub import ModelCardData

    kind, base = marker["adapter"], marker["base_model"]
    dataset = dataset_id or marker["dataset"]
    tags = TAGS + {"lora": ["lora"], "qlora": ["lora", "qlora"], "full": []}[kind]
    on_hub = is_hub_id(base)
    data = ModelCardData(
        base_model=base if on_hub else None,
        base_model_relation=("adapter" if kind != "full" else "finetune") if on_hub else None,
        datasets=[dataset] if is_hub_id(dataset) else None,
        tags=tags,
        library_name="peft" if kind != "full" else "transformers",
        pipeline_tag="text-generation",
    )
    what = {"lora": "A LoRA adapter", "qlora": "A QLoRA adapter (trained on the 4-bit base)",
            "full": "A fully fine-tuned model"}[kind]
    params = "\n".join(f"| `{k}` | `{v}` |" for k, v in marker["hyperparameters"].items())
    loss = "n/a" if marker["final_loss"] is None else f"{marker['final_loss']:.4f}"
    long_rows = ", ".join(f"{n} {what.replace('_', ' ')}" for what, n in (marker.get("long_rows") or {}).items())
    trained_on = (f"{what} on `{display_ref(base)}`, trained with TRL's `SFTTrainer` by `dtm-hf train` on the "
                  f"`{marker['dataset_config']}` config of `{display_ref(dataset)}`")
    if marker["cluster"] == ALL:
        title = "all: the all-data baseline of a Disperse-Then-Merge run"
        role = (f"{trained_on}: every row, the vanilla SFT baseline that {PAPER} compares its merged sub-models "
                "with. It is not merged.")
    else:
        title = f"{marker['cluster']}: a Disperse-Then-Merge sub-model"
        role = f"{trained_on}: one of the sub-models of {PAPER}, meant to be merged with its siblings by `dtm-hf merge`."
    lines = [
        f"# {title}", "", role, "",
        "| | |",
        "|---|---|",
        f"| cluster | `{marker['cluster']}` |",
        f"| rows in the config | {marker['cluster_rows']} |",
        f"| rows held out for evaluation | {marker['held_out_rows']} |",
        f"| rows trained on | {marker['train_rows']} |",
        *([f"| rows too long for max_length | {long_rows} |"] if long_rows else []),
        f"| optimizer steps | {marker['global_step']} |",
        f"| final training loss | {loss} |",
        "",
        "The loss covers the assistant reply and the token that ends its turn only.",
        "",
        "## Hyper-parameters",
        "",
        "| name | value |",
        "|---|---|",
        params,
    ]
    if kind != "full":
        here = marker.get("hub_model_id") or str(folder)
        lines += ["", "## Use", "", "```python", "from peft import PeftModel",
                  "from transformers import AutoModelForCausalLM", "",
                  f'base = AutoModelForCausalLM.from_pretrained("{display_ref(base)}")',
                  f'model = PeftModel.from_pretrained(base, "{here}")', "```"]
        if not on_hub:
            lines += ["", f"`{display_ref(base)}` is the local base model this adapter was trained on."]
    return card_text(data, "\n".join(lines))


def write_marker(folder: Path, marker: dict) -> None:
    """Write `dtm_train.json` whole or not at all."""
    write_atomic(folder / MARKER, json.dumps(marker, indent=2) + "\n")
