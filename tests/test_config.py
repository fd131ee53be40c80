"""Configuration checks shared by every command: YAML values are checked exactly as flags are, one error line each,
before any work; every subcommand's --help lists --config and names itself `dtm-hf <command>`."""

import subprocess
import sys

import pytest
import yaml
from cli_helpers import dtm, one_error_line

from dtm_hf.demo.data import write_demo_jsonl


@pytest.fixture(scope="module")
def demo_jsonl(tmp_path_factory):
    return write_demo_jsonl(tmp_path_factory.mktemp("config") / "demo.jsonl", n_per_skill=5)


def config_file(tmp_path, values) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(values if isinstance(values, str) else yaml.safe_dump(values))
    return str(path)


DISTRIBUTE_YAML_ERRORS = [
    ({"method": "kmeanz"}, "--method 'kmeanz' is not one of the choices: random, kmeans, balanced_kmeans, source"),
    ({"format": "foo"}, "--format 'foo' is not one of the choices: auto, messages, sharegpt, alpaca"),
    ({"embed_field": "title"}, "--embed_field 'title' is not one of the choices"),
    ({"n_clusters": [2, 3]}, "--n_clusters must be an integer, got [2, 3]"),
    ({"n_clusters": "four"}, "invalid int value: 'four'"),  # a YAML string: argparse converts it, as a flag
    ({"n_clusters": 1}, "--n_clusters must be at least 2, got 1"),
    ({"keep_system": "maybe"}, "--keep_system/--keep-system: Truthy value expected: got maybe"),
    ({"keep_system": 3}, "--keep_system must be true or false, got 3"),
    ({"seed": 1.5}, "--seed must be an integer, got 1.5"),
    ({"max_samples": -5}, "--max_samples must be at least 1, got -5"),
    ({"embedding_batch_size": 0}, "--embedding_batch_size must be at least 1, got 0"),
]


@pytest.mark.parametrize(("values", "expected"), DISTRIBUTE_YAML_ERRORS, ids=lambda v: str(v)[:30])
def test_distribute_yaml_values_are_checked_like_flags(values, expected, demo_jsonl, tmp_path, capsys):
    out = tmp_path / "out"
    config = config_file(tmp_path, {"dataset": str(demo_jsonl), "n_clusters": 2, "output_dir": str(out), **values})
    assert dtm("distribute", "--config", config) == 2
    assert expected in one_error_line(capsys, "distribute")
    assert not out.exists()


def test_a_flag_and_its_yaml_value_fail_alike(demo_jsonl, tmp_path, capsys):
    out = tmp_path / "out"
    assert dtm("distribute", "--dataset", demo_jsonl, "--n_clusters", 1, "--output_dir", out) == 2
    from_flag = one_error_line(capsys, "distribute")
    config = config_file(tmp_path, {"dataset": str(demo_jsonl), "n_clusters": 1, "output_dir": str(out)})
    assert dtm("distribute", "--config", config) == 2
    assert one_error_line(capsys, "distribute") == from_flag
    assert dtm("distribute", "--dataset", demo_jsonl, "--n_clusters", 2, "--method", "kmeanz", "--output_dir",
               out) == 2
    assert "invalid choice: 'kmeanz'" in one_error_line(capsys, "distribute")


@pytest.mark.parametrize(("values", "expected"), [
    ({"method": "slerpp"}, "--method 'slerpp' is not one of the choices: linear, ties, task_arithmetic, dare_ties"),
    ({"dtype": "float8"}, "--dtype 'float8' is not one of the choices: float16, bfloat16, float32"),
    ({"density": 1.5}, "--density must be in (0, 1], got 1.5"),
    ({"output_format": "gguf"}, "--output_format 'gguf' is not one of the choices"),
    ({"adapter_rank": 0, "output_format": "adapter"}, "--adapter_rank must be at least 1, got 0"),
    ({"max_shard_size": "big"}, "--max_shard_size must be a size like 5GB or 500MB, got 'big'"),
    ({"device": "tpu"}, "unknown --device 'tpu'; choose cpu, cuda or cuda:N"),
], ids=lambda v: str(v)[:30])
def test_merge_yaml_values_are_checked(values, expected, tmp_path, capsys):
    out = tmp_path / "out"
    config = config_file(tmp_path, {"submodels": [str(tmp_path)], "output_dir": str(out), **values})
    assert dtm("merge", "--config", config) == 2
    assert expected in one_error_line(capsys, "merge")
    assert not out.exists()


