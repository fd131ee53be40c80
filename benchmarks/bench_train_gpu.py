"""LoRA training on a GPU through dtm-hf's own training path: tokens/s, MFU and peak memory per attention path,
today's path side by side, each path first checked to keep packed documents apart.

    python benchmarks/bench_train_gpu.py --out OUT --workdir /tmp/bench     # every variant; OUT/results.{json,md}
    python benchmarks/bench_train_gpu.py --out OUT --variants 953m-sdpa 953m-varlen
    python benchmarks/bench_train_gpu.py --out OUT --smoke                  # tiny shapes on CPU: checks the script

Bases are random-init Llamas built once in the workdir (bf16 on the GPU), with a BPE tokenizer trained on the demo
rows; the data are dtm_hf.demo rows. Every variant trains through `dtm_hf.training.trainer.build_trainer` on the tiny
recipe with GPU overrides: TRL's bfd packing (padding-free), LoRA r 16 on all seven projections, no dropout, no
activation checkpointing. Shapes:
  953m  hidden 2048, intermediate 5632, 16 layers, 16 heads, vocab 32000; 8 x 2048 packed tokens per step
  7b    the Llama-2-7B shape: hidden 4096, intermediate 11008, 32 layers, 32 heads; 4 x 2048 tokens per step
Variants (`--packed_attention`, as `dtm-hf train` takes it; auto is what a recipe gets on this GPU):
  953m-sdpa (today's path), 953m-varlen, 7b-auto, 7b-qlora-auto (QLoRA: NF4 base, no double quantization),
  7b-sdpa, 953m-flex, 953m-flash, 953m-varlen-liger, 7b-auto-liger, 7b-qlora-sdpa
in that order, the goals' figures first; results.{json,md} are rewritten after each variant.
A variant that cannot run here (flash-attn not installed, Liger or bitsandbytes missing, ...) is listed as skipped
with dtm-hf's one-line reason. Each runs in a subprocess of its own (peak memory, compile caches and Liger's global
patches stay apart), and first checks, on its own path as training runs it (Liger's kernels applied), that the
first documents of a packed batch get the logits they have alone: the largest difference must stay under a tenth
of the difference that attention across the same documents makes. A variant that fails the check stops the run
(exit status 3).

Timing: steps after the warm-up, read at step ends after torch.cuda.synchronize(); tokens are those the model's
forward receives. MFU = 4 N tokens/s / peak, N the base's parameters less the input embedding: forward 2N and
backward through the activations 2N (the frozen base gets no weight gradients); 6N as for full fine-tuning is
shown too; attention's sequence-length term is in neither. Peak TFLOPS from the device name (H100/H200 989, A100
312) unless --peak_tflops. Host syncs: the calls that make the host wait for the device (`.item()`, `bool()` of a
tensor, `nonzero`, ...) in one optimizer step after the first, counted in Python.

On a GPU host without internet (torch with CUDA, accelerate, bitsandbytes for QLoRA, pyarrow and the other
datasets dependencies present), carry these wheels, about 17 MB, downloaded on a machine with PyPI:
    pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \\
        -d .whl transformers==5.24.0 peft==0.21.2 trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \\
        liger-kernel==0.8.5
(`--python-version` as the host's Python; `.whl/` is git-ignored, so the device runner needs it carried), then:
    pip install --no-index --no-deps --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site:. python benchmarks/bench_train_gpu.py --out "$OUT" --workdir /tmp/bench
All ten variants take about 9 minutes on one H200 (estimate: about 20 s of start-up and loading per variant, 13.5 GB
for the 7B-shape base written once, Liger and flex compile time in the warm-up).
"""

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "tiny" / "dtm_lora.yaml"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SHAPES = {  # model, tokens per step (batch x max_length), steps (warm-up included) and warm-up steps
    "953m": dict(hidden=2048, intermediate=5632, layers=16, heads=16, kv_heads=16, vocab=32000, batch=8,
                 max_length=2048, steps=14, warmup=4),
    "7b": dict(hidden=4096, intermediate=11008, layers=32, heads=32, kv_heads=32, vocab=32000, batch=4,
               max_length=2048, steps=10, warmup=3),
}
SMOKE = dict(hidden=64, intermediate=192, layers=2, heads=4, kv_heads=2, vocab=0, batch=2, max_length=128, steps=4,
             warmup=1)
