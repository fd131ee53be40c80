"""Shared inputs and checks of the bad-input and fault battery (tests/test_bad_*.py, tests/test_faults*.py): one
tiny world of inputs per module, and the promise every failure keeps: a non-zero exit, one error line on stderr
and no traceback, and nothing written or damaged."""

import json
from pathlib import Path

import torch
import yaml
from cli_helpers import dtm

from dtm_hf.demo.data import demo_texts, write_demo_jsonl
from dtm_hf.demo.tiny_model import save_tiny_llama

REPO = Path(__file__).resolve().parent.parent
RANK = 4


def make_adapter(base: Path, folder: Path, seed: int, cluster: str, rank: int = RANK) -> Path:
    """A LoRA sub-model of `base` as `dtm-hf train` leaves it: non-zero B, the tokenizer and `dtm_train.json`."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=["gate_proj", "up_proj", "down_proj"], lora_dropout=0.0))
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if "lora_" in name:
            param.data = torch.randn(param.shape, generator=generator) * 0.05
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    (folder / "dtm_train.json").write_text(json.dumps({"cluster": cluster, "dataset": "tester/demo",
                                                       "dataset_config": cluster, "base_model": str(base)}))
    return folder


def make_world(root: Path) -> dict:
    """A tiny base, its data (20 rows) split in 2 clusters, two LoRA sub-models in a training root, and the tiny
    training recipe pointed at them (a step or two per sub-model)."""
    base = save_tiny_llama(root / "base", demo_texts(10))
    data_file = write_demo_jsonl(root / "demo.jsonl", n_per_skill=5)
    assert dtm("distribute", "--dataset", data_file, "--n_clusters", 2, "--output_dir", root / "data") == 0
    train = root / "train"
    subs = [make_adapter(base, train / f"cluster_{i}", seed=i + 1, cluster=f"cluster_{i}") for i in range(2)]
    recipe = yaml.safe_load((REPO / "recipes" / "tiny" / "dtm_lora.yaml").read_text())
    recipe.update(dataset=str(root / "data"), model_name_or_path=str(base), max_length=64, max_steps=1, lora_r=4,
                  lora_alpha=8, per_device_train_batch_size=4, output_dir=str(root / "trained"))
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return {"root": root, "base": base, "data_file": data_file, "data": root / "data", "train": train, "subs": subs,
            "recipe": root / "recipe.yaml"}


def snapshot(*roots: Path) -> dict:
    """Every file and folder under `roots` (or the file itself), with each file's size, time and mode: equal
    snapshots, nothing touched. (A folder's time is left out: a lock file comes and goes beside an output.)"""
    found = {}
    for root in roots:
        for path in [root, *root.rglob("*")] if root.is_dir() else [root]:
            if path.is_dir():
                found[str(path)] = "folder"
            elif path.exists():
                stat = path.stat()
                found[str(path)] = (stat.st_size, stat.st_mtime_ns, stat.st_mode)
    return found


def leftovers(out: Path) -> list[str]:
    """Hidden files a run of `out` may leave beside it: temporary folders and its lock."""
    if not out.parent.is_dir():
        return []
    return sorted(p.name for p in out.parent.iterdir()
                  if p.name.startswith((f".{out.name}.tmp-", f".{out.name}.lock", ".lora-merge-cache")))


def error_line(capsys, command: str) -> str:
    """The one `dtm-hf COMMAND: error: ...` line, after checking that stderr has no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith(f"dtm-hf {command}: error: ")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def assert_refused(capsys, command: str, argv: list, expected: str, out: Path, inputs: tuple = (), code: int = 2,
                   before: dict | None = None) -> str:
    """`dtm-hf COMMAND ARGV` exits `code` with one error line holding `expected`, writes no `out` (or leaves it as it
    was, when `before` is its snapshot), leaves nothing beside it, and leaves `inputs` unchanged."""
    inputs_before = snapshot(*inputs)
    capsys.readouterr()
    assert dtm(command, *argv) == code
    line = error_line(capsys, command)
    assert expected in line, line
    assert snapshot(out) == before if before is not None else not out.exists(), line
    assert leftovers(out) == [], line
    assert snapshot(*inputs) == inputs_before, line
    return line


def write_yaml(path: Path, values) -> Path:
    path.write_text(values if isinstance(values, str) else yaml.safe_dump(values))
    return path
