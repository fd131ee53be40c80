"""Pipeline recipes for the tests of `dtm-hf run`: the demo data and a tiny model, a few steps per sub-model."""

import yaml


def recipe(inputs, **changes) -> dict:
    data, model = inputs
    base = {
        "distribute": {"dataset": str(data), "n_clusters": 2, "method": "random", "seed": 1},
        "train": {"model_name_or_path": str(model), "baseline": True, "use_peft": True, "lora_r": 4,
                  "lora_alpha": 8, "lora_target_modules": ["gate_proj", "up_proj", "down_proj"], "max_steps": 2,
                  "per_device_train_batch_size": 8, "max_length": 96, "use_cpu": True, "bf16": False,
                  "dtype": "float32", "activation_checkpointing": False, "save_strategy": "no", "report_to": "none",
                  "learning_rate": 1e-2},
        "merge": [{"method": "linear", "output_dir": "linear", "dtype": "float32"},
                  {"method": "ties", "density": 0.5, "output_dir": "ties", "dtype": "float32"}],
        "evaluate": {"held_out": 0.2, "batch_size": 16, "max_length": 96},
    }
    for section, values in changes.items():
        if isinstance(values, dict) and isinstance(base.get(section), dict):
            base[section] = {**base[section], **values}
        else:
            base[section] = values
    return base


def write_recipe(path, content):
    path.write_text(yaml.safe_dump(content))
    return path
