"""Packed attention paths: on every path that runs on CPU, a packed document gets the logits and the loss it has
alone; the choice of path, its checks, and torch's varlen signatures across versions."""

import copy
import traceback
from functools import partial

import pytest
from cli_helpers import dtm, one_error_line

from dtm_hf.demo.data import demo_rows, demo_texts, write_demo_jsonl
from dtm_hf.demo.tiny_model import save_tiny_llama

RECIPE = "recipes/tiny/dtm_lora.yaml"
SYNCING = {"item", "__bool__", "__int__", "__float__", "tolist", "nonzero", "cpu", "numpy", "masked_select"}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny Llama with grouped-query attention (4 heads, 2 key/value heads)."""
    return save_tiny_llama(tmp_path_factory.mktemp("attention") / "base", demo_texts(5), num_key_value_heads=2)


def parse_args(base, tmp_path, *argv):
    from pathlib import Path

    from dtm_hf.cli import parse
    from dtm_hf.train import make_parser

    recipe = Path(__file__).resolve().parent.parent / RECIPE
    return parse(make_parser(), ["--config", str(recipe), "--model_name_or_path", str(base), "--dataset", "unused",
                                 "--output_dir", str(tmp_path / "out"), "--max_length", "128", *map(str, argv)])


def packed_trainer(base, tmp_path, implementation):
    """A trainer on the tiny recipe (packed, 4 x 128 per step) whose model runs `implementation`."""
    from datasets import Dataset

    from dtm_hf.training.attention import register
    from dtm_hf.training.chat_template import load_tokenizer
    from dtm_hf.training.plan import Run
    from dtm_hf.training.trainer import build_trainer

    dtm_args, training_args, model_args = parse_args(base, tmp_path)
    register()
    model_args = copy.copy(model_args)
    model_args.attn_implementation = implementation
    tokenizer, _ = load_tokenizer(dtm_args, model_args, training_args, str(base))
    data = Dataset.from_list([{"messages": r["messages"]} for r in demo_rows(6)])
    trainer = build_trainer(Run(["all"], tmp_path / "out", data, len(data), 0, "train"), tokenizer, str(base),
                            training_args, model_args)
    assert trainer.model.config._attn_implementation == implementation
    return trainer


def doc_loss(logits, labels):
    """(summed cross-entropy, tokens) of next-token predictions over labels that are not -100."""
    import torch

    targets = labels[1:]
    keep = targets != -100
    return torch.nn.functional.cross_entropy(logits[:-1][keep], targets[keep], reduction="sum"), int(keep.sum())


@pytest.mark.parametrize("implementation", ["sdpa", "dtm_varlen", "dtm_flex"])
def test_packed_documents_get_their_logits_and_loss_alone(base, tmp_path, implementation, monkeypatch):
    """sdpa: today's path (a dense document mask); dtm_varlen on CPU: one SDPA call per document; dtm_flex on CPU:
    flex_attention unfused under the document BlockMask. The packed batch is called as SFTTrainer calls it, and its
    loss is SFTTrainer's own."""
    import torch

    from dtm_hf.training import attention

    kernel = {"dtm_varlen": "_per_document", "dtm_flex": "_eager_flex"}.get(implementation)
    calls = []
    if kernel:  # the per-document kernel runs, not the sdpa fallback
        original = getattr(attention, kernel)
        monkeypatch.setattr(attention, kernel, lambda *a, **k: calls.append(kernel) or original(*a, **k))
    trainer = packed_trainer(base, tmp_path, implementation)
    batch = next(iter(trainer.get_train_dataloader()))
    ids, positions, bounds = batch["input_ids"], batch["position_ids"], batch["cu_seq_lens_q"].tolist()
    assert ids.shape[0] == 1 and len(bounds) > 3 and "attention_mask" not in batch
    net = trainer.model.eval()
    with torch.no_grad():
        packed = net(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits[0]
        assert len(calls) == (2 if kernel else 0)  # one per layer
        packed_loss = trainer.compute_loss(net, dict(batch))
        total, tokens = torch.zeros(()), 0
        for start, end in zip(bounds, bounds[1:], strict=False):
            alone = net(input_ids=ids[:, start:end], use_cache=False).logits[0]
            torch.testing.assert_close(packed[start:end], alone, atol=1e-5, rtol=1e-4)
            loss, count = doc_loss(alone, batch["labels"][0, start:end])
            total, tokens = total + loss, tokens + count
        assert tokens > 0
        torch.testing.assert_close(packed_loss, total / tokens, atol=1e-5, rtol=1e-5)
        if kernel:  # without TRL's boundaries, and with a cache: the documents are found from the positions
            torch.testing.assert_close(net(input_ids=ids, position_ids=positions).logits[0], packed, atol=1e-5,
                                       rtol=1e-4)


class SyncCounter:
    """Counts the calls that make a CUDA host wait for the device (`.item()`, `bool(tensor)`, `nonzero`, ...), by
    where they come from; calls made inside `skip` (a function name) are left out."""

    def __init__(self, skip=None):
        from torch.overrides import TorchFunctionMode

        counter = self

        class Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                if getattr(func, "__name__", "") in SYNCING:
                    frames = traceback.extract_stack()
                    if not any(f.name == skip for f in frames):
                        counter.calls.append(f"{frames[-2].filename.rpartition('/')[2]}:{frames[-2].lineno}")
                return func(*args, **(kwargs or {}))

        self.calls, self.mode = [], Mode()

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)


