import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import yaml
from cli_helpers import dtm, one_error_line
from run_helpers import recipe, write_recipe

import dtm_hf.distribute
import dtm_hf.evaluate
import dtm_hf.merge
import dtm_hf.train
from dtm_hf.demo.data import demo_texts, write_demo_jsonl
from dtm_hf.demo.tiny_model import save_tiny_llama

run = partial(dtm, "run")
STEPS = {"distribute": dtm_hf.distribute, "train": dtm_hf.train, "merge": dtm_hf.merge, "evaluate": dtm_hf.evaluate}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("run_inputs")
    texts = demo_texts(50)
    return write_demo_jsonl(root / "demo.jsonl", n_per_skill=12), save_tiny_llama(root / "tiny", texts)


@pytest.fixture
def calls(monkeypatch):
    """How many times each step's `main` ran, counted at the step modules the pipeline calls."""
    counts = dict.fromkeys(STEPS, 0)
    for name, module in STEPS.items():
        original = module.main

        def counted(*args, _name=name, _original=original):
            counts[_name] += 1
            return _original(*args)

        monkeypatch.setattr(module, "main", counted)
    return counts


@pytest.mark.slow
def test_resume_reruns_only_what_changed_or_was_interrupted(inputs, tmp_path, calls, monkeypatch):
    run_dir = tmp_path / "run"
    config = write_recipe(tmp_path / "dtm.yaml", recipe(inputs))
    assert run("--config", config, "--run_dir", run_dir) == 0
    assert calls == {"distribute": 1, "train": 3, "merge": 2, "evaluate": 1}
    for path in ("data/stats.json", "submodels/cluster_0/dtm_train.json", "submodels/cluster_1/dtm_train.json",
                 "baseline/all/dtm_train.json", "merged/linear/mergekit_config.yml", "merged/ties/config.json",
                 "eval/results.json", "recipe.yaml"):
        assert (run_dir / path).is_file(), path
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert set(results["loss"]) == {"base", "baseline", "cluster_0", "cluster_1", "merged_linear", "merged_ties"}

    # Unchanged: nothing runs.
    assert run("--config", config, "--run_dir", run_dir) == 0
    assert calls == {"distribute": 1, "train": 3, "merge": 2, "evaluate": 1}

    # A merge setting changed: merge and evaluate re-run; data and sub-models stay.
    write_recipe(config, recipe(inputs, merge=[{"method": "linear", "output_dir": "linear", "dtype": "float32"},
                                               {"method": "ties", "density": 0.8, "output_dir": "ties",
                                                "dtype": "float32"}]))
    assert run("--config", config, "--run_dir", run_dir) == 0
    assert calls == {"distribute": 1, "train": 3, "merge": 4, "evaluate": 2}
    assert "density: 0.8" in (run_dir / "merged" / "ties" / "mergekit_config.yml").read_text()

    # Interrupted during the merge stage: the next run continues there.
    write_recipe(config, recipe(inputs, merge=[{"method": "linear", "output_dir": "linear", "dtype": "float32",
                                                "weights": "1,3"}]))

    def interrupted(*args):
        raise KeyboardInterrupt

    counted_merge = dtm_hf.merge.main
    monkeypatch.setattr(dtm_hf.merge, "main", interrupted)
    assert run("--config", config, "--run_dir", run_dir) == 130
    monkeypatch.setattr(dtm_hf.merge, "main", counted_merge)
    assert run("--config", config, "--run_dir", run_dir) == 0
    assert calls == {"distribute": 1, "train": 3, "merge": 5, "evaluate": 3}
    merged_yaml = yaml.safe_load((run_dir / "merged" / "linear" / "mergekit_config.yml").read_text())
    assert [m["parameters"]["weight"] for m in merged_yaml["models"]] == pytest.approx([0.25, 0.75])

    # The input file changed (same settings): every stage re-runs on the new data.
    data, _ = inputs
    original = data.read_text()
    data.write_text("".join(original.splitlines(keepends=True)[:-4]))
    calls.update(dict.fromkeys(STEPS, 0))
    try:
        assert run("--config", config, "--run_dir", run_dir) == 0
    finally:
        data.write_text(original)
    assert calls == {"distribute": 1, "train": 3, "merge": 1, "evaluate": 1}
    assert json.loads((run_dir / "data" / "stats.json").read_text())["input_rows"] == 44

    # A distribute setting changed: every stage re-runs on the new split.
    before = (run_dir / "data" / "clusters.json").read_text()
    calls.update(dict.fromkeys(STEPS, 0))
    write_recipe(config, recipe(inputs, distribute={"seed": 2}))
    assert run("--config", config, "--run_dir", run_dir) == 0
    assert calls == {"distribute": 1, "train": 3, "merge": 2, "evaluate": 1}
    assert (run_dir / "data" / "clusters.json").read_text() != before
    state = json.loads((run_dir / "run_state.json").read_text())
    assert set(state) == {"distribute", "train", "merge", "evaluate"}


