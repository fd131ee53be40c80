"""Any chat template trains and evaluates: the real templates of six instruct-model families (none has
`{% generation %}` markers), each on a tiny tokenizer with that family's special tokens. The label mask covers the
reply and the token that ends its turn, exactly; packing keeps it; training and evaluation score the same tokens;
and train -> merge -> evaluate runs for each through `dtm-hf run` with no template setting."""

import json
from pathlib import Path

import pytest
import yaml
from cli_helpers import dtm

from dtm_hf.demo.data import demo_texts, write_demo_jsonl

TEMPLATES = Path(__file__).parent / "data" / "chat_templates"
# family -> (template file, bos, eos, other special tokens, what the labels of reply R decode to)
FAMILIES = {
    "llama2_chat": ("llama2_chat.jinja", "<s>", "</s>", [], " {reply} </s>"),
    "llama3_instruct": ("llama3.jinja", "<|begin_of_text|>", "<|end_of_text|>",
                        ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], "{reply}<|eot_id|>"),
    "qwen2_5": ("qwen2_5.jinja", None, "<|im_end|>", ["<|im_start|>", "<|endoftext|>"], "{reply}<|im_end|>"),
    "mistral_instruct": ("mistral_instruct.jinja", "<s>", "</s>", [], "{reply}</s>"),
    "gemma": ("gemma.jinja", "<bos>", "<eos>", ["<start_of_turn>", "<end_of_turn>"], "{reply}<end_of_turn>"),
    "phi3": ("phi3.jinja", "<s>", "<|endoftext|>", ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
             "{reply}<|end|>"),
}
SYSTEM = {"role": "system", "content": "You are a careful assistant."}


