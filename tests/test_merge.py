import json
import os
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
import yaml
from cli_helpers import dtm, one_error_line
from safetensors.torch import load_file

from dtm_hf.demo.data import demo_texts
from dtm_hf.demo.tiny_model import save_tiny_llama

TARGETS = ["gate_proj", "up_proj", "down_proj"]
RANK, ALPHA = 4, 8


merge = partial(dtm, "merge")


def make_submodel(base, folder, seed, cluster, rank=RANK, alpha=ALPHA, targets=TARGETS, modules_to_save=None,
                  use_rslora=False):
    """A LoRA adapter with random, non-zero B (as after training), the tokenizer and a `dtm_train.json` marker."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0, modules_to_save=modules_to_save,
        use_rslora=use_rslora))
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if "lora_" in name or "modules_to_save" in name:
            param.data = torch.randn(param.shape, generator=generator) * 0.05
    model.save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.chat_template = (Path(base).parent / "chat_template.jinja").read_text()
    tokenizer.save_pretrained(folder)
    (Path(folder) / "dtm_train.json").write_text(json.dumps({
        "cluster": cluster, "dataset": "tester/demo-k3", "dataset_config": cluster, "base_model": str(base),
        "train_rows": 10, "held_out_rows": 2, "final_loss": 1.0, "hyperparameters": {"r": rank}}))
    return Path(folder)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A base without a chat template (like a pretrained model) and a training root with 3 clusters and `all`."""
    root = tmp_path_factory.mktemp("merge")
    texts = demo_texts(20)
    base = save_tiny_llama(root / "base", texts, seed=0)
    (base / "chat_template.jinja").rename(root / "chat_template.jinja")
    train = root / "train"
    subs = [make_submodel(base, train / f"cluster_{i}", seed=i + 1, cluster=f"cluster_{i}") for i in range(3)]
    make_submodel(base, train / "all", seed=99, cluster="all")
    other_base = save_tiny_llama(root / "other_base", texts, seed=1, hidden_size=96)
    (other_base / "chat_template.jinja").unlink()
    return {"root": root, "base": base, "train": train, "subs": subs, "other_base": other_base}


def lora_delta(sub):
    """{base weight name: scale * B @ A}, read independently of dtm_hf."""
    config = json.loads((sub / "adapter_config.json").read_text())
    tensors = load_file(sub / "adapter_model.safetensors")
    scale = config["lora_alpha"] / config["r"]
    return {key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight"):
            scale * tensors[key.replace("lora_A", "lora_B")] @ tensors[key]
            for key in tensors if key.endswith("lora_A.weight")}


def expected_linear(base, subs, weights):
    base_sd = load_file(base / "model.safetensors")
    total = sum(weights)
    expected = {}
    for name, w in base_sd.items():
        expected[name] = sum(wi * (w + lora_delta(sub).get(name, torch.zeros_like(w)))
                             for sub, wi in zip(subs, weights, strict=True)) / total
    return expected


def model_tensors(folder):
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else [
        "model.safetensors"]
    tensors = {}
    for name in files:
        tensors.update(load_file(folder / name))
    return tensors


def assert_same(actual, expected, atol=1e-5):
    assert sorted(actual) == sorted(expected)
    for name in expected:
        torch.testing.assert_close(actual[name].float(), expected[name].float(), atol=atol, rtol=0, msg=name)


