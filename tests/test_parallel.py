"""Sub-models trained at the same time (`parallel_submodels`), one per job on a cluster (`--only`), and the launch
commands of every accelerate config in recipes/."""

import json
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from cli_helpers import dtm, one_error_line
from run_helpers import recipe, write_recipe

from dtm_hf.demo.data import demo_texts, write_demo_jsonl
from dtm_hf.demo.tiny_model import save_tiny_llama

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("parallel")
    return write_demo_jsonl(root / "demo.jsonl", n_per_skill=12), save_tiny_llama(root / "tiny", demo_texts(50))


def train_recipe(inputs, tmp_path, **top) -> Path:
    content = recipe(inputs, train={"baseline": False, "max_steps": 3})
    content.pop("merge"), content.pop("evaluate")
    return write_recipe(tmp_path / "dtm.yaml", {**content, **top})


def adapter(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")


def span(log: Path) -> tuple[datetime, datetime]:
    stamps = re.findall(r"^\[([0-9T:.-]+)\] (?:started|finished)", log.read_text(), re.M)
    return datetime.fromisoformat(stamps[0]), datetime.fromisoformat(stamps[-1])


@pytest.mark.slow
def test_parallel_jobs_overlap_and_equal_one_after_another(inputs, tmp_path):
    import torch

    sequential, parallel = tmp_path / "sequential", tmp_path / "parallel"
    config = train_recipe(inputs, tmp_path)
    assert dtm("run", "--config", config, "--run_dir", sequential, "--stages", "distribute,train") == 0
    assert dtm("run", "--config", config, "--run_dir", parallel, "--stages", "distribute,train",
               "--parallel_submodels", 2) == 0
    (a_start, a_end), (b_start, b_end) = (span(parallel / "logs" / f"train-cluster_{i}.log") for i in (0, 1))
    assert a_start < b_end and b_start < a_end  # both ran at the same time
    for cluster in ("cluster_0", "cluster_1"):
        ours, theirs = adapter(sequential / "submodels" / cluster), adapter(parallel / "submodels" / cluster)
        assert ours.keys() == theirs.keys()
        for key in ours:  # one thread per job here, two in-process: float sums may differ in the last bits
            torch.testing.assert_close(ours[key], theirs[key], rtol=1e-4, atol=1e-6)
        assert not torch.equal(ours[key], torch.zeros_like(ours[key]))


@pytest.mark.slow
def test_a_failed_job_leaves_the_others_and_a_rerun_trains_what_is_missing(inputs, tmp_path, capsys):
    run_dir = tmp_path / "run"
    config = train_recipe(inputs, tmp_path, parallel_submodels=2)
    assert dtm("run", "--config", config, "--run_dir", run_dir, "--stages", "distribute") == 0
    (run_dir / "submodels").mkdir()
    (run_dir / "submodels" / "cluster_1").write_text("in the way")  # cluster_1's training cannot write its folder
    capsys.readouterr()
    assert dtm("run", "--config", config, "--run_dir", run_dir, "--stages", "train") == 2
    line = one_error_line(capsys, "run")
    assert "training failed for cluster_1 (1 of 2 finished)" in line and "train-cluster_1.log" in line
    assert (run_dir / "submodels" / "cluster_0" / "dtm_train.json").is_file()
    assert "exit code 0" not in (run_dir / "logs" / "train-cluster_1.log").read_text()

    (run_dir / "submodels" / "cluster_1").unlink()
    before = (run_dir / "submodels" / "cluster_0" / "dtm_train.json").stat().st_mtime_ns
    assert dtm("run", "--config", config, "--run_dir", run_dir, "--stages", "train") == 0
    assert (run_dir / "submodels" / "cluster_1" / "dtm_train.json").is_file()
    assert (run_dir / "submodels" / "cluster_0" / "dtm_train.json").stat().st_mtime_ns == before
    assert (run_dir / "logs" / "train-cluster_0.log").read_text().count("] started") == 1


@pytest.mark.slow
def test_only_trains_one_and_later_stages_find_them(inputs, tmp_path, capsys):
    run_dir = tmp_path / "run"
    content = recipe(inputs, merge=[{"method": "linear", "output_dir": "linear"}])
    config = write_recipe(tmp_path / "dtm.yaml", content)
    assert dtm("run", "--config", config, "--run_dir", run_dir, "--stages", "distribute") == 0
    assert dtm("run", "--config", config, "--run_dir", run_dir, "--stages", "train", "--only", "cluster_1") == 0
    assert sorted(p.name for p in (run_dir / "submodels").iterdir() if not p.name.startswith(".")) == ["cluster_1"]
    capsys.readouterr()
    assert dtm("run", "--config", config, "--run_dir", run_dir, "--stages", "merge") == 2
    assert "the merge stage needs the train stage's outputs" in one_error_line(capsys, "run")
    for only in ("cluster_0", "all"):
        assert dtm("run", "--config", config, "--run_dir", run_dir, "--stages", "train", "--only", only) == 0
    assert dtm("run", "--config", config, "--run_dir", run_dir, "--stages", "merge,evaluate") == 0
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert set(results["loss"]) == {"base", "baseline", "cluster_0", "cluster_1", "merged_linear"}
    assert dtm("run", "--config", config, "--run_dir", run_dir, "--stages", "train", "--only", "cluster_9") == 2
    assert "--only cluster_9: the recipe trains cluster_0, cluster_1, all" in one_error_line(capsys, "run")
    assert dtm("run", "--config", config, "--run_dir", run_dir, "--only", "cluster_0") == 2
    assert "use it with --stages train" in one_error_line(capsys, "run")

    # The recipe changed: a job retrains its sub-model (it was made with other settings), a rerun keeps it, and
    # the later stages wait for every sub-model to be retrained.
    content["train"]["learning_rate"] = 0.02
    write_recipe(config, content)
    marker = run_dir / "submodels" / "cluster_0" / "dtm_train.json"
    before = marker.stat().st_mtime_ns
    assert dtm("run", "--config", config, "--run_dir", run_dir, "--stages", "train", "--only", "cluster_0") == 0
    retrained = marker.stat().st_mtime_ns
    assert retrained != before and json.loads(marker.read_text())["hyperparameters"]["learning_rate"] == 0.02
    assert dtm("run", "--config", config, "--run_dir", run_dir, "--stages", "train", "--only", "cluster_0") == 0
    assert marker.stat().st_mtime_ns == retrained
    capsys.readouterr()
    assert dtm("run", "--config", config, "--run_dir", run_dir, "--stages", "merge") == 2
    assert "needs the train stage's outputs, made with the recipe as it is now" in one_error_line(capsys, "run")


def readme_blocks() -> tuple[str, list[str]]:
    """recipes/README.md's array script and the commands that submit it."""
    text = (RECIPES / "README.md").read_text()
    script = re.search(r"```bash\n(#!/bin/bash\n#SBATCH --job-name=dtm-run.*?)```", text, re.S).group(1)
    submit = re.search(r"```bash\n(export RECIPE=.*?)```", text, re.S).group(1).splitlines()
    return script, submit


@pytest.mark.slow
def test_the_slurm_array_commands_run(inputs, tmp_path):
    """The README's commands as SLURM would run them: distribute, each array task, then merge and evaluate."""
    import os
    import shlex

    script, submit = readme_blocks()
    distribute = next(line for line in submit if "--stages distribute" in line)
    after = shlex.split(next(line for line in submit if "--wrap" in line).split("--wrap ", 1)[1])[0]
    (tmp_path / "dtm-hf-array.sbatch").write_text(script)
    config = write_recipe(tmp_path / "dtm.yaml", recipe(inputs, merge=[{"method": "linear", "output_dir": "linear"}]))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "RECIPE": str(config),
           "RUN_DIR": str(tmp_path / "run"), "K": "2"}

    def bash(command, **extra):
        done = subprocess.run(["bash", "-c", command], env={**env, **extra}, cwd=tmp_path, capture_output=True,
                              text=True)
        assert done.returncode == 0, done.stderr[-2000:]

    bash(distribute)
    for task in range(3):  # K=2 sub-models and the baseline
        bash("bash dtm-hf-array.sbatch", SLURM_ARRAY_TASK_ID=str(task))
    bash(after)
    run_dir = tmp_path / "run"
    for folder in ("submodels/cluster_0", "submodels/cluster_1", "baseline/all"):
        assert (run_dir / folder / "dtm_train.json").is_file()
    assert set(json.loads((run_dir / "eval" / "results.json").read_text())["loss"]) == {
        "base", "baseline", "cluster_0", "cluster_1", "merged_linear"}


