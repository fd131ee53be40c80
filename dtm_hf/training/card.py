"""What `dtm-hf train` records beside each sub-model: the hyper-parameters, the card and the completion marker.

`dtm_train.json` is written last, so its presence means the sub-model is complete; the merge step reads it.
"""

import json
from pathlib import Path

from ..hub import PAPER, card_text, is_hub_id
from ..names import MARKER

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
    """The sub-model's README.md: base model, dataset and config, tags, cluster size, hyper-parameters, loss."""
    from huggingface_hub import ModelCard, ModelCardData

    kind, base, dataset = marker["adapter"], marker["base_model"], marker["dataset"]
    tags = TAGS + {"lora": ["lora"], "qlora": ["lora", "qlora"], "full": []}[kind]
    # The Hub accepts only Hub ids in `base_model` and `datasets`; a local path is named in the text instead.
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
    lines = [
        f"# {marker['cluster']}: a Disperse-Then-Merge sub-model",
        "",
        f"{what} on `{base}`, trained with TRL's `SFTTrainer` by `dtm-hf train` on the "
        f"`{marker['dataset_config']}` portion of `{dataset}`: one of the sub-models of {PAPER}, meant to be "
        "merged with its siblings by `dtm-hf merge`.",
        "",
        "| | |",
        "|---|---|",
        f"| cluster | `{marker['cluster']}` |",
        f"| rows in the cluster | {marker['cluster_rows']} |",
        f"| rows held out for evaluation | {marker['held_out_rows']} |",
        f"| rows trained on | {marker['train_rows']} |",
        f"| optimizer steps | {marker['global_step']} |",
        f"| final training loss | {loss} |",
        "",
        "The loss covers the assistant reply and its end-of-sequence token only.",
        "",
        "## Hyper-parameters",
        "",
        "| name | value |",
        "|---|---|",
        params,
    ]
    if kind != "full":
        lines += ["", "## Use", "", "```python", "from peft import PeftModel",
                  "from transformers import AutoModelForCausalLM", "",
                  f'base = AutoModelForCausalLM.from_pretrained("{base}")',
                  'model = PeftModel.from_pretrained(base, "THIS_REPO_OR_FOLDER")', "```"]
    ModelCard(card_text(data, "\n".join(lines))).save(folder / "README.md")


def write_marker(folder: Path, marker: dict) -> None:
    """Write `dtm_train.json` whole or not at all (rename is atomic)."""
    tmp = folder / f".{MARKER}.tmp"
    tmp.write_text(json.dumps(marker, indent=2) + "\n")
    tmp.rename(folder / MARKER)
