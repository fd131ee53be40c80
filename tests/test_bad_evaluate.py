"""`dtm-hf evaluate` on bad input: settings out of range, models that cannot be loaded safely (pickles are refused,
as `dtm-hf merge` refuses them), datasets that are not distribute outputs, an output that would replace an input.
Each case is one error line before any model is loaded: exit 2, no traceback, no output, the inputs untouched."""

import json
import shutil

import pytest
from battery_helpers import assert_refused, snapshot, write_yaml


def _folder(tmp, name, *files):
    folder = tmp / name
    folder.mkdir()
    for file in files:
        (folder / file).write_text("{}")
    return folder


def _pickled_adapter(world, tmp):
    sub = shutil.copytree(world["subs"][0], tmp / "sub")
    (sub / "adapter_model.safetensors").rename(sub / "adapter_model.bin")
    return [f"sub={sub}"]


def _pickled_model(world, tmp):
    model = shutil.copytree(world["base"], tmp / "model")
    (model / "model.safetensors").rename(model / "pytorch_model.bin")
    return [f"m={model}"]


def _broken_config(world, tmp):
    model = shutil.copytree(world["base"], tmp / "model")
    (model / "config.json").write_text("{oops")
    return [f"m={model}"]


def _broken_stats(world, tmp):
    data = shutil.copytree(world["data"], tmp / "data")
    (data / "stats.json").write_text(json.dumps({"n_clusters": 5}))
    return ["--dataset", data]


# (id, make(world, tmp) -> --models pairs or other flags, the error line's text)
CASES = [
    ("batch-size", lambda w, t: ["--batch_size", 0], "--batch_size must be at least 1, got 0"),
    ("max-length", lambda w, t: ["--max_length", 1], "--max_length must be at least 2, got 1"),
    ("held-out-zero", lambda w, t: ["--held_out", 0], "--held_out must be in (0, 1), got 0.0"),
    ("held-out-one", lambda w, t: ["--held_out", 1], "--held_out must be in (0, 1), got 1.0"),
    ("rows-negative", lambda w, t: ["--max_rows_per_cluster", -1], "--max_rows_per_cluster must be at least 1"),
    ("rows-zero", lambda w, t: ["--max_rows_per_cluster", 0], "--max_rows_per_cluster must be at least 1, got 0"),
    ("lm-eval-limit", lambda w, t: ["--lm_eval_limit", 0], "--lm_eval_limit must be at least 1, got 0"),
    ("dtype", lambda w, t: ["--dtype", "float8"], "invalid choice: 'float8'"),
    ("seed", lambda w, t: ["--seed", "x"], "invalid int value: 'x'"),
    ("unknown-flag", lambda w, t: ["--model", "a=b"], "unrecognized argument(s): --model a=b"),
    ("pair", lambda w, t: ["--models", "nonsense"], "--models takes NAME=PATH_OR_ID pairs, got 'nonsense'"),
    ("pair-no-name", lambda w, t: ["--models", f"={w['base']}"], "--models takes NAME=PATH_OR_ID pairs"),
    ("pair-twice", lambda w, t: ["--models", f"a={w['base']}", f"a={w['base']}"], "--models names 'a' twice"),
    ("model-missing", lambda w, t: ["--models", f"m={t / 'missing'}"], "does not exist"),
    ("model-file", lambda w, t: ["--models", f"m={w['data_file']}"], "is a file"),
    ("model-empty-folder", lambda w, t: ["--models", f"m={_folder(t, 'empty')}"], "has neither config.json nor "
     "adapter_config.json"),
    ("model-pickled-adapter", lambda w, t: ["--models", *_pickled_adapter(w, t)], "has only pickled (.bin) weights: "
     "safetensors only"),
    ("model-pickled", lambda w, t: ["--models", *_pickled_model(w, t)], "has only pickled (.bin) weights"),
    ("model-no-weights", lambda w, t: ["--models", f"m={_folder(t, 'm', 'config.json')}"],
     "has no weights (no model.safetensors"),
    ("model-broken-config", lambda w, t: ["--models", *_broken_config(w, t)], "cannot load the model"),
    ("model-hub-missing", lambda w, t: ["--models", "m=tester/no-such-model"], "cannot list the files of the Hub "
     "model 'tester/no-such-model'"),
    ("dataset-missing", lambda w, t: ["--dataset", t / "missing"], "does not exist"),
    ("dataset-not-ours", lambda w, t: ["--dataset", w["base"]], "is not a `dtm-hf distribute` output"),
    ("dataset-broken-stats", _broken_stats, "is not a `dtm-hf distribute` output"),
    ("no-held-out-rows", lambda w, t: ["--held_out", 0.001], "no held-out rows in cluster_0"),
    ("output-a-file", lambda w, t: ["--output_dir", w["data_file"]], "exists and is a file"),
    ("output-is-dataset", lambda w, t: ["--output_dir", w["data"], "--overwrite"], "is the dataset"),
    ("output-is-model", lambda w, t: ["--output_dir", w["base"], "--overwrite"], "is the model 'base'"),
    ("output-holds-model", lambda w, t: ["--output_dir", w["root"], "--overwrite"], "holds the dataset"),
]


@pytest.mark.parametrize(("make", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(world, make, expected, tmp_path, capsys):
    flags = make(world, tmp_path)
    out = flags[flags.index("--output_dir") + 1] if "--output_dir" in flags else tmp_path / "out"
    before = snapshot(out) if out.exists() else None
    argv = ["--models", f"base={world['base']}", "--dataset", world["data"], "--held_out", 0.3,
            "--output_dir", tmp_path / "out", *flags]
    assert_refused(capsys, "evaluate", argv, expected, out, (world["data"], world["base"], world["subs"][0]),
                   before=before)


CONFIGS = [
    ("broken-yaml", "models: [a\n", "is not valid YAML at line 2"),
    ("key-self", {"self": 1}, "unknown key(s) 'self'"),
    ("dtype", {"dtype": "float8"}, "--dtype 'float8' is not one of the choices"),
    ("batch-text", {"batch_size": "eight"}, "invalid int value: 'eight'"),
    ("models-mapping", {"models": {"a": "b"}}, "--models must be a list"),
]


@pytest.mark.parametrize(("values", "expected"), [c[1:] for c in CONFIGS], ids=[c[0] for c in CONFIGS])
def test_bad_config(world, values, expected, tmp_path, capsys):
    out = tmp_path / "out"
    if isinstance(values, dict):
        values = {"models": [f"base={world['base']}"], "dataset": str(world["data"]), "output_dir": str(out),
                  **values}
    config = write_yaml(tmp_path / "evaluate.yaml", values)
    assert_refused(capsys, "evaluate", ["--config", config], expected, out, (config,))
