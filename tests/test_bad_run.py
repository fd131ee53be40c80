"""`dtm-hf run` on bad recipes and flags: everything a stage would trip over hours later is one error line before
the first stage, and no run folder is made. Also the `dtm-hf` command itself."""

import pytest
from battery_helpers import assert_refused, write_yaml
from run_helpers import recipe


def inputs(world):
    return world["data_file"], world["base"]


def sections(world, **changes):
    return recipe(inputs(world), **changes)


# (id, recipe: a function of world giving the YAML mapping or text, extra flags, the error line's text)
CASES = [
    ("broken-yaml", lambda w: "train: {a: [1\n", [], "is not valid YAML at line"),
    ("not-a-mapping", lambda w: "- distribute\n", [], "must be a YAML mapping"),
    ("unknown-section", lambda w: {**sections(w), "trian": {}}, [], "unknown section(s) ['trian']"),
    ("section-not-mapping", lambda w: sections(w, distribute=["x"]), [], "the recipe has no 'distribute' section"),
    ("train-missing", lambda w: {k: v for k, v in sections(w).items() if k != "train"}, [],
     "the recipe has no 'train' section"),
    ("merge-mapping", lambda w: sections(w, merge={"method": "linear"}), [], "must be a list of merge settings"),
    ("merge-item", lambda w: sections(w, merge=["linear"]), [], "must be a list of merge settings"),
    ("merge-method", lambda w: sections(w, merge=[{"method": "slerpp"}]), [], "--method 'slerpp' is not one of"),
    ("merge-unknown-sub", lambda w: sections(w, merge=[{"submodels": ["cluster_7"]}]), [],
     "names sub-model(s) ['cluster_7'] that the recipe does not train"),
    ("merge-baseline", lambda w: sections(w, distribute={"n_clusters": None, "method": "source"},
                                          merge=[{"submodels": ["all"]}]), [], "names the all-data baseline"),
    ("merge-same-name", lambda w: sections(w, merge=[{"method": "linear"},
                                                     {"method": "ties", "output_dir": "x/linear"}]),
     [], "two merges in the recipe write to the same merged/<name>"),
    ("distribute-k", lambda w: sections(w, distribute={"n_clusters": [2, 3]}), [],
     "recipe section 'distribute': --n_clusters must be an integer, got [2, 3]"),
    ("distribute-key", lambda w: sections(w, distribute={"n_cluster": 2}), [], "unknown key(s) 'n_cluster'"),
    ("distribute-self", lambda w: sections(w, distribute={"self": 1}), [], "unknown key(s) 'self'"),
    ("train-lora-r", lambda w: sections(w, train={"lora_r": 0}), [], "recipe section 'train': --lora_r must be at"),
    ("train-dtype", lambda w: sections(w, train={"dtype": "float8"}), [], "recipe section 'train': --dtype 'float8'"),
    ("train-targets", lambda w: sections(w, train={"lora_target_modules": ["nope"]}), [], "LoRA module(s) ['nope']"),
    ("train-key", lambda w: sections(w, train={"max_seq_length": 64}), [], "TRL renamed it `max_length`"),
    ("train-eval", lambda w: sections(w, train={"eval_strategy": "steps"}), [], "has no evaluation split"),
    ("evaluate-batch", lambda w: sections(w, evaluate={"batch_size": 0}), [], "--batch_size must be at least 1"),
    ("evaluate-without-train", lambda w: {k: v for k, v in sections(w).items() if k != "train"},
     ["--stages", "distribute,evaluate"], "recipe section 'evaluate' needs a 'train' section"),
    ("held-out-differ", lambda w: sections(w, train={"held_out": 0.1}), [], "hold out different fractions"),
    ("hub-no-namespace", lambda w: sections(w, hub={"push": True}), [], "has push: true but no namespace"),
    ("hub-key", lambda w: sections(w, hub={"push": True, "namespace": "me", "privat": True}), [],
     "unknown key(s) ['privat'] in recipe section 'hub'"),
    ("hub-namespace", lambda w: sections(w, hub={"push": True, "namespace": "bad id!!"}), [],
     "hub.namespace 'bad id!!' is not a valid Hub repo id"),
    ("hub-prefix", lambda w: sections(w, hub={"push": True, "namespace": "me", "prefix": "my run"}), [],
     "would create the Hub repo 'me/my run-data', which is not a valid repo id"),
    ("hub-long-prefix", lambda w: sections(w, hub={"push": True, "namespace": "me", "prefix": "p" * 90}), [],
     "which is not a valid repo id"),
    ("parallel-recipe", lambda w: {**sections(w), "parallel_submodels": "two"}, [],
     "parallel_submodels must be a positive integer, got 'two'"),
    ("gpus-recipe", lambda w: {**sections(w), "gpus_per_submodel": 0}, [], "gpus_per_submodel must be a positive"),
    ("accelerate-config", lambda w: {**sections(w), "accelerate_config": "/no/such.yaml"}, [],
     "accelerate_config /no/such.yaml does not exist"),
    ("flag-stages", lambda w: sections(w), ["--stages", "distribute,trian"], "unknown stage(s) ['trian']"),
    ("flag-only", lambda w: sections(w), ["--only", "cluster_0"], "--only trains one sub-model: use it with --stages"),
    ("flag-parallel", lambda w: sections(w), ["--parallel_submodels", 0], "--parallel_submodels must be at least 1"),
    ("flag-unknown", lambda w: sections(w), ["--stage", "train"], "unrecognized argument(s): --stage train"),
    ("needs-earlier-stage", lambda w: sections(w), ["--stages", "merge"], "needs the train stage's outputs"),
]


@pytest.mark.parametrize(("make", "flags", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_recipe(world, make, flags, expected, tmp_path, capsys):
    config = write_yaml(tmp_path / "dtm.yaml", make(world))
    run_dir = tmp_path / "run"
    assert_refused(capsys, "run", ["--config", config, "--run_dir", run_dir, *flags], expected, run_dir,
                   (config, world["data_file"], world["base"]))


def test_missing_recipe_and_run_dir_that_is_a_file(world, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert_refused(capsys, "run", ["--config", tmp_path / "nope.yaml", "--run_dir", run_dir],
                   "cannot read the recipe", run_dir)
    config = write_yaml(tmp_path / "dtm.yaml", sections(world))
    run_dir.write_text("mine")
    assert_refused(capsys, "run", ["--config", config, "--run_dir", run_dir], "is a file; choose a folder", run_dir,
                   before={str(run_dir): (4, run_dir.stat().st_mtime_ns, run_dir.stat().st_mode)})


def test_push_without_a_token_is_refused_before_any_stage(world, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-token"))
    config = write_yaml(tmp_path / "dtm.yaml", sections(world, hub={"push": True, "namespace": "me"}))
    assert_refused(capsys, "run", ["--config", config, "--run_dir", tmp_path / "run"], "needs a Hub token",
                   tmp_path / "run")


@pytest.mark.parametrize(("argv", "code", "expected"), [
    (["trian"], 2, "unknown command 'trian'; choose one of"),
    ([], 2, None),
    (["--help"], 0, None),
])
def test_the_dtm_hf_command(argv, code, expected, capsys):
    from dtm_hf.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    if expected:
        assert captured.err.strip() == f"dtm-hf: error: {expected} distribute, train, merge, run, evaluate"
    else:
        assert captured.out.startswith("usage: dtm-hf <command>")
