"""`dtm-hf merge` on bad input: corrupted or foreign sub-models and bases, numbers that are not finite, an output
that would replace an input, settings that do not go together. Each case is one error line naming the file or the
tensor, exit 2, no traceback, no output (and nothing beside it), the inputs untouched."""

import json
import shutil

import pytest
import torch
from battery_helpers import assert_refused, make_adapter, snapshot, write_yaml
from safetensors.torch import load_file, save_file

ADAPTER = "adapter_model.safetensors"


def copy_sub(world, tmp, i=0):
    return shutil.copytree(world["subs"][i], tmp / f"sub_{i}")


def copy_base(world, tmp):
    return shutil.copytree(world["base"], tmp / "base")


def with_sub(edit):
    """A case whose first sub-model is a copy changed by `edit(folder)`."""

    def make(world, tmp):
        sub = copy_sub(world, tmp)
        edit(sub)
        return [sub, world["subs"][1]], []

    return make


def with_base(edit, *flags):
    """A case whose base is a copy changed by `edit(folder)`, passed with --base_model."""

    def make(world, tmp):
        base = copy_base(world, tmp)
        edit(base)
        return world["subs"], ["--base_model", base, *flags]

    return make


def text(name, content):
    return lambda folder: (folder / name).write_text(content)


def edit_json(name, **changes):
    def edit(folder):
        values = json.loads((folder / name).read_text())
        values.update(changes)
        for key in [k for k, v in changes.items() if v is None]:
            del values[key]
        (folder / name).write_text(json.dumps(values))

    return edit


def cut(name, keep):
    def edit(folder):
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(keep(data))

    return edit


def poison(name, value, key_part=None):
    def edit(folder):
        tensors = load_file(folder / name)
        key = next(k for k in sorted(tensors) if key_part is None or key_part in k)
        tensors[key].view(-1)[0] = value
        save_file(tensors, folder / name, metadata={"format": "pt"})

    return edit


def only_bin(folder):
    (folder / ADAPTER).rename(folder / "adapter_model.bin")


def _flags(*flags):
    return lambda world, tmp: (world["subs"], list(flags))


def _hub_sub(world, tmp):
    return ["tester/no-such-adapter"], []


def _twice(world, tmp):
    return [world["subs"][0], world["subs"][0]], []


def _plus(world, tmp):
    return [shutil.copytree(world["subs"][0], tmp / "a+b")], []


def _empty_root(world, tmp):
    (tmp / "root" / "x").mkdir(parents=True)
    return [tmp / "root"], []


def _file_sub(world, tmp):
    (tmp / "sub.txt").write_text("x")
    return [tmp / "sub.txt"], []


def _other_template(world, tmp):
    sub = copy_sub(world, tmp)
    (sub / "chat_template.jinja").write_text("{{ messages }}")
    return [sub, world["subs"][1]], []


def _rank_mismatch(world, tmp):
    return [make_adapter(world["base"], tmp / "r2", seed=5, cluster="r2", rank=2), world["subs"][1]], [
        "--method", "paper"]


