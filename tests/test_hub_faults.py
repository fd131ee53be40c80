"""The Hub failing mid-push (the local Hub answering 500 on the LFS upload or on the commit), for every command that
pushes: one error line saying that the local output is complete and how to retry the push alone, exit 2, the local
output intact; and the retry it names works once the Hub is back. Also: a Hub token never reaches the disk."""

import json
import re
import secrets
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from battery_helpers import error_line, snapshot, write_yaml
from cli_helpers import dtm
from run_helpers import recipe

from dtm_hf.names import MERGE_MARKER

FAULTS = {"lfs-upload": (r"^/lfs-objects/", "PUT"), "commit": (r"/commit/main$", "POST")}


@pytest.fixture
def failing_hub(hub_server, monkeypatch):
    """The local Hub, with huggingface_hub's waits between retries cut to nothing (it retries a 500 five times)."""
    from huggingface_hub.utils import _http

    monkeypatch.setattr(_http, "time", SimpleNamespace(sleep=lambda seconds: None))
    yield hub_server
    hub_server.heal()


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    """One sub-model trained by `dtm-hf train` (a step), for the tests to copy."""
    out = tmp_path_factory.mktemp("trained")
    assert dtm("train", "--config", world["recipe"], "--cluster", "cluster_0", "--output_dir", out) == 0
    return out


def retry_command(line: str) -> list[str]:
    """The `hf upload ...` command the error line says to run, as argv."""
    command = re.search(r"retry the upload alone with `([^`]+)`", line).group(1)
    return [str(Path(sys.executable).parent / "hf"), *shlex.split(command)[1:]]


def fail_push(hub, fault: str, capsys, command: str, argv: list) -> str:
    pattern, method = FAULTS[fault]
    hub.fail(pattern, 500, method=method)
    capsys.readouterr()
    assert dtm(command, *argv) == 2
    line = error_line(capsys, command)
    hub.heal()
    assert "500 Internal Server Error" in line, line
    assert "failed" in line and "the local output is complete; retry the upload alone with" in line, line
    return line


@pytest.mark.parametrize("fault", list(FAULTS))
def test_distribute_push(world, fault, failing_hub, tmp_path, capsys):
    out, repo = tmp_path / "out", f"tester/fault-data-{fault}"
    argv = ["--dataset", world["data_file"], "--n_clusters", 2, "--output_dir", out, "--push_to_hub",
            "--hub_dataset_id", repo]
    line = fail_push(failing_hub, fault, capsys, "distribute", argv)
    assert (out / "stats.json").is_file() and not list(tmp_path.glob(".out*"))
    local = snapshot(out)
    subprocess.run(retry_command(line), check=True, capture_output=True)
    assert snapshot(out) == local
    files = failing_hub.repo_files(repo, repo_type="dataset")
    assert files["clusters.json"] == (out / "clusters.json").read_bytes()
    assert {f.split("/")[0] for f in files if f.endswith(".parquet")} == {"cluster_0", "cluster_1", "all"}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_merge_push(world, fault, failing_hub, tmp_path, capsys):
    out, repo = tmp_path / "out", f"tester/fault-merged-{fault}"
    argv = ["--submodels", world["train"], "--output_dir", out, "--push_to_hub", "--hub_model_id", repo]
    line = fail_push(failing_hub, fault, capsys, "merge", argv)
    assert {"model.safetensors", "README.md", MERGE_MARKER} <= {p.name for p in out.iterdir()}
    subprocess.run(retry_command(line), check=True, capture_output=True)
    files = failing_hub.repo_files(repo)
    assert files["model.safetensors"] == (out / "model.safetensors").read_bytes()