@pytest.mark.parametrize("config", sorted((RECIPES / "accelerate_configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_accelerate_config_gives_a_launch_command_accelerate_accepts(config, tmp_path):
    from accelerate.commands.launch import launch_command_parser

    from dtm_hf.pipeline.engine import Pipeline
    from dtm_hf.pipeline.jobs import Slot
    from dtm_hf.pipeline.launch import train_command
    from dtm_hf.pipeline.layout import RunLayout
    from dtm_hf.pipeline.recipe import load_recipe, parse_recipe

    layout = RunLayout(tmp_path / "run")
    sections = load_recipe(str(RECIPES / "llama-2-7b" / "dtm.yaml"), layout)
    sections["accelerate_config"] = str(config)
    sections["train"]["use_cpu"] = True  # parses here without a GPU; the command is what is checked
    p = Pipeline(parse_recipe(sections, layout, ["train"]), layout, overwrite=False)
    layout.logs_dir.mkdir(parents=True)
    argv, env = train_command(p, "cluster_2", p.recipe.train, Slot(1, ("2", "3"), None, 29501))
    assert argv[1:3] == ["-m", "accelerate.commands.launch"] and env["CUDA_VISIBLE_DEVICES"] == "2,3"
    args = launch_command_parser().parse_args(argv[3:])
    assert args.config_file == str(config) and args.num_processes == 2 and args.main_process_port == 29501
    assert args.module and args.training_script == "dtm_hf.train"
    child = yaml.safe_load((layout.logs_dir / "train-cluster_2.yaml").read_text())
    assert child["cluster"] == "cluster_2" and child["output_dir"] == str(layout.submodels_dir)
