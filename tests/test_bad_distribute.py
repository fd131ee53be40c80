"""`dtm-hf distribute` on bad input: each case is one error line naming what is wrong, exit 2, no traceback, no
output folder, nothing left beside it, and the input untouched."""

import json
import os

import pytest
from battery_helpers import assert_refused, snapshot, write_yaml

ROW = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}


def jsonl(tmp, name, *lines):
    path = tmp / name
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _file(tmp, name, text):
    path = tmp / name
    path.write_text(text)
    return path


def _folder(tmp, *files):
    folder = tmp / "in"
    folder.mkdir()
    for name, text in files:
        (folder / name).write_text(text)
    return folder


GOOD = json.dumps(ROW)
# (id, input: None for the demo data or a function of tmp_path, flags, the error line's text)
CASES = [
    ("k1", None, ["--n_clusters", 1], "--n_clusters must be at least 2, got 1"),
    ("k0", None, ["--n_clusters", 0], "--n_clusters must be at least 2, got 0"),
    ("k-negative", None, ["--n_clusters", -3], "--n_clusters must be at least 2, got -3"),
    ("k-text", None, ["--n_clusters", "four"], "invalid int value: 'four'"),
    ("k-too-many", None, ["--n_clusters", 500], "--n_clusters 500 is more than the 20 usable rows"),
    ("kmeans-without-k", None, ["--method", "kmeans"], "--n_clusters is required for --method kmeans"),
    ("method", None, ["--n_clusters", 2, "--method", "kmeanz"], "invalid choice: 'kmeanz'"),
    ("format", None, ["--n_clusters", 2, "--format", "foo"], "invalid choice: 'foo'"),
    ("format-columns", None, ["--n_clusters", 2, "--format", "alpaca"], "--format alpaca needs the column(s)"),
    ("max-samples-negative", None, ["--n_clusters", 2, "--max_samples", -5],
     "--max_samples must be at least 1, got -5"),
    ("max-samples-zero", None, ["--n_clusters", 2, "--max_samples", 0], "--max_samples must be at least 1, got 0"),
    ("max-samples-too-few", None, ["--n_clusters", 3, "--max_samples", 2], "--n_clusters 3 is more than the 2 usable"),
    ("embedding-batch", None, ["--n_clusters", 2, "--embedding_batch_size", 0], "--embedding_batch_size must be at"),
    ("embed-field", None, ["--n_clusters", 2, "--embed_field", "title"], "invalid choice: 'title'"),
    ("backend", None, ["--n_clusters", 2, "--embedding_backend", "onnx"], "invalid choice: 'onnx'"),
    ("seed", None, ["--n_clusters", 2, "--seed", 1.5], "invalid int value: '1.5'"),
    ("keep-system", None, ["--n_clusters", 2, "--keep_system", "maybe"], "Truthy value expected"),
    ("source-column", None, ["--method", "source", "--source_column", "origin"], "needs the column 'origin'"),
    ("push-without-id", None, ["--n_clusters", 2, "--push_to_hub"], "--push_to_hub needs --hub_dataset_id"),
    ("push-bad-id", None, ["--n_clusters", 2, "--push_to_hub", "--hub_dataset_id", "bad id!!/x y"],
     "--hub_dataset_id 'bad id!!/x y' is not a valid Hub repo id"),
    ("push-long-id", None, ["--n_clusters", 2, "--push_to_hub", "--hub_dataset_id", "me/" + "x" * 97],
     "is not a valid Hub repo id"),
    ("unknown-flag", None, ["--clusters", 2], "unrecognized argument(s): --clusters 2"),
    ("abbreviated-flag", None, ["--n_cluster", 2], "unrecognized argument(s): --n_cluster 2"),
    ("columns-pair", None, ["--n_clusters", 2, "--columns", "question"], "--columns takes INPUT=FORMAT pairs"),
    ("columns-missing", None, ["--n_clusters", 2, "--columns", "query=instruction"], "--columns names ['query']"),
    ("missing-file", lambda t: t / "nope.jsonl", ["--n_clusters", 2], "cannot read the dataset"),
    ("empty-folder", lambda t: _folder(t), ["--n_clusters", 2], "is a folder with no data file in it"),
    ("folder-of-text", lambda t: _folder(t, ("a.txt", "hi")), ["--n_clusters", 2], "is a folder with no data file"),
    ("text-file", lambda t: _file(t, "a.txt", "hi\n"), ["--n_clusters", 2], "is not a .jsonl, .json, .parquet"),
    ("mixed-kinds", lambda t: _folder(t, ("a.jsonl", GOOD), ("b.csv", "a,b\n1,2\n")), ["--n_clusters", 2],
     "mixes .csv, .json files"),
    ("bad-jsonl-line", lambda t: jsonl(t, "d.jsonl", GOOD, GOOD, '{"messages": [', GOOD), ["--n_clusters", 2],
     "d.jsonl line 3 is not valid JSON"),
    ("jsonl-array-line", lambda t: jsonl(t, "d.jsonl", GOOD, "[1, 2]", GOOD), ["--n_clusters", 2],
     "d.jsonl line 2 is a JSON list, not an object"),
    ("bad-json-document", lambda t: _file(t, "d.json", "[" + GOOD + ",\n" + GOOD + ",\n{oops}]"), ["--n_clusters", 2],
     "d.json line 3 is not valid JSON"),
    ("bad-line-in-folder", lambda t: _folder(t, ("a.jsonl", GOOD + "\n"), ("b.jsonl", GOOD + "\n}\n")),
     ["--n_clusters", 2], "b.jsonl line 2 is not valid JSON"),
    ("empty-file", lambda t: _file(t, "d.jsonl", ""), ["--n_clusters", 2], "has no rows: the file is empty"),
    ("empty-files", lambda t: _folder(t, ("a.jsonl", ""), ("b.jsonl", "")), ["--n_clusters", 2],
     "has no rows: its files are empty"),
    ("header-only-csv", lambda t: _file(t, "d.csv", "instruction,output\n"), ["--n_clusters", 2], "has no rows"),
    ("corrupt-parquet", lambda t: _file(t, "d.parquet", "not parquet at all"), ["--n_clusters", 2],
     "cannot read the dataset"),
    ("unknown-format", lambda t: jsonl(t, "d.jsonl", '{"question": "q", "answer": "a"}'), ["--n_clusters", 2],
     "unknown data format: the columns are ['answer', 'question']"),
    ("no-usable-rows", lambda t: jsonl(t, "d.jsonl", *['{"messages": [{"role": "user", "content": "q"}]}'] * 4),
     ["--n_clusters", 2], "--n_clusters 2 is more than the 0 usable rows"),
    ("columns-clash", lambda t: jsonl(t, "d.jsonl", '{"q": "a", "instruction": "b", "output": "c"}'),
     ["--n_clusters", 2, "--columns", "q=instruction"], "--columns would rename onto ['instruction']"),
    ("hub-dataset-missing", lambda t: "tester/no-such-dataset", ["--n_clusters", 2], "cannot read the dataset"),
]