def build_tokenizer(family: str):
    """A byte-level BPE tokenizer trained on the demo text, with the family's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    template, bos, eos, others, _ = FAMILIES[family]
    specials = ["<unk>", "<pad>", *[t for t in (bos, eos) if t], *others]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(demo_texts(50) + ["You are a careful assistant.", "[INST] [/INST] <<SYS>>"],
                                  trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=bos, eos_token=eos, unk_token="<unk>",
                                   pad_token="<pad>", additional_special_tokens=others,
                                   chat_template=(TEMPLATES / template).read_text())


def save_base(family: str, folder: Path) -> Path:
    from dtm_hf.demo.tiny_model import build_tiny_llama

    tokenizer = build_tokenizer(family)
    build_tiny_llama(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def turn(prompt: str, reply: str, system: bool) -> list[dict]:
    return [*([SYSTEM] if system else []), {"role": "user", "content": prompt},
            {"role": "assistant", "content": reply}]


@pytest.mark.parametrize("system", [False, True], ids=["no_system", "system"])
@pytest.mark.parametrize("family", FAMILIES)
def test_labels_are_the_reply_and_its_end_of_turn(family, system):
    from dtm_hf.training.tokenize import IGNORE, encode_turn

    tokenizer = build_tokenizer(family)
    reply = "The word 'apple' reversed is 'elppa'."
    row = encode_turn(tokenizer, turn("Reverse the word 'apple'.", reply, system), max_length=512)
    labelled = [i for i, label in enumerate(row.labels) if label != IGNORE]
    assert labelled == list(range(labelled[0], len(row.input_ids)))  # one span, at the end: nothing after it
    assert tokenizer.decode([row.input_ids[i] for i in labelled]) == FAMILIES[family][4].format(reply=reply)
    prompt = tokenizer.decode(row.input_ids[: labelled[0]])
    assert "Reverse the word" in prompt and reply not in prompt
    if system:  # kept, or folded into the user message by templates that refuse a system role
        assert "You are a careful assistant." in prompt


@pytest.mark.parametrize("family", FAMILIES)
def test_long_rows_are_skipped_or_cut(family):
    from dtm_hf.training.tokenize import SKIPPED, TRUNCATED, encode_turn

    tokenizer = build_tokenizer(family)
    long_prompt = turn("Sort these numbers: " + ", ".join(map(str, range(400))) + ".", "In order.", False)
    assert encode_turn(tokenizer, long_prompt, max_length=128).outcome == SKIPPED
    long_reply = turn("Sort these numbers: 3, 1.", "In ascending order: " + ", ".join(map(str, range(400))), False)
    cut = encode_turn(tokenizer, long_reply, max_length=128)
    assert cut.outcome == TRUNCATED and len(cut.input_ids) == len(cut.labels) == 128


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("templates")
    rows = root / "demo.jsonl"
    write_demo_jsonl(rows, n_per_skill=6)
    assert dtm("distribute", "--dataset", rows, "--n_clusters", 2, "--output_dir", root / "data") == 0
    return root / "data"


@pytest.mark.parametrize("family", ["qwen2_5", "gemma"])
def test_packed_batches_keep_the_labels_and_evaluation_scores_the_same_tokens(family, data, tmp_path):
    from dtm_hf.cli import parse
    from dtm_hf.evaluation.loss import cluster_loss, load_model
    from dtm_hf.train import make_parser
    from dtm_hf.training.chat_template import load_tokenizer
    from dtm_hf.training.plan import plan
    from dtm_hf.training.tokenize import IGNORE, encode_turn
    from dtm_hf.training.trainer import build_trainer

    base = save_base(family, tmp_path / "base")
    argv = ["--dataset", str(data), "--cluster", "cluster_0", "--model_name_or_path", str(base), "--use_cpu", "true",
            "--bf16", "false", "--packing", "true", "--max_length", "256", "--per_device_train_batch_size", "4",
            "--output_dir", str(tmp_path / "out"), "--report_to", "none"]
    dtm_args, training_args, model_args = parse(make_parser(), argv)
    tokenizer, origin = load_tokenizer(dtm_args, model_args, training_args, str(base))
    assert origin == "the tokenizer"
    (run,) = plan(dtm_args, training_args)
    rows = run.data["messages"]
    expected = [encode_turn(tokenizer, m, 256) for m in rows]
    trainer = build_trainer(run, tokenizer, str(base), training_args, model_args)
    packed = [batch["labels"] for batch in trainer.get_train_dataloader()]
    assert sum(int((labels != IGNORE).sum()) for labels in packed) == sum(
        sum(label != IGNORE for label in row.labels) for row in expected)
    model, eval_tokenizer = load_model(str(base), "float32")
    scored = cluster_loss(model, eval_tokenizer, [{"messages": m} for m in rows], 256, batch_size=4)
    # Evaluation predicts every labelled token but the first of a sequence, which is never labelled.
    assert scored.tokens == sum(sum(label != IGNORE for label in row.labels[1:]) for row in expected)
    assert scored.rows == len(rows)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_train_merge_evaluate_with_the_base_template(family, data, tmp_path):
    base = save_base(family, tmp_path / "base")
    recipe = {
        "train": {"model_name_or_path": str(base), "lora_r": 4, "lora_alpha": 8, "max_steps": 2, "use_cpu": True,
                  "bf16": False, "dtype": "float32", "max_length": 128, "packing": True,
                  "per_device_train_batch_size": 4, "activation_checkpointing": False, "save_strategy": "no",
                  "report_to": "none", "lora_target_modules": ["gate_proj", "up_proj", "down_proj"]},
        "merge": [{"method": "linear", "output_dir": "linear"}],
        "evaluate": {"held_out": 0.3, "max_length": 128},
    }
    run_dir = tmp_path / "run"
    (run_dir / "data").parent.mkdir(parents=True)
    Path(run_dir / "data").symlink_to(data)
    (tmp_path / "dtm.yaml").write_text(yaml.safe_dump(recipe))
    assert dtm("run", "--config", tmp_path / "dtm.yaml", "--run_dir", run_dir, "--stages", "train,merge,evaluate") == 0
    marker = json.loads((run_dir / "submodels" / "cluster_0" / "dtm_train.json").read_text())
    assert marker["chat_template"] == "the tokenizer"
    merged_template = (run_dir / "merged" / "linear" / "chat_template.jinja").read_text()
    assert merged_template == (TEMPLATES / FAMILIES[family][0]).read_text()
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert set(results["loss"]) == {"base", "cluster_0", "cluster_1", "merged_linear"}
    assert all(loss["overall"] > 0 for loss in results["loss"].values())
