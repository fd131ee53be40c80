"""`dtm-hf train` on bad input: TRL's and transformers' settings that would fail deep inside training (or train
nothing), and inputs that are not what they should be. Each case is one error line before any work: exit 2, no
traceback, no output folder, the inputs untouched."""

import importlib.util

import pytest
from battery_helpers import assert_refused, snapshot, write_yaml

# (id, flags, the error line's text); the flags follow `--config RECIPE --cluster cluster_0 --output_dir OUT`
FLAGS = [
    ("lora-r-zero", ["--lora_r", 0], "--lora_r must be at least 1, got 0"),
    ("lora-r-negative", ["--lora_r", -4], "--lora_r must be at least 1, got -4"),
    ("lora-alpha-negative", ["--lora_alpha", -3], "--lora_alpha must be more than 0, got -3"),
    ("lora-alpha-zero", ["--lora_alpha", 0], "--lora_alpha must be more than 0, got 0"),
    ("lora-dropout-high", ["--lora_dropout", 1.5], "--lora_dropout must be in [0, 1), got 1.5"),
    ("lora-dropout-one", ["--lora_dropout", 1], "--lora_dropout must be in [0, 1), got 1.0"),
    ("lora-dropout-negative", ["--lora_dropout", -0.1], "--lora_dropout must be in [0, 1), got -0.1"),
    ("lora-task-type", ["--lora_task_type", "BOGUS"], "invalid LoRA settings: Invalid task type: 'BOGUS'"),
    ("lora-targets", ["--lora_target_modules", "nonexistent"], "LoRA module(s) ['nonexistent'] are not in the base"),
    ("lora-targets-some", ["--lora_target_modules", "q_proj", "qq_proj"], "LoRA module(s) ['qq_proj']"),
    ("modules-to-save", ["--lora_modules_to_save", "nope"], "LoRA module(s) ['nope'] are not in the base"),
    ("learning-rate", ["--learning_rate", -1], "--learning_rate must be at least 0, got -1.0"),
    ("batch-size", ["--per_device_train_batch_size", 0], "--per_device_train_batch_size must be at least 1, got 0"),
    ("accumulation", ["--gradient_accumulation_steps", 0], "--gradient_accumulation_steps must be at least 1"),
    ("no-steps", ["--max_steps", -1, "--num_train_epochs", 0], "--num_train_epochs must be more than 0, got 0"),
    ("negative-epochs", ["--max_steps", -1, "--num_train_epochs", -1], "--num_train_epochs must be more than 0"),
    ("max-length", ["--max_length", 1], "--max_length must be at least 2, got 1"),
    ("weight-decay", ["--weight_decay", -1], "--weight_decay must be at least 0, got -1.0"),
    ("beta1", ["--adam_beta1", 1], "--adam_beta1 must be in [0, 1), got 1.0"),
    ("beta2", ["--adam_beta2", 1.5], "--adam_beta2 must be in [0, 1), got 1.5"),
    ("epsilon", ["--adam_epsilon", -1], "--adam_epsilon must be at least 0, got -1.0"),
    ("seed-negative", ["--seed", -1], "--seed must be in [0, 4294967295], got -1"),
    ("seed-huge", ["--seed", 2**32], "--seed must be in [0, 4294967295]"),
    ("workers", ["--dataloader_num_workers", -1], "--dataloader_num_workers must be at least 0, got -1"),
    ("save-steps", ["--save_steps", 0], "--save_steps must be more than 0, got 0"),
    ("logging-steps", ["--logging_steps", 0], "invalid configuration: logging strategy"),
    ("warmup", ["--warmup_steps", -1], "invalid configuration: Got warmup_steps = -1"),
    ("eval-strategy", ["--eval_strategy", "steps"], "--eval_strategy steps: dtm-hf train has no evaluation split"),
    ("optim", ["--optim", "bogus"], "invalid choice: 'bogus'"),
    ("scheduler", ["--lr_scheduler_type", "cosinee"], "invalid choice: 'cosinee'"),
    ("dtype", ["--dtype", "float8"], "invalid choice: 'float8'"),
    ("attn-implementation", ["--attn_implementation", "bogus"], "unknown attn_implementation 'bogus'"),
    ("packed-attention", ["--packed_attention", "bogus"], "invalid choice: 'bogus'"),
    ("both-attentions", ["--packed_attention", "sdpa", "--attn_implementation", "eager"],
     "set either packed_attention (sdpa) or attn_implementation (eager), not both"),
    ("packed-without-packing", ["--packed_attention", "sdpa", "--packing", "false"], "is for packed batches"),
    ("4bit-without-peft", ["--load_in_4bit", "true", "--use_peft", "false"], "set use_peft: true"),
    ("4bit-and-8bit", ["--load_in_4bit", "true", "--load_in_8bit", "true"], "invalid configuration"),
    ("data-ratio", ["--data_ratio", 0], "--data_ratio must be in (0, 1], got 0.0"),
    ("held-out", ["--held_out", 1], "--held_out must be in [0, 1), got 1.0"),
    ("nothing-left", ["--held_out", 0.9, "--data_ratio", 0.05], "has no rows to train on"),
    ("unknown-flag", ["--lora_rank", 8], "unrecognized argument(s): --lora_rank 8"),
    ("abbreviated-flag", ["--lora_dropou", 0.1], "unrecognized argument(s): --lora_dropou 0.1"),
    ("cluster-unknown", ["--cluster", "cluster_9"], "unknown cluster 'cluster_9'"),
    ("cluster-union", ["--cluster", "cluster_0+nope"], "unknown cluster 'nope'"),
    ("cluster-twice", ["--cluster", "cluster_0+cluster_0"], "names a cluster twice"),
    ("cluster-empty", ["--cluster", ""], "--cluster is required"),
    ("push-without-id", ["--push_to_hub", "true"], "--push_to_hub needs --hub_model_id"),
    ("push-bad-id", ["--push_to_hub", "true", "--hub_model_id", "bad id!!/x y"], "is not a valid Hub repo id"),
    ("push-bad-template", ["--push_to_hub", "true", "--hub_model_id", "me/dtm-{name}"], "is not a valid Hub repo id"),
    ("push-one-repo", ["--cluster", "all_clusters", "--push_to_hub", "true", "--hub_model_id", "me/one"],
     "put {cluster} in it"),
    ("report-to", ["--report_to", "wandb"], "--report_to wandb: its package is not installed"),
]
if importlib.util.find_spec("wandb"):
    FLAGS = [case for case in FLAGS if case[0] != "report-to"]


