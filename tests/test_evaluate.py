import json

import pytest
import torch
from cli_helpers import dtm, one_error_line

from dtm_hf.data.held_out import is_held_out
from dtm_hf.demo.data import demo_texts, write_demo_jsonl
from dtm_hf.demo.tiny_model import save_tiny_llama


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    texts = demo_texts(50)
    base = save_tiny_llama(root / "base", texts, seed=0)
    other = save_tiny_llama(root / "other", texts, seed=1)
    data = write_demo_jsonl(root / "demo.jsonl", n_per_skill=20)
    assert dtm("distribute", "--dataset", data, "--n_clusters", 2, "--output_dir", root / "data") == 0
    return root, base, other


def encode(tokenizer, messages, **kwargs):
    text = tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def independent_loss(model_dir, rows):
    """Mean loss over the reply and EOS: the tokens after the generation prompt, up to and including EOS."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    total, count = 0.0, 0
    for row in rows:
        prompt = encode(tokenizer, row["messages"][:-1], add_generation_prompt=True)
        full = encode(tokenizer, row["messages"])
        end = full.index(tokenizer.eos_token_id, len(prompt)) + 1
        labels = [-100] * len(prompt) + full[len(prompt):end] + [-100] * (len(full) - end)
        with torch.no_grad():
            out = model(input_ids=torch.tensor([full]), labels=torch.tensor([labels]))
        n = end - len(prompt)
        total += out.loss.item() * n
        count += n
    return total / count


def test_losses_match_an_independent_computation(setup, tmp_path):
    from datasets import load_dataset

    root, base, other = setup
    out = tmp_path / "eval"
    assert dtm("evaluate", "--models", f"base={base}", f"other={other}", "--dataset", root / "data",
               "--held_out", 0.25, "--output_dir", out) == 0
    results = json.loads((out / "results.json").read_text())
    cluster_1 = load_dataset(str(root / "data"), "cluster_1", split="train").to_list()
    held = [r for r in cluster_1 if is_held_out(r["row"], 0.25, 42)]
    assert results["held_out_rows"]["cluster_1"] == [r["row"] for r in held]
    assert results["loss"]["other"]["cluster_1"] == pytest.approx(independent_loss(other, held), rel=1e-5)
    assert results["loss"]["base"]["cluster_1"] != pytest.approx(results["loss"]["other"]["cluster_1"], rel=1e-4)

    table = (out / "results.md").read_text()
    assert "| model | cluster_0 | cluster_1 | overall |" in table
    for column in ("cluster_0", "cluster_1", "overall"):
        best = min(results["loss"], key=lambda m: results["loss"][m][column])
        assert f"**{results['loss'][best][column]:.4f}**" in table
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"


def test_long_rows_are_counted_not_fatal(setup, tmp_path):
    """Prompts that fill --max_length are skipped and replies that do not fit are cut, per cluster, with the rows
    behind every cell in results.md."""
    from datasets import load_dataset
    from transformers import AutoTokenizer

    from dtm_hf.training.tokenize import SKIPPED, TRUNCATED, encode_turn

    root, base, _ = setup
    max_length = 14
    out = tmp_path / "eval"
    assert dtm("evaluate", "--models", f"base={base}", "--dataset", root / "data", "--held_out", 0.5,
               "--max_length", max_length, "--output_dir", out) == 0
    results = json.loads((out / "results.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(base)
    for cluster in ("cluster_0", "cluster_1"):
        held = [r for r in load_dataset(str(root / "data"), cluster, split="train") if is_held_out(r["row"], 0.5, 42)]
        outcomes = [encode_turn(tokenizer, r["messages"], max_length).outcome for r in held]
        expected = {o: outcomes.count(o) for o in (SKIPPED, TRUNCATED) if outcomes.count(o)}
        assert expected and results["long_rows"]["base"].get(cluster, {}) == expected
        assert results["rows"]["base"][cluster] == len(held) - outcomes.count(SKIPPED)
    table = (out / "results.md").read_text()
    assert f"({results['rows']['base']['overall']})" in table
    for cluster, found in results["long_rows"]["base"].items():
        line = next(line for line in table.splitlines() if line.startswith("- base: "))
        assert all(f"{n} {what.replace('_', ' ')}" in line for what, n in found.items()) and cluster in line


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--models", "justapath"], "--models takes NAME=PATH_OR_ID pairs, got 'justapath'"),
        (["--models", "a=x", "a=y"], "--models names 'a' twice"),
        (["--models", "a=BASE", "--held_out", "0"], "--held_out must be in (0, 1), got 0.0"),
        (["--models", "a=/no/such/model"], "the model /no/such/model does not exist"),
    ],
)
def test_bad_input(setup, tmp_path, capsys, argv, expected):
    root, base, _ = setup
    argv = [a.replace("BASE", str(base)) for a in argv]
    out = tmp_path / "eval"
    assert dtm("evaluate", "--dataset", root / "data", "--output_dir", out, *argv) == 2
    assert expected in one_error_line(capsys, "evaluate")
    assert not out.exists()


def test_dataset_that_is_not_a_distribute_output(setup, tmp_path, capsys):
    _, base, _ = setup
    out = tmp_path / "eval"
    assert dtm("evaluate", "--models", f"base={base}", "--dataset", base, "--output_dir", out) == 2
    assert "is not a `dtm-hf distribute` output" in one_error_line(capsys, "evaluate")
    assert not out.exists()


def test_lm_eval_task_over_a_local_file(setup, tmp_path):
    pytest.importorskip("lm_eval")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, base, _ = setup
    questions = [{"question": f"What is {a} plus {b}?", "choices": [str(a + b), f"{a} {b}"], "answer": 0}
                 for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (9, 9)]]
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(q) + "\n" for q in questions))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_qa.yaml").write_text(f"""task: tiny_qa
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
""")
    out = tmp_path / "eval"
    assert dtm("evaluate", "--models", f"base={base}", "--dataset", root / "data", "--held_out", 0.25,
               "--lm_eval_tasks", "tiny_qa", "--lm_eval_include_path", tasks, "--output_dir", out) == 0
    results = json.loads((out / "results.json").read_text())

    model, tokenizer = AutoModelForCausalLM.from_pretrained(base).eval(), AutoTokenizer.from_pretrained(base)

    def loglikelihood(context, continuation):
        context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([whole])).logits[0].log_softmax(-1)
        return sum(logits[i - 1, whole[i]].item() for i in range(len(context_ids), len(whole)))

    correct = [max(range(2), key=lambda c: loglikelihood(q["question"], " " + q["choices"][c])) == q["answer"]
               for q in questions]
    assert results["lm_eval"]["base"] == {"tiny_qa/acc": pytest.approx(sum(correct) / len(correct))}
    assert "tiny_qa/acc" in (out / "results.md").read_text()