@pytest.mark.parametrize("implementation", ["sdpa", "dtm_varlen", "dtm_flex"])
def test_packed_forward_host_syncs(base, tmp_path, implementation):
    """sdpa detects packed position ids with a host sync at every forward; the dtm paths take TRL's boundaries
    and sync nowhere outside the attention kernel (on CPU, varlen's per-document loop reads the boundaries)."""
    import torch

    trainer = packed_trainer(base, tmp_path, implementation)
    batches = iter(trainer.get_train_dataloader())
    net = trainer.model.eval()
    with torch.no_grad():
        net(**{k: v for k, v in next(batches).items() if k != "labels"}, use_cache=False)  # compiles, warms up
        with SyncCounter(skip="_per_document") as counter:
            net(**{k: v for k, v in next(batches).items() if k != "labels"}, use_cache=False)
    if implementation == "sdpa":
        assert [c.split(":")[0] for c in counter.calls] == ["masking_utils.py"]
    else:
        assert counter.calls == []


def fake_varlen(signature: str):
    """torch's varlen_attn as each torch version declares it, computing with the per-document reference and
    checking what it was asked for."""
    from dtm_hf.training import attention

    seen = {}

    def compute(q, k, v, cu, scale, causal):
        assert causal and cu.dtype.is_floating_point is False
        seen.update(scale=scale, kv_heads=k.shape[1])
        return attention._per_document(q, k, v, cu, q.shape[-1] ** -0.5 if scale is None else scale)

    if signature == "2.10":
        def varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
            assert query.shape[1] == key.shape[1]  # no grouped-query attention in this version
            return compute(query, key, value, cu_seq_q, None, is_causal)
    elif signature == "2.11":
        def varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                        window_size=(-1, -1)):
            assert query.shape[1] == key.shape[1]
            return compute(query, key, value, cu_seq_q, scale, window_size == (-1, 0))
    else:
        def varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                        window_size=(-1, -1), enable_gqa=False, seqused_k=None, block_table=None, num_splits=None):
            assert enable_gqa == (query.shape[1] != key.shape[1])
            return compute(query, key, value, cu_seq_q, scale, window_size == (-1, 0))
    return varlen_attn, seen


@pytest.mark.parametrize("signature", ["2.10", "2.11", "2.13"])
def test_varlen_call_across_torch_versions(signature, monkeypatch):
    """The CUDA call adapts to the signature: causal flag, scale (pre-scaled queries where there is none) and
    grouped-query heads (repeated where the kernel cannot group them); its result is the reference's."""
    import inspect

    import torch

    from dtm_hf.training import attention

    varlen_attn, seen = fake_varlen(signature)
    monkeypatch.setattr(attention, "_torch_varlen",
                        lambda: (varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)))
    torch.manual_seed(0)
    q, k, v = torch.randn(11, 4, 16), torch.randn(11, 2, 16), torch.randn(11, 2, 16)
    bounds = torch.tensor([0, 3, 7, 11], dtype=torch.int32)
    scaling = 0.3  # not 1/sqrt(head_dim), so a dropped scale shows
    out = attention._varlen_cuda(q.bfloat16(), k.bfloat16(), v.bfloat16(), bounds, 4, scaling)
    expected = attention._per_document(q, k, v, bounds, scaling)
    torch.testing.assert_close(out.float(), expected, atol=3e-2, rtol=3e-2)
    assert seen["kv_heads"] == (2 if signature == "2.13" else 4)
    assert seen["scale"] == (None if signature == "2.10" else scaling)