@pytest.mark.parametrize(("make_input", "flags", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(world, make_input, flags, expected, tmp_path, capsys):
    data = make_input(tmp_path) if make_input else world["data_file"]
    out = tmp_path / "out"
    inputs = (data,) if os.path.exists(str(data)) else ()
    assert_refused(capsys, "distribute", ["--dataset", data, "--output_dir", out, *flags], expected, out, inputs)


CONFIGS = [
    ("broken-yaml", "dataset: [unclosed\n", "is not valid YAML at line 2"),
    ("not-a-mapping", "- a\n- b\n", "must be a YAML mapping"),
    ("key-self", {"self": 1}, "unknown key(s) 'self'"),
    ("key-number", {1: 2}, "unknown key(s) '1'"),
    ("key-trl", {"dataset_name": "x"}, "(dataset_name: dtm-hf's key is `dataset`)"),
    ("list-for-number", {"n_clusters": [2, 3]}, "--n_clusters must be an integer, got [2, 3]"),
    ("bool-for-number", {"n_clusters": True}, "--n_clusters must be an integer, got True"),
    ("number-for-bool", {"keep_system": 3}, "--keep_system must be true or false, got 3"),
    ("float-for-int", {"seed": 1.5}, "--seed must be an integer, got 1.5"),
    ("choice", {"method": "kmeanz"}, "--method 'kmeanz' is not one of the choices"),
    ("env-not-mapping", {"env": ["A=1"]}, "`env` in"),
    ("mapping-for-text", {"columns": {"q": "instruction"}}, "--columns must be a string"),
]


@pytest.mark.parametrize(("values", "expected"), [c[1:] for c in CONFIGS], ids=[c[0] for c in CONFIGS])
def test_bad_config(world, values, expected, tmp_path, capsys):
    out = tmp_path / "out"
    if isinstance(values, dict):
        values = {"dataset": str(world["data_file"]), "n_clusters": 2, "output_dir": str(out), **values}
    config = write_yaml(tmp_path / "distribute.yaml", values)
    assert_refused(capsys, "distribute", ["--config", config, "--output_dir", out], expected, out, (config,))


def test_missing_config_file_and_required_flags(world, tmp_path, capsys):
    out = tmp_path / "out"
    assert_refused(capsys, "distribute", ["--config", tmp_path / "nope.yaml"], "cannot read the config file", out)
    assert_refused(capsys, "distribute", ["--config"], "--config needs a YAML file", out)
    assert_refused(capsys, "distribute", ["--output_dir", out, "--n_clusters", 2], "--dataset is required", out)
    assert_refused(capsys, "distribute", ["--dataset", world["data_file"], "--n_clusters", 2], "--output_dir is "
                   "required", out)


def test_output_that_is_a_file_or_not_empty_is_left_alone(world, tmp_path, capsys):
    argv = ["--dataset", world["data_file"], "--n_clusters", 2, "--output_dir"]
    out = tmp_path / "out.txt"
    out.write_text("mine")
    assert_refused(capsys, "distribute", [*argv, out], "exists and is a file", out, before=snapshot(out))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_refused(capsys, "distribute", [*argv, out], "is not empty; pass --overwrite", out, before=snapshot(out))


@pytest.mark.parametrize("where", ["is", "holds"])
def test_output_never_replaces_its_input(world, where, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    data = folder / "demo.jsonl"
    data.write_bytes(world["data_file"].read_bytes())
    out = folder if where == "is" else tmp_path
    before = snapshot(out)
    assert_refused(capsys, "distribute", ["--dataset", folder if where == "is" else data, "--n_clusters", 2,
                                          "--output_dir", out, "--overwrite"], f"{where} the dataset", out,
                   before=before)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(world, tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_bytes(world["data_file"].read_bytes())
    data.chmod(0)
    out = tmp_path / "out"
    assert_refused(capsys, "distribute", ["--dataset", data, "--n_clusters", 2, "--output_dir", out],
                   "d.jsonl of the dataset", out)


def test_push_without_a_token(world, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-token"))
    out = tmp_path / "out"
    assert_refused(capsys, "distribute", ["--dataset", world["data_file"], "--n_clusters", 2, "--output_dir", out,
                                          "--push_to_hub", "--hub_dataset_id", "me/data"], "needs a Hub token", out)