QLORA = ["--load_in_4bit", "true", "--bnb_4bit_quant_type", "nf4", "--use_bnb_nested_quant", "false"]
LIGER = ["--use_liger_kernel", "true"]
VARIANTS = {  # name: (shape, packed_attention, extra flags), the goals' figures first
    "953m-sdpa": ("953m", "sdpa", []),
    "953m-varlen": ("953m", "varlen", []),
    "7b-auto": ("7b", "auto", []),
    "7b-qlora-auto": ("7b", "auto", QLORA),
    "7b-sdpa": ("7b", "sdpa", []),
    "953m-flex": ("953m", "flex", []),
    "953m-flash": ("953m", "flash", []),
    "953m-varlen-liger": ("953m", "varlen", LIGER),
    "7b-auto-liger": ("7b", "auto", LIGER),
    "7b-qlora-sdpa": ("7b", "sdpa", QLORA),
}
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0}


def shape_of(name: str, args) -> dict:
    return dict(SMOKE) if args.smoke else dict(SHAPES[VARIANTS[name][0]])


def build_base(out: Path, shape: dict, cuda: bool) -> Path:
    """A random-init Llama of `shape` and its tokenizer, saved once under `out`; returns the folder."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from dtm_hf.demo.data import demo_texts
    from dtm_hf.demo.tiny_model import build_tokenizer

    folder = out / "base-h{hidden}-i{intermediate}-l{layers}-kv{kv_heads}-v{vocab}".format(**shape)
    if (folder / "config.json").is_file():
        return folder
    tokenizer = build_tokenizer(demo_texts())
    config = LlamaConfig(
        vocab_size=-(-max(shape["vocab"], len(tokenizer)) // 32) * 32, hidden_size=shape["hidden"],
        intermediate_size=shape["intermediate"], num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"], num_key_value_heads=shape["kv_heads"],
        max_position_embeddings=shape["max_length"], bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("cuda" if cuda else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if cuda else torch.float32)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    if cuda:
        torch.cuda.empty_cache()
    return folder


def base_params(folder: Path) -> tuple[int, int]:
    """(all parameters, parameters less the input embedding) of the base, counted on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    total = sum(p.numel() for p in model.parameters())
    return total, total - model.get_input_embeddings().weight.numel()


