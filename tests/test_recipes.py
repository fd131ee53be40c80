"""Every recipe under recipes/ parses with the installed TRL and accelerate, so a renamed field fails here."""

import warnings
from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
TRAIN_RECIPES = sorted(RECIPES.rglob("dtm_*.yaml"))
PIPELINE_RECIPES = sorted(RECIPES.rglob("dtm.yaml"))
MERGE_RECIPES = sorted(RECIPES.rglob("merge_*.yaml"))
ACCELERATE_CONFIGS = sorted((RECIPES / "accelerate_configs").glob("*.yaml"))


def test_the_recipes_are_there():
    every = set(RECIPES.rglob("*.yaml"))
    assert every == set(TRAIN_RECIPES + PIPELINE_RECIPES + MERGE_RECIPES + ACCELERATE_CONFIGS)
    names = {p.relative_to(RECIPES).as_posix() for p in every}
    assert {"llama-2-7b/dtm_lora.yaml", "llama-2-7b/dtm_qlora.yaml", "tiny/dtm_lora.yaml", "llama-2-7b/dtm.yaml",
            "llama-2-7b/dtm_lora_packed.yaml", "llama-2-7b/dtm_qlora_packed.yaml", "qwen2.5-7b/dtm_lora.yaml",
            "llama-2-7b/merge_linear.yaml",
            "accelerate_configs/ddp.yaml", "accelerate_configs/fsdp.yaml", "accelerate_configs/zero3.yaml"} <= names
    assert (RECIPES / "README.md").is_file()


@pytest.mark.parametrize("recipe", TRAIN_RECIPES, ids=lambda p: p.relative_to(RECIPES).as_posix())
def test_train_recipe_parses(recipe):
    from dtm_hf.cli import parse
    from dtm_hf.train import make_parser

    # use_cpu: GPU recipes ask for bf16, which TrainingArguments refuses on a machine without a GPU otherwise
    argv = ["--config", str(recipe), "--cluster", "cluster_0", "--use_cpu", "true"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dtm_args, training_args, model_args = parse(make_parser(), argv)
    assert [str(w.message) for w in caught if issubclass(w.category, FutureWarning)] == []  # current key names
    assert dtm_args.dataset and model_args.model_name_or_path and training_args.output_dir
    assert training_args.assistant_only_loss and model_args.use_peft


@pytest.mark.parametrize("recipe", [r for r in TRAIN_RECIPES if r.parent.name != "tiny"],
                         ids=lambda p: p.relative_to(RECIPES).as_posix())
def test_gpu_recipes_take_the_fast_path(recipe, monkeypatch):
    """On a CUDA GPU (faked here), every packed recipe trains with per-document kernels; the paper's unpacked ones
    keep transformers' default attention."""
    import torch

    from dtm_hf.cli import parse
    from dtm_hf.train import make_parser
    from dtm_hf.training import attention

    dtm_args, training_args, model_args = parse(make_parser(), ["--config", str(recipe), "--use_cpu", "true"])
    monkeypatch.setattr(attention, "_on_cuda", lambda args: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *device: (9, 0))
    chosen = attention.resolve_attention(dtm_args.packed_attention, training_args, model_args)
    assert chosen == ("dtm_varlen" if training_args.packing else None)
    assert training_args.packing == ("packed" in recipe.stem or recipe.parent.name == "qwen2.5-7b")


def test_paper_recipe_matches_the_paper():
    from dtm_hf.cli import parse
    from dtm_hf.train import make_parser

    _, t, m = parse(make_parser(), ["--config", str(RECIPES / "llama-2-7b" / "dtm_lora.yaml")])
    assert (m.lora_r, m.lora_alpha, m.lora_dropout) == (16, 16, 0.05)
    assert sorted(m.lora_target_modules) == ["down_proj", "gate_proj", "up_proj"]
    assert (t.learning_rate, t.lr_scheduler_type.value, t.warmup_steps, t.num_train_epochs) == (3e-4, "cosine", 100, 1)
    assert t.per_device_train_batch_size * t.gradient_accumulation_steps * 8 == 16
    assert (t.max_length, t.fp16, t.adam_beta1, t.adam_beta2, t.adam_epsilon) == (1024, True, 0.9, 0.98, 1e-6)
    assert (t.max_grad_norm, t.weight_decay) == (0.3, 0.0)


@pytest.mark.parametrize("config", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_accelerate_config_parses(config):
    from accelerate.commands.config.config_args import ClusterConfig

    parsed = ClusterConfig.from_yaml_file(str(config))
    assert parsed.num_processes >= 1


@pytest.mark.parametrize("recipe", PIPELINE_RECIPES, ids=lambda p: p.relative_to(RECIPES).as_posix())
def test_pipeline_recipe_validates(recipe, tmp_path):
    from dtm_hf.pipeline.layout import RunLayout
    from dtm_hf.pipeline.recipe import load_recipe, parse_recipe
    from dtm_hf.pipeline.stages import STAGES

    layout = RunLayout(tmp_path / "run")
    parsed = parse_recipe(load_recipe(str(recipe), layout), layout, list(STAGES))
    assert parsed.distribute and parsed.train and parsed.merges and parsed.evaluate
    assert parsed.train[0].held_out == parsed.evaluate.held_out and parsed.evaluate.seed == parsed.train[1].seed
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("recipe", MERGE_RECIPES, ids=lambda p: p.relative_to(RECIPES).as_posix())
def test_merge_recipe_parses(recipe):
    from dtm_hf.cli import parse
    from dtm_hf.merge import make_parser

    (args,) = parse(make_parser(), ["--config", str(recipe)])
    assert args.submodels and args.output_dir and args.method == "linear"