def test_choice_of_path(base, tmp_path, monkeypatch):
    import torch

    from dtm_hf.errors import DtmError
    from dtm_hf.training import attention
    from dtm_hf.training.attention import resolve_attention

    _, packed, model = parse_args(base, tmp_path)
    _, unpacked, _ = parse_args(base, tmp_path, "--packing", "false")
    assert resolve_attention("auto", packed, model) == "sdpa"  # no CUDA: today's path
    assert resolve_attention("varlen", packed, model) == "dtm_varlen"
    assert resolve_attention("sdpa", packed, model) == "sdpa"
    assert resolve_attention("auto", unpacked, model) is None  # transformers' default for padded batches
    explicit = copy.copy(model)
    explicit.attn_implementation = "eager"
    assert resolve_attention("auto", packed, explicit) == "eager"
    for choice, args, model_args, message in [
        ("varlen", unpacked, model, "is for packed batches"),
        ("flex", packed, model, "no backward pass on CPU"),
        ("flash", packed, model, "flash-attn runs on CUDA only"),
        ("varlen", packed, explicit, "not both"),
    ]:
        with pytest.raises(DtmError, match=message):
            resolve_attention(choice, args, model_args)
    # on a CUDA GPU (faked): varlen needs bf16/fp16 and compute capability 8.0; flash-attn is not installed here
    _, bf16, _ = parse_args(base, tmp_path, "--bf16", "true")
    monkeypatch.setattr(attention, "_on_cuda", lambda args: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *device: (9, 0))
    assert resolve_attention("auto", bf16, model) == "dtm_varlen"
    assert resolve_attention("auto", packed, model) == "dtm_flex"  # float32
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *device: (7, 5))
    assert resolve_attention("auto", bf16, model) == "dtm_flex"
    with pytest.raises(DtmError, match="compute capability 8.0"):
        resolve_attention("varlen", bf16, model)


def test_kernel_checks(base, tmp_path):
    from dtm_hf.errors import DtmError
    from dtm_hf.training.kernels import check_kernels

    _, training, model = parse_args(base, tmp_path)
    check_kernels(training, model)
    _, liger, _ = parse_args(base, tmp_path, "--use_liger_kernel", "true")
    with pytest.raises(DtmError, match="need a CUDA GPU"):
        check_kernels(liger, model)
    _, _, lm_head = parse_args(base, tmp_path, "--lora_target_modules", "q_proj", "lm_head")
    with pytest.raises(DtmError, match="lm_head"):
        check_kernels(training, lm_head)


def test_train_with_varlen_and_bad_choices(base, tmp_path, capsys):
    """`dtm-hf train --packed_attention varlen` trains on CPU; a wrong choice is one error line before any work."""
    import json

    train = partial(dtm, "train")
    data = tmp_path / "data"
    rows = write_demo_jsonl(tmp_path / "demo.jsonl", n_per_skill=3)
    assert dtm("distribute", "--dataset", rows, "--n_clusters", 2, "--method", "random", "--output_dir", data) == 0
    out = tmp_path / "out"
    common = ["--config", RECIPE, "--model_name_or_path", base, "--dataset", data, "--max_length", 128,
              "--output_dir", out, "--cluster", "cluster_0", "--max_steps", 2]
    capsys.readouterr()
    assert train(*common, "--packed_attention", "varlen") == 0
    assert "Packed attention: varlen" in capsys.readouterr().out
    marker = json.loads((out / "cluster_0" / "dtm_train.json").read_text())
    assert marker["global_step"] == 2 and marker["final_loss"] > 0
    for argv, message in [(["--packed_attention", "fast"], "invalid choice: 'fast'"),
                          (["--packed_attention", "flash"], "flash-attn runs on CUDA only"),
                          (["--use_liger_kernel", "true"], "need a CUDA GPU")]:
        assert train(*common, "--overwrite", *argv) == 2
        assert message in one_error_line(capsys, "train")
    assert (out / "cluster_0" / "dtm_train.json").is_file()