@pytest.mark.slow
def test_training_through_accelerate_with_two_processes(inputs, tmp_path):
    accelerate_config = tmp_path / "two_cpu_processes.yaml"
    accelerate_config.write_text(yaml.safe_dump({
        "compute_environment": "LOCAL_MACHINE", "distributed_type": "MULTI_GPU", "num_processes": 2,
        "num_machines": 1, "machine_rank": 0, "use_cpu": True, "mixed_precision": "no", "dynamo_config": {},
        "main_training_function": "main", "rdzv_backend": "static", "same_network": True, "gpu_ids": "all",
    }))
    content = recipe(inputs, train={"baseline": False, "per_device_train_batch_size": 4})
    content["accelerate_config"] = str(accelerate_config)
    config = write_recipe(tmp_path / "dtm.yaml", content)
    run_dir = tmp_path / "run"
    assert run("--config", config, "--run_dir", run_dir, "--stages", "distribute,train") == 0
    for cluster in ("cluster_0", "cluster_1"):
        marker = json.loads((run_dir / "submodels" / cluster / "dtm_train.json").read_text())
        assert marker["hyperparameters"]["effective_batch_size"] == 4 * 2  # per device x 2 processes
    assert (run_dir / "logs" / "train-cluster_1.yaml").is_file()
    log = (run_dir / "logs" / "train-cluster_1.log").read_text()
    assert "accelerate.commands.launch --config_file" in log and "finished: exit code 0" in log


