import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import yaml
from cli_helpers import dtm, one_error_line

from dtm_hf.data.held_out import is_held_out
from dtm_hf.demo.data import demo_texts, write_demo_jsonl
from dtm_hf.demo.tiny_model import save_tiny_llama

train = partial(dtm, "train")
REPO = Path(__file__).resolve().parent.parent
TINY_RECIPE = REPO / "recipes" / "tiny" / "dtm_lora.yaml"
N_PER_SKILL, K = 10, 4  # 40 rows, 10 per cluster


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A base without a chat template (like Llama-2-7b-hf), a distribute output with 4 clusters, and the tiny
    recipe pointed at them with a few steps per sub-model."""

    root = tmp_path_factory.mktemp("train")
    texts = demo_texts(N_PER_SKILL)
    base = save_tiny_llama(root / "base", texts)
    (base / "chat_template.jinja").unlink()
    data_file = write_demo_jsonl(root / "demo.jsonl", n_per_skill=N_PER_SKILL)
    data = root / "data"
    assert dtm("distribute", "--dataset", data_file, "--n_clusters", K, "--method", "random", "--output_dir", data) == 0
    recipe = yaml.safe_load(TINY_RECIPE.read_text())
    recipe.update(dataset=str(data), model_name_or_path=str(base), max_length=128, per_device_train_batch_size=2,
                  max_steps=2, output_dir=str(root / "out"))
    recipe_file = root / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe))
    return {"root": root, "base": base, "data": data, "recipe": recipe_file, "out": root / "out"}


@pytest.fixture(scope="module")
def trained(setup):
    """Every cluster and the baseline, trained once for the module."""
    assert train("--config", setup["recipe"], "--cluster", "all_clusters", "--baseline") == 0
    return setup["out"]


def parse_args(setup, *argv):
    from dtm_hf.cli import parse
    from dtm_hf.train import make_parser

    return parse(make_parser(), ["--config", str(setup["recipe"]), *map(str, argv)])


def test_layout_marker_and_adapter_loads(setup, trained):
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM

    assert sorted(p.name for p in trained.iterdir()) == ["all"] + [f"cluster_{i}" for i in range(K)]
    for name, rows in [*((f"cluster_{i}", N_PER_SKILL) for i in range(K)), ("all", K * N_PER_SKILL)]:
        folder = trained / name
        files = {p.name for p in folder.iterdir()}
        assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "chat_template.jinja",
                "trainer_state.json", "README.md", "dtm_train.json"} <= files
        assert not any(f.startswith("checkpoint-") for f in files) and "training_args.bin" not in files
        marker = json.loads((folder / "dtm_train.json").read_text())
        assert marker["cluster"] == name and marker["dataset_config"] == name
        assert marker["dataset"] == str(setup["data"]) and marker["base_model"] == str(setup["base"])
        assert marker["train_rows"] == rows and marker["held_out_rows"] == 0 and marker["global_step"] == 2
        assert marker["chat_template"].startswith("dtm-hf default") and marker["final_loss"] > 0
        assert marker["hyperparameters"]["lora_r"] == 16 and marker["hyperparameters"]["packing"] is True
        config = json.loads((folder / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == str(setup["base"]) and Path(config["base_model_name_or_path"]).is_absolute()
    card = (trained / "cluster_0" / "README.md").read_text()
    for text in ("dtm-hf", "disperse-then-merge", "lora", "| rows trained on | 10 |", "lora_alpha"):
        assert text in card

    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(setup["base"]), trained / "cluster_0")
    assert any("lora_B" in n for n, _ in adapter.named_parameters())
    cwd = os.getcwd()
    os.chdir(setup["root"].parent)  # the recorded base must work from anywhere
    try:
        AutoPeftModelForCausalLM.from_pretrained(trained / "cluster_1")
    finally:
        os.chdir(cwd)


def test_rerun_skips_complete_submodels(trained, setup, capsys):
    before = {p: p.stat().st_mtime_ns for p in trained.rglob("*")}
    capsys.readouterr()
    assert train("--config", setup["recipe"], "--cluster", "all_clusters", "--baseline") == 0
    out = capsys.readouterr().out
    assert out.count("skip: complete") == K + 1 and "train on" not in out
    assert {p: p.stat().st_mtime_ns for p in trained.rglob("*")} == before


def test_row_counts_union_all_ratio_held_out(setup):
    from datasets import load_dataset

    from dtm_hf.training.plan import plan

    def rows(*argv):
        dtm, training, model = parse_args(setup, *argv)
        return {run.name: (len(run.data), run.held_out_rows, run.cluster_rows) for run in plan(dtm, training)}

    assert rows("--cluster", "cluster_0+cluster_1") == {"cluster_0+cluster_1": (20, 0, 20)}
    assert rows("--cluster", "all") == {"all": (40, 0, 40)}
    assert rows("--cluster", "cluster_2", "--baseline") == {"cluster_2": (10, 0, 10), "all": (40, 0, 40)}
    assert rows("--cluster", "all", "--data_ratio", "0.25") == {"all": (10, 0, 40)}
    everything = load_dataset(str(setup["data"]), "all", split="train")
    expected_held = sum(is_held_out(r, 0.3, 42) for r in everything["row"])
    assert 0 < expected_held < 40
    assert rows("--cluster", "all", "--held_out", "0.3") == {"all": (40 - expected_held, expected_held, 40)}
    dtm, training, model = parse_args(setup, "--cluster", "all", "--held_out", "0.3")
    (run,) = plan(dtm, training)
    held_messages = [m for m, r in zip(everything["messages"], everything["row"], strict=True) if is_held_out(r, 0.3, 42)]
    assert not any(m in held_messages for m in run.data["messages"])


@pytest.mark.parametrize("packing", [True, False])
def test_labels_cover_exactly_assistant_tokens_and_eos(setup, packing):
    from dtm_hf.training.chat_template import load_tokenizer
    from dtm_hf.training.plan import plan
    from dtm_hf.training.trainer import build_trainer

    dtm, training, model = parse_args(setup, "--cluster", "cluster_0", "--packing", str(packing).lower())
    tokenizer, _ = load_tokenizer(dtm, model, training, str(setup["base"]))
    (run,) = plan(dtm, training)
    trainer = build_trainer(run, tokenizer, str(setup["base"]), training, model)
    expected, conversations = 0, 0
    for messages in run.data["messages"]:
        encoded = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
        ids, mask = encoded["input_ids"], encoded["assistant_masks"]
        assert ids[max(i for i, m in enumerate(mask) if m)] == tokenizer.eos_token_id  # the EOS is in the mask
        expected += sum(mask)
        conversations += 1
    labelled = eos_labelled = 0
    for batch in trainer.get_train_dataloader():
        labels = batch["labels"]
        labelled += int((labels != -100).sum())
        eos_labelled += int((labels == tokenizer.eos_token_id).sum())
    assert labelled == expected and eos_labelled == conversations


def test_packed_examples_do_not_attend_to_each_other(setup):
    """A packed batch (one row, per-example position ids) gives each example the logits it has on its own."""
    import torch

    from dtm_hf.training.chat_template import load_tokenizer
    from dtm_hf.training.plan import plan
    from dtm_hf.training.trainer import build_trainer

    dtm, training, model = parse_args(setup, "--cluster", "cluster_0")
    assert training.packing
    tokenizer, _ = load_tokenizer(dtm, model, training, str(setup["base"]))
    (run,) = plan(dtm, training)
    trainer = build_trainer(run, tokenizer, str(setup["base"]), training, model)
    batch = next(iter(trainer.get_train_dataloader()))
    ids, positions = batch["input_ids"], batch["position_ids"]
    starts = (positions[0] == 0).nonzero().flatten().tolist() + [ids.shape[1]]
    assert ids.shape[0] == 1 and len(starts) > 3 and "attention_mask" not in batch
    net = trainer.model.eval()
    with torch.no_grad():
        packed = net(input_ids=ids, position_ids=positions, use_cache=False).logits[0]  # as SFTTrainer calls it
        for start, end in zip(starts, starts[1:], strict=False):
            alone = net(input_ids=ids[:, start:end], use_cache=False).logits[0]
            torch.testing.assert_close(packed[start:end], alone, atol=1e-5, rtol=1e-4)


def test_resume_from_last_checkpoint(setup, tmp_path, monkeypatch, capsys):
    from transformers import Trainer

    original = Trainer._save_checkpoint

    def save_then_crash(self, *args, **kwargs):
        original(self, *args, **kwargs)
        raise KeyboardInterrupt("simulated interruption after the first checkpoint")

    argv = ["--config", setup["recipe"], "--cluster", "cluster_3", "--output_dir", tmp_path, "--max_steps", 3,
            "--save_steps", 1]
    monkeypatch.setattr(Trainer, "_save_checkpoint", save_then_crash)
    capsys.readouterr()
    assert train(*argv) == 130  # Ctrl-C: one line, no traceback
    assert "interrupted; rerun the same command to resume" in one_error_line(capsys, "train")
    folder = tmp_path / "cluster_3"
    assert (folder / "checkpoint-1").is_dir() and not (folder / "dtm_train.json").exists()
    monkeypatch.setattr(Trainer, "_save_checkpoint", original)
    capsys.readouterr()
    assert train(*argv) == 0
    assert "resume from checkpoint-1" in capsys.readouterr().out
    marker = json.loads((folder / "dtm_train.json").read_text())
    state = json.loads((folder / "trainer_state.json").read_text())
    assert marker["global_step"] == 3 == state["global_step"]
    assert not list(folder.glob("checkpoint-*"))


def test_overwrite_retrains(setup, tmp_path, capsys):
    argv = ["--config", setup["recipe"], "--cluster", "cluster_0", "--output_dir", tmp_path, "--max_steps", 1]
    assert train(*argv) == 0
    first = (tmp_path / "cluster_0" / "dtm_train.json").stat().st_mtime_ns
    assert train(*argv, "--overwrite") == 0
    assert (tmp_path / "cluster_0" / "dtm_train.json").stat().st_mtime_ns != first


def test_full_fine_tuning_and_literal_chat_template(setup, tmp_path):
    template = (REPO / "dtm_hf" / "training" / "templates" / "chat_template.jinja").read_text()
    assert train("--config", setup["recipe"], "--cluster", "cluster_1", "--output_dir", tmp_path, "--max_steps", 1,
                 "--use_peft", "false", "--chat_template", template) == 0
    folder = tmp_path / "cluster_1"
    assert (folder / "model.safetensors").is_file() and not (folder / "adapter_config.json").exists()
    marker = json.loads((folder / "dtm_train.json").read_text())
    assert marker["adapter"] == "full" and marker["chat_template"] == "the recipe"


def test_qlora_on_cpu(setup, tmp_path, capsys):
    pytest.importorskip("bitsandbytes")
    assert train("--config", setup["recipe"], "--cluster", "cluster_2", "--output_dir", tmp_path, "--max_steps", 1,
                 "--load_in_4bit", "true") == 0
    assert "4-bit on CPU" in capsys.readouterr().out
    marker = json.loads((tmp_path / "cluster_2" / "dtm_train.json").read_text())
    assert marker["adapter"] == "qlora" and marker["hyperparameters"]["bnb_4bit_quant_type"] == "nf4"
    assert (tmp_path / "cluster_2" / "adapter_model.safetensors").is_file()


def test_push_to_hub_and_load_back(trained, setup, hub_server, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    repo = "tester/tiny-dtm-cluster_1"
    assert train("--config", setup["recipe"], "--cluster", "cluster_1", "--push_to_hub", "true",
                 "--hub_model_id", "tester/tiny-dtm-{cluster}") == 0
    assert f"push to {repo}" in capsys.readouterr().out
    files = hub_server.repo_files(repo)
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md", "dtm_train.json"} <= set(files)
    card = files["README.md"].decode()
    header = yaml.safe_load(card.split("---")[1])
    assert {"dtm-hf", "trl", "sft", "lora", "disperse-then-merge"} <= set(header["tags"])
    assert "| cluster | `cluster_1` |" in card and "final training loss" in card
    assert json.loads((trained / "cluster_1" / "dtm_train.json").read_text())["hub_model_id"] == repo
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(setup["base"]), repo)
    assert any("lora_A" in n for n, _ in model.named_parameters())
    capsys.readouterr()
    assert train("--config", setup["recipe"], "--cluster", "cluster_1", "--push_to_hub", "true",
                 "--hub_model_id", "tester/tiny-dtm-{cluster}") == 0
    assert "skip: complete" in capsys.readouterr().out  # pushed already: nothing to do


@pytest.mark.slow
def test_two_real_processes_with_accelerate(setup, tmp_path):
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--num_cpu_threads_per_process", "1", "-m", "dtm_hf.train", "--config", str(setup["recipe"]),
               "--cluster", "cluster_0", "--output_dir", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    marker = json.loads((tmp_path / "cluster_0" / "dtm_train.json").read_text())
    assert marker["hyperparameters"]["effective_batch_size"] == 2 * 2  # world size 2 x 2 per device
    assert marker["global_step"] == 2 and result.stdout.count("cluster_0: train on 10 rows") == 1


def test_bad_inputs_one_error_line_nothing_written(setup, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    base = ["--config", setup["recipe"], "--output_dir", out]
    not_ours = tmp_path / "not-ours"
    not_ours.mkdir()
    (not_ours / "data.jsonl").write_text('{"messages": []}\n')
    bad_recipe = tmp_path / "bad.yaml"
    bad_recipe.write_text(setup["recipe"].read_text() + "max_seq_length: 512\n")
    cases = [
        (["--cluster", "cluster_9"], "unknown cluster 'cluster_9'"),
        (["--cluster", "cluster_0+nope"], "unknown cluster 'nope'"),
        (["--cluster", "cluster_0", "--dataset", not_ours], "is not a `dtm-hf distribute` output"),
        (["--cluster", "cluster_0", "--dataset", tmp_path / "missing"], "does not exist"),
        (["--cluster", "cluster_0", "--data_ratio", "0"], "--data_ratio must be in (0, 1]"),
        (["--cluster", "all_clusters", "--push_to_hub", "true", "--hub_model_id", "me/one-repo"], "put {cluster} in it"),
    ]
    for argv, message in cases:
        assert train(*base, *argv) == 2
        assert message in one_error_line(capsys, "train")
    assert train("--config", bad_recipe, "--cluster", "cluster_0", "--output_dir", out) == 2
    assert "unknown key(s) 'max_seq_length'" in one_error_line(capsys, "train")
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if the qlora extra were not installed
    assert train(*base, "--cluster", "cluster_0", "--load_in_4bit", "true") == 2
    assert "pip install 'dtm-hf[qlora]'" in one_error_line(capsys, "train")
    assert not out.exists()


def test_evaluation_refuses_rows_a_model_trained_on(setup, trained, tmp_path, capsys):
    """The sub-models trained with held_out 0: every row was a training row."""
    sub = trained / "cluster_1"
    merged = tmp_path / "merged"
    assert dtm("merge", "--submodels", trained / "cluster_0", sub, "--output_dir", merged) == 0
    for name, model in (("sub", sub), ("merged", merged)):
        out = tmp_path / f"eval-{name}"
        capsys.readouterr()
        assert dtm("evaluate", "--models", f"{name}={model}", "--dataset", setup["data"], "--held_out", 0.25,
                   "--output_dir", out) == 2
        line = one_error_line(capsys, "evaluate")
        assert f"model '{name}' trained on " in line and "--allow_train_rows" in line
        assert not out.exists()
    out = tmp_path / "eval-allowed"
    assert dtm("evaluate", "--models", f"sub={sub}", "--dataset", setup["data"], "--held_out", 0.25,
               "--allow_train_rows", "--output_dir", out) == 0


def test_evaluation_accepts_the_rows_training_held_out(setup, tmp_path):
    out = tmp_path / "out"
    assert train("--config", setup["recipe"], "--cluster", "cluster_2", "--held_out", 0.3, "--output_dir", out) == 0
    assert dtm("evaluate", "--models", f"sub={out / 'cluster_2'}", "--dataset", setup["data"], "--held_out", 0.3,
               "--output_dir", tmp_path / "eval") == 0
    # A larger fraction than training held out reaches training rows.
    assert dtm("evaluate", "--models", f"sub={out / 'cluster_2'}", "--dataset", setup["data"], "--held_out", 0.6,
               "--output_dir", tmp_path / "eval-wider") == 2