@pytest.mark.parametrize("fault", list(FAULTS))
def test_train_push(world, trained, fault, failing_hub, tmp_path, capsys):
    out = shutil.copytree(trained, tmp_path / "out")
    repo = f"tester/fault-sub-{fault}-cluster_0"
    argv = ["--config", world["recipe"], "--cluster", "cluster_0", "--output_dir", out, "--push_to_hub", "true",
            "--hub_model_id", f"tester/fault-sub-{fault}-{{cluster}}"]
    line = fail_push(failing_hub, fault, capsys, "train", argv)
    assert "retry the upload alone with the same dtm-hf train command" in line
    marker = json.loads((out / "cluster_0" / "dtm_train.json").read_text())
    assert marker["hub_model_id"] is None  # recorded once the upload succeeds
    assert dtm("train", *argv) == 0
    assert "complete; push to" in capsys.readouterr().out
    assert json.loads((out / "cluster_0" / "dtm_train.json").read_text())["hub_model_id"] == repo
    files = failing_hub.repo_files(repo)
    assert files["adapter_model.safetensors"] == (out / "cluster_0" / "adapter_model.safetensors").read_bytes()


def test_run_push_stage_and_no_token_on_disk(world, failing_hub, tmp_path, capsys):
    """A run whose recipe holds a `hub_token`: its push stage fails on the commit, then on the LFS upload, and is
    retried alone with `--stages push`; no file of the run holds the token."""
    token = "hf_" + secrets.token_hex(17)
    config = write_yaml(tmp_path / "dtm.yaml", recipe(
        (world["data_file"], world["base"]), merge=[], evaluate=None,
        train={"baseline": False, "max_steps": 1, "hub_token": token},
        hub={"namespace": "tester", "push": True, "prefix": "fault-run"}))
    run_dir = tmp_path / "run"
    argv = ["--config", config, "--run_dir", run_dir]
    line = fail_push(failing_hub, "commit", capsys, "run", argv)
    assert "retry the upload alone with the same dtm-hf run command with --stages push" in line
    assert (run_dir / "submodels" / "cluster_1" / "dtm_train.json").is_file()
    assert not (run_dir / "pushed.json").exists()
    fail_push(failing_hub, "lfs-upload", capsys, "run", [*argv, "--stages", "push"])
    assert dtm("run", *argv, "--stages", "push") == 0
    pushed = json.loads((run_dir / "pushed.json").read_text())
    assert pushed["cluster_1"] == "tester/fault-run-cluster_1" and failing_hub.repo_exists("tester/fault-run-data",
                                                                                           "dataset")
    assert token in config.read_text()  # the user's own file, left as written
    assert files_holding(run_dir, token) == []
    assert "<redacted>" in (run_dir / "recipe.yaml").read_text()


def files_holding(root: Path, token: str) -> list[str]:
    """Every file under `root` (binary ones too) whose bytes hold `token`."""
    return sorted(str(p) for p in root.rglob("*") if p.is_file() and token.encode() in p.read_bytes())


def test_hub_token_flag_never_reaches_the_disk(world, failing_hub, tmp_path, monkeypatch, capsys):
    """`--hub_token` is the token of the check and the push (none in the environment), and no file written holds
    it: not the checkpoints' training_args.bin, not the sub-model, not the Hub repo."""
    from transformers import Trainer

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-token"))
    token = "hf_" + secrets.token_hex(17)
    out = tmp_path / "out"
    argv = ["--config", world["recipe"], "--cluster", "cluster_1", "--output_dir", out, "--max_steps", 2,
            "--save_steps", 1, "--push_to_hub", "true", "--hub_model_id", "tester/token-{cluster}",
            "--hub_token", token]
    original = Trainer._save_checkpoint

    def save_then_stop(self, *args, **kwargs):
        original(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_save_checkpoint", save_then_stop)
    assert dtm("train", *argv) == 130
    assert (out / "cluster_1" / "checkpoint-1" / "training_args.bin").is_file()
    assert files_holding(out, token) == []
    monkeypatch.setattr(Trainer, "_save_checkpoint", original)
    assert dtm("train", *argv) == 0
    assert "pushed to" in capsys.readouterr().out
    assert files_holding(out, token) == []
    assert not any(token.encode() in content for content in failing_hub.repo_files("tester/token-cluster_1").values())