# (id, make(world, tmp) -> (sub-models, extra flags), the error line's text)
CASES = [
    ("adapter-config-json", with_sub(text("adapter_config.json", '{"r": 4,')), "adapter_config.json (the adapter "
     "config of sub-model"),
    ("adapter-config-list", with_sub(text("adapter_config.json", "[4]")), "must be a JSON object, not a list"),
    ("adapter-config-no-r", with_sub(edit_json("adapter_config.json", r=None)), "needs a positive integer `r`"),
    ("adapter-config-r-zero", with_sub(edit_json("adapter_config.json", r=0)), "needs a positive integer `r`"),
    ("adapter-config-r-text", with_sub(edit_json("adapter_config.json", r="4")), "needs a positive integer `r`"),
    ("adapter-config-alpha", with_sub(edit_json("adapter_config.json", lora_alpha="x")), "a number `lora_alpha`"),
    ("adapter-config-dora", with_sub(edit_json("adapter_config.json", use_dora=True)), "DoRA adapter"),
    ("adapter-config-prefix", with_sub(edit_json("adapter_config.json", peft_type="PREFIX_TUNING")),
     "is a PREFIX_TUNING adapter"),
    ("marker-json", with_sub(text("dtm_train.json", "{oops")), "dtm_train.json (the training record of sub-model"),
    ("marker-binary", with_sub(lambda f: (f / "dtm_train.json").write_bytes(b"\xff\xfe\x00")), "is not valid JSON"),
    ("no-config", with_sub(lambda f: (f / "adapter_config.json").unlink()), "has no adapter_config.json"),
    ("only-bin", with_sub(only_bin), "only adapter_model.bin: safetensors only"),
    ("truncated", with_sub(cut(ADAPTER, lambda d: d[:-100])), "is not a readable safetensors file (Error while "
     "deserializing header: incomplete metadata"),
    ("header-length", with_sub(cut(ADAPTER, lambda d: (10**12).to_bytes(8, "little") + d[8:])), "header too large"),
    ("header-text", with_sub(cut(ADAPTER, lambda d: d[:8] + b"{garbage" + d[16:])), "invalid JSON in header"),
    ("empty-weights", with_sub(cut(ADAPTER, lambda d: b"")), "header too small"),
    ("nan-adapter", with_sub(poison(ADAPTER, float("nan"), "lora_B")), "has 1 non-finite value(s) (NaN or inf)"),
    ("inf-adapter", with_sub(poison(ADAPTER, float("inf"), "lora_A")), "as after a diverged training"),
    ("base-config-json", with_base(text("config.json", "{")), "config.json (the base model's config) is not valid"),
    ("base-index-json", with_base(lambda b: (b / "model.safetensors.index.json").write_text("{")), "shard index"),
    ("base-index-no-map", with_base(lambda b: (b / "model.safetensors.index.json").write_text("{}")), "no weight_map"),
    ("base-truncated", with_base(cut("model.safetensors", lambda d: d[: len(d) // 2])), "model.safetensors is not a "
     "readable safetensors file"),
    ("base-no-weights", with_base(lambda b: (b / "model.safetensors").unlink()), "has no model.safetensors"),
    ("base-nan", with_base(poison("model.safetensors", float("nan"), "up_proj")), "the merged tensor "
     "model.layers.0.mlp.up_proj.weight has"),
    ("base-nan-untouched", with_base(poison("model.safetensors", float("nan"), "norm")), "the merged tensor"),
    ("base-nan-ties", with_base(poison("model.safetensors", float("nan"), "down_proj"), "--method", "ties"),
     "the task vector of model.layers.0.mlp.down_proj.weight holds NaN values: the base model's tensor"),
    ("base-nan-mergekit", with_base(poison("model.safetensors", float("nan"), "gate_proj"), "--method", "dare_ties"),
     "the merged tensor model.layers.0.mlp.gate_proj.weight"),
    ("base-inf-half", with_base(poison("model.safetensors", float("inf"), "o_proj"), "--dtype", "float16"),
     "non-finite"),
    ("base-missing", _flags("--base_model", "/no/such/base"), "the base model /no/such/base does not exist"),
    ("rank-above-exact", _flags("--output_format", "adapter", "--adapter_rank", 9),
     "--adapter_rank 9 is above the exact merge's rank 8"),
    ("rank-huge", _flags("--output_format", "both", "--adapter_rank", 100000), "choose at most 8"),
    ("rank-full", _flags("--adapter_rank", 4), "--adapter_rank applies to the linear merge's adapter"),
    ("rank-zero", _flags("--output_format", "adapter", "--adapter_rank", 0), "--adapter_rank must be at least 1"),
    ("ties-adapter", _flags("--method", "ties", "--output_format", "both"), "exact only for --method linear"),
    ("paper-full", _flags("--method", "paper", "--output_format", "full"), "is written as an adapter"),
    ("paper-emit", _flags("--method", "paper", "--emit_only"), "mergekit has no `paper` method"),
    ("emit-push", _flags("--emit_only", "--push_to_hub", "--hub_model_id", "me/m"), "drop --push_to_hub"),
    ("push-bad-id", _flags("--push_to_hub", "--hub_model_id", "bad id!!"), "is not a valid Hub repo id"),
    ("weights-text", _flags("--weights", "a,b"), "--weights must be numbers separated by commas"),
    ("weights-inf", _flags("--weights", "1,inf"), "--weights must be finite numbers"),
    ("weights-nan", _flags("--weights", "nan,1"), "--weights must be finite numbers"),
    ("weights-sum", _flags("--normalize", "false", "--output_format", "adapter", "--weights", "1,1"),
     "can only express weights that sum to 1"),
    ("density-zero", _flags("--method", "ties", "--density", 0), "--density must be in (0, 1]"),
    ("seed-text", _flags("--seed", "x"), "invalid int value: 'x'"),
    ("dtype", _flags("--dtype", "float8"), "invalid choice: 'float8'"),
    ("device", _flags("--device", "gpu"), "unknown --device 'gpu'"),
    ("shard-size", _flags("--max_shard_size", "0GB"), "--max_shard_size must be a size like 5GB"),
    ("unknown-flag", _flags("--weight", "1,2"), "unrecognized argument(s): --weight 1,2"),
    ("hub-sub-missing", _hub_sub, "cannot fetch the sub-model 'tester/no-such-adapter'"),
    ("sub-twice", _twice, "a sub-model is given twice"),
    ("sub-plus", _plus, "contains '+' or '@'"),
    ("empty-root", _empty_root, "is neither a sub-model folder"),
    ("sub-file", _file_sub, "is a file; pass a sub-model folder"),
    ("templates-differ", _other_template, "different chat templates"),
    ("paper-ranks", _rank_mismatch, "needs sub-models with the same rank"),
]


@pytest.mark.parametrize(("make", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(world, make, expected, tmp_path, capsys):
    subs, flags = make(world, tmp_path)
    out = tmp_path / "out"
    inputs = tuple(p for p in (*subs, world["base"], *flags[1:2]) if hasattr(p, "exists") and p.exists())
    assert_refused(capsys, "merge", ["--submodels", *subs, "--output_dir", out, *flags], expected, out, inputs)


@pytest.mark.parametrize("where", ["base", "inside-base", "holds-base", "sub", "inside-sub", "root"])
def test_output_never_replaces_an_input_even_with_overwrite(world, where, tmp_path, capsys):
    base, train = copy_base(world, tmp_path), shutil.copytree(world["train"], tmp_path / "train")
    out = {"base": base, "inside-base": base / "merged", "holds-base": tmp_path, "sub": train / "cluster_0",
           "inside-sub": train / "cluster_0" / "merged", "root": train}[where]
    before = snapshot(tmp_path)
    expected = {"base": "is the base model", "inside-base": "is inside the base model", "holds-base": "holds",
                "sub": "is the sub-model", "inside-sub": "is inside the sub-model", "root": "holds the sub-model"}
    assert_refused(capsys, "merge", ["--submodels", train, "--base_model", base, "--output_dir", out, "--overwrite"],
                   expected[where], out, before=snapshot(out) if out.exists() else None)
    assert snapshot(tmp_path) == before


CONFIGS = [
    ("broken-yaml", "submodels: [a\n", "is not valid YAML at line 2"),
    ("key-self", {"self": 1}, "unknown key(s) 'self'"),
    ("key-unknown", {"method_": "ties"}, "unknown key(s) 'method_'"),
    ("submodels-mapping", {"submodels": {"a": 1}}, "--submodels must be a list"),
    ("density-text", {"density": "half"}, "invalid float value: 'half'"),
    ("rank-float", {"output_format": "adapter", "adapter_rank": 2.5}, "--adapter_rank must be an integer, got 2.5"),
    ("normalize-text", {"normalize": "sometimes"}, "Truthy value expected: got sometimes"),
    ("method", {"method": "slerp"}, "--method 'slerp' is not one of the choices"),
]


@pytest.mark.parametrize(("values", "expected"), [c[1:] for c in CONFIGS], ids=[c[0] for c in CONFIGS])
def test_bad_config(world, values, expected, tmp_path, capsys):
    out = tmp_path / "out"
    if isinstance(values, dict):
        values = {"submodels": [str(s) for s in world["subs"]], "output_dir": str(out), **values}
    config = write_yaml(tmp_path / "merge.yaml", values)
    assert_refused(capsys, "merge", ["--config", config, "--output_dir", out], expected, out, (config,))


def test_a_merged_adapter_inside_the_training_root_is_not_a_sub_model(world, tmp_path, capsys):
    train = shutil.copytree(world["train"], tmp_path / "train")
    from cli_helpers import dtm

    assert dtm("merge", "--submodels", train, "--output_dir", train / "merged", "--output_format", "adapter") == 0
    assert dtm("merge", "--submodels", train, "--output_dir", tmp_path / "again", "--emit_only") == 0
    said = capsys.readouterr().out
    assert "Skipping merged" in said and "did not complete it" in said
    config = (tmp_path / "again" / "mergekit_config.yml").read_text()
    assert config.count("+") == 2 and "train/merged" not in config
    assert torch.isfinite(load_file(train / "merged" / ADAPTER)["base_model.model.model.layers.0.mlp.up_proj."
                                                                      "lora_A.weight"]).all()