@pytest.mark.slow
def test_push_whole_run_with_linked_cards(inputs, tmp_path, hub_server):
    from huggingface_hub import DatasetCard, ModelCard
    from transformers import AutoModelForCausalLM

    config = write_recipe(tmp_path / "dtm.yaml", recipe(inputs, merge=[{"method": "linear", "output_dir": "linear"}],
                                                        hub={"namespace": "tester", "push": True, "prefix": "dtm"}))
    assert run("--config", config, "--run_dir", tmp_path / "run", "--stages", "distribute,train,merge,push") == 0
    pushed = json.loads((tmp_path / "run" / "pushed.json").read_text())
    assert pushed == {"dataset": "tester/dtm-data", "cluster_0": "tester/dtm-cluster_0",
                      "cluster_1": "tester/dtm-cluster_1", "baseline": "tester/dtm-baseline",
                      "merged_linear": "tester/dtm-merged-linear"}
    merged_card = ModelCard.load("tester/dtm-merged-linear")
    assert merged_card.data.base_model == ["tester/dtm-cluster_0", "tester/dtm-cluster_1"]
    assert merged_card.data.datasets == ["tester/dtm-data"]
    assert "config `cluster_1` of [tester/dtm-data]" in merged_card.text
    dataset_card = DatasetCard.load("tester/dtm-data", repo_type="dataset")
    for repo in ("tester/dtm-cluster_0", "tester/dtm-baseline", "tester/dtm-merged-linear"):
        assert repo in dataset_card.text
    assert 'load_dataset("tester/dtm-data", "cluster_0"' in dataset_card.text and str(tmp_path) not in dataset_card.text
    sub_card = ModelCard.load("tester/dtm-cluster_0")
    assert sub_card.data.datasets == ["tester/dtm-data"] and "config `cluster_0`" in sub_card.text
    for repo in pushed.values():  # no local path, no placeholder in any pushed card
        kind = "dataset" if repo == pushed["dataset"] else "model"
        text = hub_server.repo_files(repo, repo_type=kind)["README.md"].decode()
        assert str(tmp_path) not in text and "REPO_ID" not in text and "THIS_REPO" not in text, repo
    baseline_card = ModelCard.load("tester/dtm-baseline").text
    assert "the all-data baseline" in baseline_card and "meant to be merged" not in baseline_card
    files = hub_server.repo_files("tester/dtm-merged-linear")
    assert "mergekit_config.yml" in files and "model.safetensors" in files
    model = AutoModelForCausalLM.from_pretrained("tester/dtm-merged-linear")
    assert model.config.num_hidden_layers == 2


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"evaluation": {"held_out": 0.1}}, "unknown section(s) ['evaluation']"),
        ({"train": {"lora_rank": 8}}, "recipe section 'train': unknown key(s) 'lora_rank'"),
        ({"merge": [{"method": "linear", "submodels": ["cluster_0", "cluster_5"]}]},
         "merge 'linear' names sub-model(s) ['cluster_5'] that the recipe does not train"),
        ({"merge": [{"method": "linear", "densty": 0.3}]}, "recipe section \"merge 'linear'\": unknown key(s) 'densty'"),
        ({"hub": {"push": True}}, "has push: true but no namespace"),
        ({"hub": {"namespace": "tester", "repo": "x"}}, "unknown key(s) ['repo'] in recipe section 'hub'"),
        ({"hub": {"push": True, "namespace": "tester"}, "NO_TOKEN": True}, "needs a Hub token"),
    ],
)
def test_bad_recipe_one_error_nothing_run(inputs, tmp_path, calls, capsys, monkeypatch, changes, expected):
    changes = dict(changes)
    if changes.pop("NO_TOKEN", False):
        monkeypatch.delenv("HF_TOKEN")
        monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-token"))
    config = write_recipe(tmp_path / "bad.yaml", recipe(inputs, **changes))
    assert run("--config", config, "--run_dir", tmp_path / "run") == 2
    assert expected in one_error_line(capsys, "run")
    assert not (tmp_path / "run").exists()
    assert calls == dict.fromkeys(STEPS, 0)


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = tmp_path / "demo"
    done = subprocess.run([str(Path(sys.executable).parent / "dtm-hf"), "run", "--run_dir", str(run_dir)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    # The console holds our messages and progress bars: no third-party warnings.
    noise = [line for line in (done.stdout + done.stderr).splitlines() if "Warning" in line or "warning" in line
             or "Failed to load" in line]
    assert noise == []
    assert "[evaluate] running (first run)" in done.stdout and "| merged_linear |" in done.stdout
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert set(results["loss"]) == {"base", "baseline", "cluster_0", "cluster_1", "cluster_2", "cluster_3",
                                    "merged_linear", "merged_ties"}
    loss = results["loss"]
    # Training helped: every sub-model is better than the base on its own cluster, and so is each merge overall.
    for k in range(4):
        assert loss[f"cluster_{k}"][f"cluster_{k}"] < loss["base"][f"cluster_{k}"]
    assert loss["merged_linear"]["overall"] < loss["base"]["overall"]
    assert loss["merged_ties"]["overall"] < loss["base"]["overall"]
    for name in ("results.md", "results.png"):
        assert (run_dir / "eval" / name).is_file()
    merged = run_dir / "merged" / "linear"
    model, tokenizer = AutoModelForCausalLM.from_pretrained(merged), AutoTokenizer.from_pretrained(merged)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 plus 3?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    generated = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] > prompt["input_ids"].shape[1]

    # Every card the demo writes: metadata the Hub accepts (Hub ids only), no placeholder, plain grammar.
    from huggingface_hub.utils import validate_repo_id

    cards = sorted(run_dir.rglob("README.md"))
    assert len(cards) == 8  # data, 4 sub-models, the baseline, 2 merges
    for card in cards:
        text = card.read_text()
        header = yaml.safe_load(text.split("---")[1])
        for ref in [*(header.get("datasets") or []), *([header["base_model"]] if isinstance(header.get("base_model"), str)
                                                        else header.get("base_model") or [])]:
            validate_repo_id(ref)
        assert "REPO_ID" not in text and "THIS_REPO" not in text and "of the both" not in text, card
        assert str(run_dir) not in str(header.get("pretty_name", "")), card
    baseline = (run_dir / "baseline" / "all" / "README.md").read_text()
    assert "the all-data baseline" in baseline and "meant to be merged" not in baseline


@pytest.mark.slow
def test_resume_by_content_and_reasons_named(inputs, tmp_path, calls, capsys):
    import os
    import shutil

    data, model = inputs
    copy = tmp_path / "copy.jsonl"
    shutil.copy(data, copy)
    content = recipe((copy, model), merge=[{"method": "linear", "output_dir": "linear"}])
    config = write_recipe(tmp_path / "dtm.yaml", content)
    run_dir = tmp_path / "run"
    assert run("--config", config, "--run_dir", run_dir) == 0
    assert calls == {"distribute": 1, "train": 3, "merge": 1, "evaluate": 1}

    # Touched, and replaced by an identical copy: nothing runs.
    os.utime(copy, (1, 1))
    assert run("--config", config, "--run_dir", run_dir) == 0
    shutil.copy(data, copy)
    capsys.readouterr()
    assert run("--config", config, "--run_dir", run_dir) == 0
    assert calls == {"distribute": 1, "train": 3, "merge": 1, "evaluate": 1}
    assert capsys.readouterr().out.count("skipped: outputs complete") == 4

    # A distribute setting that gives the same split re-runs distribute only: the data did not change.
    content["distribute"]["embedding_batch_size"] = 7
    write_recipe(config, content)
    assert run("--config", config, "--run_dir", run_dir) == 0
    assert calls == {"distribute": 2, "train": 3, "merge": 1, "evaluate": 1}
    assert "[distribute] running (distribute.embedding_batch_size: (unset) -> 7)" in capsys.readouterr().out

    # A training setting: train and what follows, each saying why.
    content["train"]["learning_rate"] = 0.02
    write_recipe(config, content)
    assert run("--config", config, "--run_dir", run_dir) == 0
    assert calls == {"distribute": 2, "train": 6, "merge": 2, "evaluate": 2}
    out = capsys.readouterr().out
    assert "[train] running (train.learning_rate: 0.01 -> 0.02)" in out
    assert "[merge] running (cluster_0: content changed; cluster_1: content changed)" in out

    # The input's content changed.
    copy.write_text("".join(data.read_text().splitlines(keepends=True)[:-4]))
    assert run("--config", config, "--run_dir", run_dir, "--stages", "distribute") == 0
    assert "[distribute] running (dataset: content changed)" in capsys.readouterr().out


@pytest.mark.parametrize(("stages", "needs"), [("merge", "train"), ("train", "distribute"),
                                               ("evaluate", "distribute")])
def test_a_later_stage_on_a_fresh_run_folder_names_the_stage_to_run_first(inputs, tmp_path, capsys, stages, needs):
    config = write_recipe(tmp_path / "dtm.yaml", recipe(inputs))
    assert run("--config", config, "--run_dir", tmp_path / "run", "--stages", stages) == 2
    line = one_error_line(capsys, "run")
    assert f"the {stages} stage needs the {needs} stage's outputs" in line and f"--stages {needs},{stages}" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_changed_stage_interrupted_resumes_without_redoing_what_finished(inputs, tmp_path, monkeypatch):
    content = recipe(inputs, merge=[])
    content.pop("evaluate")
    config = write_recipe(tmp_path / "dtm.yaml", content)
    run_dir = tmp_path / "run"
    assert run("--config", config, "--run_dir", run_dir) == 0
    content["train"]["learning_rate"] = 0.02
    write_recipe(config, content)

    trained, original = [], dtm_hf.train.main

    def second_is_interrupted(dtm_args, *rest):
        if len(trained) == 1:
            raise KeyboardInterrupt
        trained.append(dtm_args.cluster)
        return original(dtm_args, *rest)

    monkeypatch.setattr(dtm_hf.train, "main", second_is_interrupted)
    assert run("--config", config, "--run_dir", run_dir) == 130
    assert trained == ["cluster_0"]
    first = (run_dir / "submodels" / "cluster_0" / "dtm_train.json").stat().st_mtime_ns
    monkeypatch.setattr(dtm_hf.train, "main", lambda d, *rest: (trained.append(d.cluster), original(d, *rest)))
    assert run("--config", config, "--run_dir", run_dir) == 0
    assert trained == ["cluster_0", "cluster_1", "all"]  # cluster_0 kept: it was made with the new settings
    assert (run_dir / "submodels" / "cluster_0" / "dtm_train.json").stat().st_mtime_ns == first
    for folder in ("submodels/cluster_1", "baseline/all"):
        marker = json.loads((run_dir / folder / "dtm_train.json").read_text())
        assert marker["hyperparameters"]["learning_rate"] == 0.02