@pytest.mark.parametrize(("flags", "expected"), [c[1:] for c in FLAGS], ids=[c[0] for c in FLAGS])
def test_bad_setting(world, flags, expected, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--config", world["recipe"], "--cluster", "cluster_0", "--output_dir", out, *flags]
    assert_refused(capsys, "train", argv, expected, out, (world["data"], world["base"], world["recipe"]))


CONFIGS = [
    ("dtype", {"dtype": "float8"}, "--dtype 'float8' is not one of the choices: auto, bfloat16, float16, float32"),
    ("lora-r-float", {"lora_r": 2.5}, "--lora_r must be an integer, got 2.5"),
    ("lora-r-zero", {"lora_r": 0}, "--lora_r must be at least 1, got 0"),
    ("lora-targets-text", {"lora_target_modules": "nonexistent"}, "LoRA module(s) ['nonexistent']"),
    ("max-length-null", {"max_length": None}, "--max_length must be set"),
    ("epochs-text", {"num_train_epochs": "many"}, "invalid float value: 'many'"),
    ("batch-list", {"per_device_train_batch_size": [2, 4]}, "--per_device_train_batch_size must be an integer"),
    ("bool-text", {"packing": "maybe"}, "Truthy value expected"),
    ("bool-number", {"use_peft": 3}, "--use_peft must be true or false, got 3"),
    ("quant-type", {"bnb_4bit_quant_type": "fp8"}, "--bnb_4bit_quant_type 'fp8' is not one of the choices"),
    ("key-self", {"self": 1}, "unknown key(s) 'self'"),
    ("key-trl", {"max_seq_length": 512}, "(max_seq_length: TRL renamed it `max_length`)"),
    ("key-old", {"evaluation_strategy": "no"}, "(evaluation_strategy: transformers renamed it `eval_strategy`)"),
    ("broken-yaml", "lora_r: [4\n", "is not valid YAML at line 2"),
    ("env-list", {"env": "A=1"}, "`env` in"),
]


@pytest.mark.parametrize(("values", "expected"), [c[1:] for c in CONFIGS], ids=[c[0] for c in CONFIGS])
def test_bad_config(world, values, expected, tmp_path, capsys):
    import yaml

    out = tmp_path / "out"
    if isinstance(values, dict):
        values = {**yaml.safe_load(world["recipe"].read_text()), "output_dir": str(out), **values}
    config = write_yaml(tmp_path / "train.yaml", values)
    assert_refused(capsys, "train", ["--config", config, "--cluster", "cluster_0"], expected, out,
                   (world["data"], world["base"], config))


def _not_distributed(world, tmp):
    folder = tmp / "jsonl"
    folder.mkdir()
    (folder / "data.jsonl").write_bytes(world["data_file"].read_bytes())
    return ["--dataset", folder]


def _broken_stats(world, tmp):
    import shutil

    shutil.copytree(world["data"], tmp / "data")
    (tmp / "data" / "stats.json").write_text("{oops")
    return ["--dataset", tmp / "data"]


def _base_file(world, tmp):
    (tmp / "model.bin").write_text("x")
    return ["--model_name_or_path", tmp / "model.bin"]


INPUTS = [
    ("dataset-missing", lambda w, t: ["--dataset", t / "missing"], "does not exist"),
    ("dataset-not-ours", _not_distributed, "is not a `dtm-hf distribute` output"),
    ("dataset-broken-stats", _broken_stats, "is not a `dtm-hf distribute` output"),
    ("dataset-hub-missing", lambda w, t: ["--dataset", "tester/no-such-data"], "cannot fetch the dataset 'tester/no-such-data' from the Hub"),
    ("base-missing", lambda w, t: ["--model_name_or_path", t / "missing"], "the base model"),
    ("base-a-file", _base_file, "is a file"),
    ("output-a-file", lambda w, t: ["--output_dir", t / "out.txt"], "is a file; choose a folder"),
    ("output-is-dataset", lambda w, t: ["--output_dir", w["data"]], "is the dataset"),
    ("output-in-dataset", lambda w, t: ["--output_dir", w["data"] / "runs"], "is inside the dataset"),
    ("output-in-base", lambda w, t: ["--output_dir", w["base"] / "runs"], "is inside the base model"),
]


@pytest.mark.parametrize(("make", "expected"), [c[1:] for c in INPUTS], ids=[c[0] for c in INPUTS])
def test_bad_input(world, make, expected, tmp_path, capsys):
    (tmp_path / "out.txt").write_text("mine")
    flags = make(world, tmp_path)
    out = flags[flags.index("--output_dir") + 1] if "--output_dir" in flags else tmp_path / "out"
    before = snapshot(out) if out.exists() else None
    argv = ["--config", world["recipe"], "--cluster", "cluster_0", "--output_dir", tmp_path / "out", *flags]
    assert_refused(capsys, "train", argv, expected, out, (world["data"], world["base"]), before=before)


def test_a_file_where_a_sub_model_goes(world, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "cluster_0").write_text("mine")
    before = snapshot(out)
    assert_refused(capsys, "train", ["--config", world["recipe"], "--cluster", "cluster_0", "--output_dir", out],
                   "is a file where the sub-model's folder goes", out, before=before)


def test_push_without_a_token_unless_given(world, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-token"))
    out = tmp_path / "out"
    argv = ["--config", world["recipe"], "--cluster", "cluster_0", "--output_dir", out, "--push_to_hub", "true",
            "--hub_model_id", "me/x-{cluster}"]
    assert_refused(capsys, "train", argv, "needs a Hub token", out)
    # --hub_token is a token: the check takes it, and the run goes on to fail on its next problem, a file as output
    out = tmp_path / "out.txt"
    out.write_text("mine")
    argv += ["--hub_token", "hf_" + "x" * 34, "--output_dir", out]
    assert_refused(capsys, "train", argv, "is a file; choose a folder", out, before=snapshot(out))