def make_data(tokenizer, shape: dict):
    """Demo rows enough for every step's full packed batch (10% spare)."""
    from datasets import Dataset

    from dtm_hf.demo.data import demo_rows

    sample = [r["messages"] for r in demo_rows(50)]
    texts = [tokenizer.apply_chat_template(m, tokenize=False) for m in sample]
    per_row = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]) / len(sample)
    rows = math.ceil(1.1 * shape["steps"] * shape["batch"] * shape["max_length"] / per_row)
    return Dataset.from_list([{"messages": r["messages"]} for r in demo_rows(-(-rows // 4))])


def check_documents(trainer, cuda: bool, max_tokens: int = 1024) -> dict:
    """On the trainer's own path: the first documents of a packed batch, called as SFTTrainer calls them, against
    each document alone, and against one causal sequence over them (attention across documents)."""
    import contextlib

    import torch

    batch = next(iter(trainer.get_train_dataloader()))
    bounds = [b for b in batch["cu_seq_lens_q"].tolist() if b <= max_tokens]
    bounds = bounds if len(bounds) > 3 else batch["cu_seq_lens_q"].tolist()[:4]
    end, device = bounds[-1], trainer.model.device
    ids, positions = batch["input_ids"][:, :end].to(device), batch["position_ids"][:, :end].to(device)
    cu = torch.tensor(bounds, dtype=torch.int32, device=device)
    longest = max(b - a for a, b in zip(bounds, bounds[1:], strict=False))
    net, errors, leaks = trainer.model.eval(), [], []
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    with torch.no_grad(), autocast:
        packed = net(input_ids=ids, position_ids=positions, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest,
                     max_length_k=longest, use_cache=False).logits[0].float()
        across = net(input_ids=ids, use_cache=False).logits[0].float()
        for start, stop in zip(bounds, bounds[1:], strict=False):
            alone = net(input_ids=ids[:, start:stop], use_cache=False).logits[0].float()
            errors.append(float((packed[start:stop] - alone).abs().max()))
            if start:
                leaks.append(float((across[start:stop] - alone).abs().max()))
    net.train()
    return {"documents": len(bounds) - 1, "max_error": max(errors), "min_leak": min(leaks),
            "ok": max(errors) <= 0.1 * min(leaks)}


def sync_counter(cuda: bool):
    """A context counting calls that make the host wait for the device: on CUDA those on CUDA tensors, on CPU
    (smoke runs) all of them, as if the tensors were on a device."""
    import torch
    from torch.overrides import TorchFunctionMode

    names = {"item", "__bool__", "__int__", "__float__", "tolist", "nonzero", "cpu", "numpy", "masked_select"}

    class Count(TorchFunctionMode):
        calls = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", "")
            boolean_index = (name in ("__getitem__", "__setitem__") and len(args) > 1
                             and isinstance(args[1], torch.Tensor) and args[1].dtype == torch.bool)
            on_device = not cuda or any(isinstance(a, torch.Tensor) and a.is_cuda for a in args)
            self.calls += (name in names or boolean_index) and on_device
            return func(*args, **(kwargs or {}))

    return Count()


class WrongAttention(Exception):
    """Packed documents do not get the logits they have alone."""


def step_timer(warmup: int, cuda: bool, check):
    """A TrainerCallback that runs `check` when training begins (after Liger's kernels are applied, on the path
    training runs; WrongAttention if it fails), times the steps after `warmup` and counts host syncs in step 2;
    and a forward pre-hook counting the tokens the model receives."""
    import torch
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        tokens, start, end, counter, syncs, checked = 0, None, None, None, None, None

        def count(self, module, args_, kwargs):
            self.tokens += kwargs["input_ids"].numel()  # padding-free: every token is real

        def on_train_begin(self, train_args, state, control, **kwargs):
            self.checked = check()
            if not self.checked["ok"]:
                raise WrongAttention
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()

        def on_step_begin(self, train_args, state, control, **kwargs):
            if state.global_step == 1:
                self.counter = sync_counter(cuda)
                self.counter.__enter__()

        def on_step_end(self, train_args, state, control, **kwargs):
            if self.counter is not None:
                self.counter.__exit__(None, None, None)
                self.syncs, self.counter = self.counter.calls, None
            if cuda:
                torch.cuda.synchronize()
            mark = (time.perf_counter(), self.tokens, state.global_step)
            if state.global_step == warmup:
                self.start = mark
            self.end = mark

    return StepTimer()


def run_variant(name: str, args) -> dict:
    """One variant, in this process: {'status': 'ok' | 'skipped' | 'wrong', ...}."""
    import copy

    import torch

    from dtm_hf.cli import parse
    from dtm_hf.errors import DtmError
    from dtm_hf.train import make_parser
    from dtm_hf.training.attention import resolve_attention
    from dtm_hf.training.chat_template import load_tokenizer
    from dtm_hf.training.kernels import check_kernels
    from dtm_hf.training.plan import Run, check_quantization
    from dtm_hf.training.trainer import build_trainer

    cuda, shape = torch.cuda.is_available(), shape_of(name, args)
    _, choice, extra = VARIANTS[name]
    base = build_base(args.workdir, shape, cuda)
    argv = ["--config", str(RECIPE), "--model_name_or_path", str(base), "--dataset", "unused",
            "--output_dir", str(args.workdir / "runs" / name), "--save_strategy", "no", "--logging_steps", "1000",
            "--max_length", str(shape["max_length"]), "--packing", "true", "--max_steps", str(shape["steps"]),
            "--per_device_train_batch_size", str(shape["batch"]), "--gradient_accumulation_steps", "1",
            "--activation_checkpointing", "false", "--lora_dropout", "0.0", "--lora_target_modules", *LORA_TARGETS,
            "--use_cpu", str(not cuda).lower(), "--bf16", str(cuda).lower(),
            "--dtype", "bfloat16" if cuda else "float32", "--packed_attention", choice, *extra]
    dtm_args, training_args, model_args = parse(make_parser(), argv)
    result = {"variant": name, "packed_attention": choice, "tokens_per_step": shape["batch"] * shape["max_length"]}
    try:
        check_quantization(model_args, training_args)
        check_kernels(training_args, model_args)
        model_args = copy.copy(model_args)
        model_args.attn_implementation = resolve_attention(choice, training_args, model_args)
    except DtmError as err:
        return {**result, "status": "skipped", "reason": str(err)}
    tokenizer, _ = load_tokenizer(dtm_args, model_args, training_args, str(base))
    data = make_data(tokenizer, shape)
    trainer = build_trainer(Run(["all"], args.workdir / "runs" / name, data, len(data), 0, "train"), tokenizer,
                            str(base), training_args, model_args)
    result["attn_implementation"] = model_args.attn_implementation
    timer = step_timer(shape["warmup"], cuda, lambda: check_documents(trainer, cuda))
    trainer.add_callback(timer)
    trainer.model.register_forward_pre_hook(timer.count, with_kwargs=True)
    try:
        trainer.train()
    except WrongAttention:
        return {**result, "check": timer.checked, "status": "wrong"}
    result["check"] = timer.checked
    (t0, tok0, step0), (t1, tok1, step1) = timer.start, timer.end
    tokens_per_s = (tok1 - tok0) / (t1 - t0)
    total, matmul = base_params(base)
    peak = args.peak_tflops * 1e12
    return {**result, "status": "ok", "timed_steps": step1 - step0, "timed_tokens": tok1 - tok0,
            "seconds": t1 - t0, "tokens_per_s": tokens_per_s, "mfu_4n": 4 * matmul * tokens_per_s / peak,
            "mfu_6n": 6 * matmul * tokens_per_s / peak, "host_syncs_per_step": timer.syncs,
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
            "base_params": total, "base_matmul_params": matmul}


def machine(args) -> str:
    import importlib.metadata as metadata

    import torch

    versions = []
    for package in ("torch", "transformers", "trl", "peft", "accelerate", "bitsandbytes", "liger-kernel",
                    "flash-attn"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{package} absent")
    device = (f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda})" if torch.cuda.is_available()
              else "CPU (smoke run)")
    return f"{device}; {', '.join(versions)}; peak {args.peak_tflops:.0f} TFLOPS"


def group(name: str) -> str:
    """Variants compared with the same sdpa variant: a shape, bf16 or QLoRA."""
    shape, _, extra = VARIANTS[name]
    return shape + ("-qlora" if extra is QLORA else "")


def table(results: list[dict], args) -> str:
    today = {group(r["variant"]): r["tokens_per_s"] for r in results
             if r["status"] == "ok" and VARIANTS[r["variant"]][1:] in (("sdpa", []), ("sdpa", QLORA))}
    note = " Smoke run: tiny shapes on CPU, whose timings mean nothing." if args.smoke else ""
    lines = [machine(args) + note, "",
             "| variant | attention | tokens/step | tokens/s | vs sdpa | MFU 4N | MFU 6N | peak GiB | host syncs/step "
             "| check: max error / min leak |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r["status"] != "ok":
            why = r.get("reason") or "packed documents do not match alone: {max_error:.3g} / {min_leak:.3g}".format(
                **r["check"])
            lines.append(f"| {r['variant']} | {r['packed_attention']} | {r['status']}: {why} |||||||")
            continue
        ratio = r["tokens_per_s"] / today[group(r["variant"])] if group(r["variant"]) in today else None
        memory = f"{r['peak_mem_gib']:.1f}" if r["peak_mem_gib"] is not None else "-"
        lines.append(f"| {r['variant']} | {r['attn_implementation']} | {r['tokens_per_step']} "
                     f"| {r['tokens_per_s']:,.0f} | {f'{ratio:.2f}x' if ratio else '-'} | {r['mfu_4n']:.1%} "
                     f"| {r['mfu_6n']:.1%} | {memory} | {r['host_syncs_per_step']} "
                     f"| {r['check']['max_error']:.3g} / {r['check']['min_leak']:.3g} |")
    return "\n".join(lines) + "\n"


def run_all(args) -> int:
    import torch

    cuda = torch.cuda.is_available()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.variants:  # each base once, here, before the variants' processes load it
        build_base(args.workdir, shape_of(name, args), cuda)
    results, status = [], 0
    for name in args.variants:
        print(f"== {name}", flush=True)
        child = args.out / "variants" / f"{name}.json"
        child.unlink(missing_ok=True)
        command = [sys.executable, __file__, "--out", str(args.out), "--workdir", str(args.workdir),
                   "--peak_tflops", str(args.peak_tflops), "--variant", name, *(["--smoke"] if args.smoke else [])]
        try:
            why = f"exit status {subprocess.run(command, timeout=args.variant_timeout).returncode}; see the log"
        except subprocess.TimeoutExpired:
            why = f"over --variant_timeout {args.variant_timeout} s"
        result = json.loads(child.read_text()) if child.is_file() else {
            "variant": name, "packed_attention": VARIANTS[name][1], "status": "failed", "reason": why}
        results.append(result)
        (args.out / "results.json").write_text(json.dumps(results, indent=2))
        (args.out / "results.md").write_text(table(results, args))
        if result["status"] == "wrong":
            print(f"{name}: packed documents do not get their logits alone; stopping", flush=True)
            status = 3
            break
    print("\n" + table(results, args))
    print(f"wrote {args.out / 'results.json'} and {args.out / 'results.md'}")
    return status


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="results.{json,md} and each variant's JSON go here.")
    parser.add_argument("--workdir", type=Path, help="The bases (15 GB for both shapes) and runs; default: --out.")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--peak_tflops", type=float, default=None,
                        help="Peak dense bf16 TFLOPS; default from the device name (H100/H200 989).")
    parser.add_argument("--variant_timeout", type=int, default=420, help="Seconds one variant may take.")
    parser.add_argument("--smoke", action="store_true", help="Tiny shapes on CPU: a quick check of the script.")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # runs one variant in this process (the children)
    args = parser.parse_args()
    args.workdir = args.workdir or args.out
    if args.peak_tflops is None:
        import torch

        name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
        args.peak_tflops = next((v for k, v in PEAK_TFLOPS.items() if k in name), 989.0)
    return args


def main() -> int:
    args = parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if args.variant:
        result = run_variant(args.variant, args)
        (args.out / "variants").mkdir(parents=True, exist_ok=True)
        (args.out / "variants" / f"{args.variant}.json").write_text(json.dumps(result, indent=2))
        print(json.dumps({k: v for k, v in result.items() if k in ("status", "reason", "tokens_per_s", "check")}))
        return 0
    return run_all(args)


if __name__ == "__main__":
    sys.exit(main())