@pytest.mark.parametrize(("values", "expected"), [
    ({"held_out": 1.5}, "--held_out must be in (0, 1), got 1.5"),
    ({"batch_size": 0}, "--batch_size must be at least 1, got 0"),
    ({"dtype": "float8"}, "--dtype 'float8' is not one of the choices"),
    ({"models": ["nonsense"]}, "--models takes NAME=PATH_OR_ID pairs, got 'nonsense'"),
    ({"max_rows_per_cluster": -1}, "--max_rows_per_cluster must be at least 1, got -1"),
], ids=lambda v: str(v)[:30])
def test_evaluate_yaml_values_are_checked(values, expected, tmp_path, capsys):
    config = config_file(tmp_path, {"models": ["a=b"], "dataset": str(tmp_path), "output_dir": str(tmp_path / "o"),
                                    **values})
    assert dtm("evaluate", "--config", config) == 2
    assert expected in one_error_line(capsys, "evaluate")


@pytest.mark.parametrize(("values", "expected"), [
    ({"data_ratio": 0}, "--data_ratio must be in (0, 1], got 0.0"),
    ({"held_out": 1}, "--held_out must be in [0, 1), got 1.0"),
    ({"lr_scheduler_type": "cosinee"}, "invalid configuration"),
], ids=lambda v: str(v)[:30])
def test_train_yaml_values_are_checked(values, expected, tmp_path, capsys):
    config = config_file(tmp_path, {"dataset": str(tmp_path), "cluster": "cluster_0", "use_cpu": True,
                                    "output_dir": str(tmp_path / "o"), **values})
    assert dtm("train", "--config", config) == 2
    assert expected in one_error_line(capsys, "train")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", ["distribute", "train", "merge", "evaluate"])
def test_broken_yaml_names_the_file_and_line(command, tmp_path, capsys):
    config = config_file(tmp_path, "dataset: [unclosed\nseed: 1\n")
    assert dtm(command, "--config", config) == 2
    line = one_error_line(capsys, command)
    assert f"the config file {config} is not valid YAML at line" in line
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("command", ["distribute", "merge"])
def test_config_that_is_not_a_mapping_or_missing(command, tmp_path, capsys):
    assert dtm(command, "--config", config_file(tmp_path, "- a\n- b\n")) == 2
    assert "must be a YAML mapping" in one_error_line(capsys, command)
    assert dtm(command, "--config", tmp_path / "missing.yaml") == 2
    assert "cannot read the config file" in one_error_line(capsys, command)


def recipe(demo_jsonl, tmp_path, **sections) -> str:
    base = {"distribute": {"dataset": str(demo_jsonl), "n_clusters": 2},
            "train": {"model_name_or_path": str(tmp_path), "use_cpu": True}}
    return config_file(tmp_path, {**base, **sections})


@pytest.mark.parametrize(("sections", "expected"), [
    ({"distribute": {"n_clusters": 2, "method": "kmeanz"}},
     "recipe section 'distribute': --method 'kmeanz' is not one of the choices"),
    ({"distribute": {"n_clusters": 2, "format": "foo"}},
     "recipe section 'distribute': --format 'foo' is not one of the choices"),
    ({"merge": [{"method": "slerpp"}]}, "recipe section \"merge 'slerpp'\": --method 'slerpp' is not one of"),
    ({"merge": {"method": "linear"}}, "recipe section 'merge' must be a list of merge settings"),
    ({"evaluate": {"held_out": 0.1}, "train": {"model_name_or_path": "x", "held_out": 0.2, "use_cpu": True}},
     "recipe sections 'train' and 'evaluate' hold out different fractions"),
    ({"merge": [{"submodels": ["all"]}]}, "names sub-model(s) ['all'] that the recipe does not train"),
], ids=lambda v: str(v)[:40])
def test_recipe_values_are_checked_before_any_stage(sections, expected, demo_jsonl, tmp_path, capsys):
    if "distribute" in sections:
        sections["distribute"] = {"dataset": str(demo_jsonl), **sections["distribute"]}
    assert dtm("run", "--config", recipe(demo_jsonl, tmp_path, **sections), "--run_dir", tmp_path / "run") == 2
    assert expected in one_error_line(capsys, "run")
    assert not (tmp_path / "run").exists()


def test_broken_recipe_yaml(tmp_path, capsys):
    assert dtm("run", "--config", config_file(tmp_path, "train: {a: [1\n"), "--run_dir", tmp_path / "run") == 2
    assert "is not valid YAML at line" in one_error_line(capsys, "run")


@pytest.mark.parametrize("command", ["distribute", "train", "merge", "evaluate", "run"])
def test_help_lists_config_and_names_the_command(command):
    done = subprocess.run([sys.executable, "-m", f"dtm_hf.{command}", "--help"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: dtm-hf {command} ")
    assert "--config" in done.stdout
    assert done.stderr == ""  # no third-party noise, not even for --help


def test_redact_hides_secrets_only():
    from dtm_hf.hub import redact

    section = {"hub_token": "hf_secret", "pad_token": "<pad>", "eos_token": "</s>", "nested": [{"token": "hf_x"}],
               "average_tokens_across_devices": True}
    assert redact(section) == {"hub_token": "<redacted>", "pad_token": "<pad>", "eos_token": "</s>",
                               "nested": [{"token": "<redacted>"}], "average_tokens_across_devices": True}