@pytest.fixture(scope="module")
def linear_out(setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("linear") / "merged"
    assert merge("--submodels", setup["train"], "--weights", "1,2,3", "--output_dir", out) == 0
    return out


def test_linear_equals_weighted_average_of_lora_weights(setup, linear_out):
    assert_same(model_tensors(linear_out), expected_linear(setup["base"], setup["subs"], [1, 2, 3]))


def test_yaml_card_and_tokenizer(setup, linear_out):
    config = yaml.safe_load((linear_out / "mergekit_config.yml").read_text())
    base = str(setup["base"])
    assert config["merge_method"] == "linear" and config["parameters"] == {"normalize": True}
    # The training root stands for its clusters in order, without the `all` baseline; paths are absolute.
    assert [m["model"] for m in config["models"]] == [f"{base}+{sub}" for sub in setup["subs"]]
    assert [m["parameters"]["weight"] for m in config["models"]] == pytest.approx([1 / 6, 2 / 6, 3 / 6])
    assert "{%- for message in messages -%}" in config["chat_template"]

    card = (linear_out / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    # Local sub-models and base: the metadata holds Hub ids only, the text names local inputs by folder name.
    assert "base_model" not in header and header["datasets"] == ["tester/demo-k3"]
    assert {"dtm-hf", "merge", "mergekit", "disperse-then-merge"} <= set(header["tags"])
    assert "`cluster_2`" in card and "linear" in card and "mergekit-yaml mergekit_config.yml OUT" in card
    assert str(setup["root"]) not in card
    assert not any(p.name.startswith(".lora-merge-cache") for p in linear_out.parent.iterdir())


def test_merged_model_loads_and_generates_with_chat_template(linear_out):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(linear_out)
    tokenizer = AutoTokenizer.from_pretrained(linear_out)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 plus 3?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert tokenizer.decode(ids["input_ids"][0]).endswith("<|assistant|>\n")
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


@pytest.mark.slow
def test_mergekit_yaml_cli_on_emitted_file_gives_the_same_tensors(setup, linear_out, tmp_path, capsys):
    out = tmp_path / "emitted"
    assert merge("--submodels", setup["train"], "--weights", "1,2,3", "--output_dir", out, "--emit_only") == 0
    assert [p.name for p in out.iterdir()] == ["mergekit_config.yml"]
    assert (out / "mergekit_config.yml").read_text() == (linear_out / "mergekit_config.yml").read_text()
    command = capsys.readouterr().out.strip().splitlines()[-1]
    assert command.startswith(f"mergekit-yaml {out / 'mergekit_config.yml'} {out}-mergekit --lora-merge-cache")
    # The printed command as a user would paste it, with the venv's mergekit-yaml.
    executable = shutil.which("mergekit-yaml") or str(Path(sys.executable).parent / "mergekit-yaml")
    subprocess.run(command.replace("mergekit-yaml", executable, 1), shell=True, check=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert_same(model_tensors(f"{out}-mergekit"), model_tensors(linear_out), atol=0)


def run_mergekit_on(config_file, out):
    """mergekit's own merge of the emitted YAML, with its `base+adapter` route. TIES keeps the k largest entries of
    each task vector by an unstable sort, so which entries tied at the threshold it keeps is the sort's choice; dtm-hf
    keeps them in index order, as a stable sort does, so the reference runs under one."""
    import tempfile
    from unittest import mock

    from mergekit.config import MergeConfiguration
    from mergekit.io.tasks import LoaderCache
    from mergekit.merge import MergeOptions, run_merge

    config = MergeConfiguration.model_validate(yaml.safe_load(Path(config_file).read_text()))
    LoaderCache().loaders.clear()
    stable = mock.patch("torch.argsort", partial(torch.argsort, stable=True))
    with tempfile.TemporaryDirectory() as cache, stable:
        run_merge(config, str(out), MergeOptions(lora_merge_cache=cache, write_model_card=False, random_seed=42))
    LoaderCache().loaders.clear()
    return model_tensors(out)


@pytest.mark.parametrize("method", ["ties", "dare_ties", "task_arithmetic"])
def test_task_vector_methods_equal_mergekit_on_the_emitted_yaml(setup, method, tmp_path):
    out = tmp_path / method
    assert merge("--submodels", *setup["subs"], "--method", method, "--density", 0.3, "--output_dir", out) == 0
    config = yaml.safe_load((out / "mergekit_config.yml").read_text())
    assert config["base_model"] == str(setup["base"]) and config["merge_method"] == method
    assert all(("density" in m["parameters"]) == (method != "task_arithmetic") for m in config["models"])
    merged = model_tensors(out)
    assert_same(merged, run_mergekit_on(out / "mergekit_config.yml", tmp_path / "direct"), atol=0)
    assert ("kept in index order" in (out / "README.md").read_text()) == (method == "ties")
    name = "model.layers.0.mlp.gate_proj.weight"
    assert not torch.allclose(merged[name], expected_linear(setup["base"], setup["subs"], [1, 1, 1])[name])


def test_adapter_output_exact_equals_full_merge(setup, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "both"
    assert merge("--submodels", *setup["subs"], "--weights", "3,1,1", "--output_format", "both",
                 "--output_dir", out) == 0
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 3 * RANK and config["base_model_name_or_path"] == str(setup["base"])
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(setup["base"]), out / "adapter")
    merged = {k: v for k, v in model.merge_and_unload().state_dict().items()}
    assert_same(merged, model_tensors(out))
    assert "exact" in (out / "README.md").read_text()


def test_svd_adapter_error_shrinks_with_rank_and_is_reported(setup, tmp_path):
    from dtm_hf.merging import adapter as lam
    from dtm_hf.merging.submodels import read

    out = tmp_path / "svd"
    assert merge("--submodels", *setup["subs"], "--output_format", "adapter", "--adapter_rank", 4,
                 "--output_dir", out) == 0
    reported = json.loads((out / "adapter_rank_errors.json").read_text())
    adapter = lora_delta(out)
    exact = {name: sum(lora_delta(sub)[name] for sub in setup["subs"]) / 3 for name in adapter}
    for name, delta in exact.items():
        assert (adapter[name] - delta).norm() / delta.norm() == pytest.approx(reported[name], rel=1e-3)
    assert (out / "tokenizer_config.json").exists() and "rank 4" in (out / "README.md").read_text()

    subs = [read(str(p), p) for p in setup["subs"]]
    merged, _, rank = lam.concat(subs, [1 / 3] * 3, setup["base"])
    means = [sum(e.values()) / len(e) for e in (lam.truncate(merged, r)[1] for r in (1, 2, 4, 8, rank))]
    assert all(a > b for a, b in zip(means, means[1:], strict=False)) and means[-1] < 1e-6


def test_paper_mode_averages_a_and_b_separately(setup, tmp_path):
    out = tmp_path / "paper"
    assert merge("--submodels", *setup["subs"], "--method", "paper", "--output_dir", out) == 0
    assert not (out / "mergekit_config.yml").exists() and not (out / "model.safetensors").exists()
    merged = load_file(out / "adapter_model.safetensors")
    inputs = [load_file(sub / "adapter_model.safetensors") for sub in setup["subs"]]
    assert sorted(merged) == sorted(inputs[0])
    for key in merged:
        torch.testing.assert_close(merged[key], sum(t[key] for t in inputs) / 3, atol=1e-6, rtol=0)
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (RANK, ALPHA)
    assert "Not an average of the sub-models" in (out / "README.md").read_text()


def test_paper_mode_keeps_the_rslora_scale(setup, tmp_path):
    """rsLoRA scales B @ A by alpha / sqrt(r); the averaged adapter is saved as plain LoRA (alpha / r), so its alpha
    must carry the same scale."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    subs = [make_submodel(setup["base"], tmp_path / f"rs_{i}", seed=20 + i, cluster=f"cluster_{i}", use_rslora=True)
            for i in range(2)]
    out = tmp_path / "paper"
    assert merge("--submodels", *subs, "--method", "paper", "--output_dir", out) == 0
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(setup["base"]), out).merge_and_unload()
    a = [load_file(sub / "adapter_model.safetensors") for sub in subs]
    key = next(k for k in a[0] if k.endswith("mlp.up_proj.lora_A.weight"))
    mean_a = (a[0][key] + a[1][key]) / 2
    mean_b = (a[0][key.replace("lora_A", "lora_B")] + a[1][key.replace("lora_A", "lora_B")]) / 2
    base = model_tensors(setup["base"])["model.layers.0.mlp.up_proj.weight"]
    expected = base + ALPHA / RANK**0.5 * mean_b @ mean_a
    torch.testing.assert_close(merged.state_dict()["model.layers.0.mlp.up_proj.weight"], expected, atol=1e-5, rtol=0)


def test_retrained_adapter_in_place_is_never_served_stale(setup, tmp_path):
    train = tmp_path / "train"
    subs = [make_submodel(setup["base"], train / f"cluster_{i}", seed=10 + i, cluster=f"cluster_{i}") for i in range(2)]
    assert merge("--submodels", train, "--output_dir", tmp_path / "first") == 0
    make_submodel(setup["base"], subs[0], seed=50, cluster="cluster_0")
    assert merge("--submodels", train, "--output_dir", tmp_path / "second") == 0
    assert_same(model_tensors(tmp_path / "second"), expected_linear(setup["base"], subs, [1, 1]))


def test_push_to_hub_loads_back(setup, linear_out, tmp_path, hub_server):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "pushed"
    assert merge("--submodels", setup["train"], "--weights", "1,2,3", "--output_dir", out,
                 "--push_to_hub", "--hub_model_id", "tester/dtm-merged") == 0
    files = hub_server.repo_files("tester/dtm-merged", repo_type="model")
    assert {"README.md", "mergekit_config.yml", "config.json", "model.safetensors", "tokenizer.json"} <= set(files)
    model = AutoModelForCausalLM.from_pretrained("tester/dtm-merged")
    assert_same(dict(model.state_dict()), model_tensors(linear_out))


def test_hub_submodels_without_marker(setup, tmp_path, hub_server):
    from huggingface_hub import HfApi, ModelCard, ModelCardData

    api = HfApi()
    for i, sub in enumerate(setup["subs"][:2]):
        folder = tmp_path / f"hub_{i}"
        shutil.copytree(sub, folder)
        (folder / "dtm_train.json").unlink()
        ModelCard(f"---\n{ModelCardData(datasets=[f'tester/data-{i}']).to_yaml()}\n---\n# sub\n").save(
            folder / "README.md")
        api.create_repo(f"tester/sub-{i}", exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=f"tester/sub-{i}")
    out = tmp_path / "from_hub"
    assert merge("--submodels", "tester/sub-0", "tester/sub-1", "--output_dir", out) == 0
    assert_same(model_tensors(out), expected_linear(setup["base"], setup["subs"][:2], [1, 1]))
    config = yaml.safe_load((out / "mergekit_config.yml").read_text())
    assert [m["model"] for m in config["models"]] == [f"{setup['base']}+tester/sub-{i}" for i in range(2)]
    header = yaml.safe_load((out / "README.md").read_text().split("---")[1])
    assert header["base_model"] == ["tester/sub-0", "tester/sub-1"]
    assert header["datasets"] == ["tester/data-0", "tester/data-1"]


@pytest.fixture(scope="module")
def variants(setup):
    """Sub-models on a sharded base, on a base with tied embeddings, and with modules_to_save (lm_head)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    root, base = setup["root"], setup["base"]
    model = AutoModelForCausalLM.from_pretrained(base)
    sharded = root / "sharded_base"
    model.save_pretrained(sharded, max_shard_size="200KB")
    AutoTokenizer.from_pretrained(base).save_pretrained(sharded)
    config = model.config
    config.tie_word_embeddings = True
    torch.manual_seed(5)
    tied = root / "tied_base"
    LlamaForCausalLM(config).save_pretrained(tied)
    AutoTokenizer.from_pretrained(base).save_pretrained(tied)
    return {
        "sharded": [make_submodel(sharded, root / f"sharded_{i}", seed=20 + i, cluster=f"c{i}") for i in range(3)],
        "tied": [make_submodel(tied, root / f"tied_{i}", seed=30 + i, cluster=f"c{i}") for i in range(3)],
        "modules_to_save": [make_submodel(base, root / f"mts_{i}", seed=40 + i, cluster=f"c{i}",
                                          modules_to_save=["lm_head"]) for i in range(3)],
    }


STREAM_CASES = [("sharded", "linear", None), ("sharded", "ties", None), ("sharded", "task_arithmetic", None),
                ("sharded", "dare_ties", None), ("sharded", "ties", "float16"), ("sharded", "linear", "bfloat16"),
                ("tied", "linear", None), ("tied", "ties", None), ("modules_to_save", "linear", None),
                ("modules_to_save", "ties", None)]


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "method", "dtype"), STREAM_CASES)
def test_streaming_route_equals_mergekit(variants, kind, method, dtype, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "stream"
    # dare_ties at density 1 drops nothing, so it is deterministic and comparable across routes.
    density = "1" if method == "dare_ties" else "0.4"
    assert merge("--submodels", *variants[kind], "--method", method, "--density", density, "--weights", "1,2,1",
                 "--lora_route", "stream", "--max_shard_size", "150KB", "--output_dir", out,
                 *(["--dtype", dtype] if dtype else [])) == 0
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1 and not (out / "model.safetensors").exists()
    expected = run_mergekit_on(out / "mergekit_config.yml", tmp_path / "mergekit")
    assert_same(model_tensors(out), expected, atol=0)
    AutoModelForCausalLM.from_pretrained(out)


def test_lora_rows_are_the_rows_of_the_whole_tensor_bit_for_bit(setup):
    """The row-block merge relies on it: a block of W + scale * B @ A equals those rows of the whole product."""
    import math

    from dtm_hf.merging.stream.loaders import LoraTensorLoader, SharedBaseLoader
    from dtm_hf.merging.stream.row_blocks import row_blocks
    from dtm_hf.merging.submodels import read

    base = SharedBaseLoader(setup["base"])
    loader = LoraTensorLoader(base, read(str(setup["subs"][0]), setup["subs"][0]))
    split = 0
    for key in loader.loras:
        whole = loader.get_tensor(key).clone()
        for block_elements in (1, 24 * math.prod(whole.shape[1:]), 10**9):
            blocks = row_blocks(whole.shape[0], math.prod(whole.shape[1:]), block_elements)
            split += len(blocks) > 1
            rows = torch.cat([loader.get_rows(key, start, stop) for start, stop in blocks])
            assert torch.equal(rows, whole), (key, blocks)
    assert split >= 2 * len(loader.loras)


@pytest.mark.parametrize("method", ["linear", "ties", "task_arithmetic"])
def test_merge_in_small_row_blocks_equals_mergekit(setup, method, tmp_path, monkeypatch):
    from dtm_hf.merging.stream import merge as stream

    monkeypatch.setitem(stream.BLOCK_ELEMENTS, "cpu", 1)  # blocks of MIN_ROWS rows: several per tensor
    out = tmp_path / method
    assert merge("--submodels", *setup["subs"], "--method", method, "--density", 0.3, "--weights", "1,2,1",
                 "--output_dir", out) == 0
    assert_same(model_tensors(out), run_mergekit_on(out / "mergekit_config.yml", tmp_path / "direct"), atol=0)


def test_lora_route_mergekit_equals_stream(setup, linear_out, tmp_path):
    out = tmp_path / "mergekit_route"
    assert merge("--submodels", setup["train"], "--weights", "1,2,3", "--lora_route", "mergekit",
                 "--output_dir", out) == 0
    assert_same(model_tensors(out), model_tensors(linear_out), atol=1e-6)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in linear_out.iterdir())


def _other_base(setup, tmp):
    return [make_submodel(setup["other_base"], tmp / "x", seed=3, cluster="x")]


def _rank_2(setup, tmp):
    return [make_submodel(setup["base"], tmp / "r2", seed=3, cluster="r2", rank=2, alpha=4)]


def _other_targets(setup, tmp):
    return [make_submodel(setup["base"], tmp / "q", seed=3, cluster="q", targets=["q_proj"])]


def _no_weights_file(setup, tmp):
    shutil.copytree(setup["subs"][0], tmp / "broken")
    (tmp / "broken" / "adapter_model.safetensors").unlink()
    return [tmp / "broken"]


BAD_INPUTS = [
    (None, ["--weights", "1,1"], "--weights has 2 value(s) but there are 3 sub-models"),
    (None, ["--weights", "1,-1,1"], "must not be negative"),
    (None, ["--weights", "0,0,0"], "all zero"),
    (None, ["--method", "ties", "--density", "0"], "--density must be in (0, 1]"),
    (None, ["--method", "ties", "--density", "1.5"], "--density must be in (0, 1]"),
    (None, ["--method", "slerp"], "invalid choice: 'slerp'"),
    (None, ["--method", "ties", "--output_format", "adapter"], "exact only for --method linear"),
    (None, ["--base_model", "OTHER"], "does not fit the base model"),
    (_other_base, [], "record different bases"),
    (_rank_2, ["--method", "paper"], "same rank"),
    (_other_targets, ["--method", "paper"], "same target modules"),
    (_no_weights_file, [], "has no adapter_model.safetensors"),
    (lambda setup, tmp: [tmp / "missing"], [], "does not exist"),
    (None, ["--push_to_hub"], "--push_to_hub needs --hub_model_id"),
    (None, ["--lora_route", "fast"], "invalid choice: 'fast'"),
    (None, ["--max_shard_size", "big"], "--max_shard_size must be a size like 5GB"),
    (None, ["--device", "tpu"], "unknown --device 'tpu'; choose cpu, cuda or cuda:N"),
    (None, ["--device", f"cuda:{torch.cuda.device_count()}"], "no such CUDA GPU is visible here"),
]


@pytest.mark.parametrize(("extra_submodels", "flags", "expected"), BAD_INPUTS)
def test_bad_input_one_error_line_no_output(setup, extra_submodels, flags, expected, tmp_path, capsys):
    subs = [*setup["subs"], *(extra_submodels(setup, tmp_path) if extra_submodels else [])]
    flags = [str(setup["other_base"]) if f == "OTHER" else f for f in flags]
    out = tmp_path / "out"
    capsys.readouterr()
    assert merge("--submodels", *subs, "--output_dir", out, *flags) == 2
    assert expected in one_error_line(capsys, "merge")
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_existing_output_needs_overwrite(setup, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert merge("--submodels", *setup["subs"], "--output_dir", out) == 2
    assert "pass --overwrite" in capsys.readouterr().err and [p.name for p in out.iterdir()] == ["keep.txt"]
    assert merge("--submodels", *setup["subs"], "--output_dir", out, "--overwrite", "--emit_only") == 0
    assert [p.name for p in out.iterdir()] == ["mergekit_config.yml"]


def test_yaml_config_file(setup, tmp_path):
    recipe = tmp_path / "merge.yaml"
    recipe.write_text(yaml.safe_dump({"submodels": [str(s) for s in setup["subs"]], "weights": [1, 1, 2],
                                      "method": "linear", "output_dir": str(tmp_path / "out"), "emit_only": True}))
    assert merge("--config", recipe) == 0
    config = yaml.safe_load((tmp_path / "out" / "mergekit_config.yml").read_text())
    assert [m["parameters"]["weight"] for m in config["models"]] == [0.25, 0.25, 0.5]


def test_training_root_takes_only_completed_single_clusters(setup, tmp_path, capsys):
    root = tmp_path / "root"
    shutil.copytree(setup["train"], root)
    shutil.copytree(root / "cluster_0", root / "cluster_0+cluster_1")  # a union, marker and all
    shutil.copytree(root / "cluster_1", root / "merged-adapter")  # an adapter `dtm-hf train` did not write
    (root / "merged-adapter" / "dtm_train.json").unlink()
    out = tmp_path / "out"
    assert merge("--submodels", root, "--output_dir", out) == 0
    said = capsys.readouterr().out
    config = yaml.safe_load((out / "mergekit_config.yml").read_text())
    assert [m["model"].rsplit("/", 1)[1] for m in config["models"]] == ["cluster_0", "cluster_1", "cluster_2"]
    assert "Skipping cluster_0+cluster_1" in said and "a union of clusters" in said
    assert "Skipping merged-adapter" in said and "did not complete it" in said
