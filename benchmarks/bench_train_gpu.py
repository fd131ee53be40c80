"""LoRA SFT training throughput and MFU on a GPU with dtm-hf's own training code: bf16 LoRA against 4-bit QLoRA.

    python benchmarks/bench_train_gpu.py --workdir /tmp/bench_gpu [--variants bf16 qlora] [--batch_size 8]
    python benchmarks/bench_train_gpu.py --workdir /tmp/bench_gpu_smoke --smoke     # tiny, CPU-friendly check

Offline: the base is a random-init Llama of about 1B parameters (hidden 2048, intermediate 5632, 16 layers,
16 heads, vocab 32000) built once in `--workdir` with a BPE tokenizer trained on the demo rows (chat template
included); the data are dtm_hf.demo.data rows, enough for `--max_steps` packed batches. Each variant runs
`dtm_hf.train.build_trainer` on the tiny recipe with GPU overrides: packing into `--max_length` 2048
(padding-free), LoRA r 16 on all seven linear projections, no gradient checkpointing unless asked:
  bf16    bf16 base, bf16 training
  qlora   base in 4-bit NF4 (load_in_4bit, no double quantization), computing in bf16, the same LoRA
Only steps after the first `--warmup` are timed: a callback reads the clock (after torch.cuda.synchronize())
at step ends and counts the tokens the model's forward receives.

MFU = 4 * N * tokens_per_s / peak_flops, N the base's parameters less the input embedding (a lookup, no
matmul). 4N per token: forward 2N, backward through the activations 2N; the frozen base gets no weight
gradients (the LoRA weights' cost is negligible). The usual 6N (full fine-tuning) figure is printed too.
Attention's sequence-length term is left out of both. `--peak_tflops` defaults to 989 (H100 SXM, bf16 dense).
TRL's bfd packing is always padding-free: with `--attn_implementation sdpa` a batch is one row with a
block-diagonal mask over all its tokens, and attention is computed over the whole row; flash_attention_2 (if
installed) runs the packed sequences with varlen kernels instead.
"""

import argparse
import json
import math
import time
from pathlib import Path

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "tiny" / "dtm_lora.yaml"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VARIANTS = {
    "bf16": [],
    "qlora": ["--load_in_4bit", "true", "--bnb_4bit_quant_type", "nf4", "--use_bnb_nested_quant", "false"],
}
SMOKE = {"hidden": 64, "intermediate": 192, "layers": 2, "heads": 4, "vocab": 0, "max_length": 128, "max_steps": 6,
         "warmup": 2, "batch_size": 2}


def build_base(workdir: Path, args) -> Path:
    """A random-init Llama and its tokenizer, saved once (bf16 on GPU) under `workdir`; returns the folder."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from dtm_hf.demo.data import demo_texts
    from dtm_hf.demo.tiny_model import build_tokenizer

    folder = workdir / f"base-h{args.hidden}-i{args.intermediate}-l{args.layers}-v{args.vocab}"
    if (folder / "config.json").is_file():
        return folder
    tokenizer = build_tokenizer(demo_texts())
    config = LlamaConfig(
        vocab_size=-(-max(args.vocab, len(tokenizer)) // 32) * 32,  # every token id is in range
        hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.heads, max_position_embeddings=args.max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if args.cuda else torch.float32)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def base_params(folder: Path) -> tuple[int, int]:
    """(all parameters, parameters less the input embedding) of the base, counted on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    total = sum(p.numel() for p in model.parameters())
    return total, total - model.get_input_embeddings().weight.numel()


def make_data(tokenizer, args):
    """Demo rows enough for `max_steps` full packed batches (10% spare)."""
    from datasets import Dataset

    from dtm_hf.demo.data import demo_rows

    sample = [r["messages"] for r in demo_rows(50)]
    texts = [tokenizer.apply_chat_template(m, tokenize=False) for m in sample]
    per_row = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]) / len(sample)
    rows = math.ceil(1.1 * args.max_steps * args.batch_size * args.max_length / per_row)
    return Dataset.from_list([{"messages": r["messages"]} for r in demo_rows(-(-rows // 4))])


def step_timer(args):
    """A TrainerCallback timing the steps after `warmup`, and a forward pre-hook counting the tokens they see."""
    import torch
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        tokens = 0
        start = None  # (time, tokens) at the end of the last warm-up step
        end = None

        def count(self, module, args_, kwargs):
            mask = kwargs.get("attention_mask")
            self.tokens += int(mask.sum()) if mask is not None else kwargs["input_ids"].numel()

        def on_step_end(self, train_args, state, control, **kwargs):
            if args.cuda:
                torch.cuda.synchronize()
            mark = (time.perf_counter(), self.tokens, state.global_step)
            if state.global_step == args.warmup:
                self.start = mark
            self.end = mark

    return StepTimer()


def run_variant(name: str, base: Path, output_dir: Path, args) -> dict:
    import torch

    from dtm_hf.cli import parse
    from dtm_hf.train import make_parser
    from dtm_hf.training.chat_template import load_tokenizer
    from dtm_hf.training.plan import Run
    from dtm_hf.training.trainer import build_trainer

    argv = ["--config", str(RECIPE), "--model_name_or_path", str(base), "--dataset", "unused",
            "--output_dir", str(output_dir / name), "--save_strategy", "no", "--logging_steps", str(args.max_steps),
            "--max_length", str(args.max_length), "--packing", "true", "--max_steps", str(args.max_steps),
            "--per_device_train_batch_size", str(args.batch_size), "--gradient_accumulation_steps", "1",
            "--activation_checkpointing", str(args.gradient_checkpointing).lower(),
            "--attn_implementation", args.attn_implementation, "--lora_dropout", "0.0",
            "--lora_target_modules", *LORA_TARGETS, "--use_cpu", str(not args.cuda).lower(),
            "--bf16", str(args.cuda).lower(), "--dtype", "bfloat16" if args.cuda else "float32", *VARIANTS[name]]
    dtm_args, training_args, model_args = parse(make_parser(), argv)
    tokenizer, _ = load_tokenizer(dtm_args, model_args, training_args, str(base))
    data = make_data(tokenizer, args)
    if args.cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trainer = build_trainer(Run(["all"], output_dir / name, data, len(data), 0, "train"), tokenizer, str(base),
                            training_args, model_args)
    timer = step_timer(args)
    trainer.add_callback(timer)
    trainer.model.register_forward_pre_hook(timer.count, with_kwargs=True)
    trainer.train()
    (t0, tok0, step0), (t1, tok1, step1) = timer.start, timer.end
    tokens_per_s = (tok1 - tok0) / (t1 - t0)
    total, matmul = base_params(base)
    peak = args.peak_tflops * 1e12
    return {"variant": name, "timed_steps": step1 - step0, "timed_tokens": tok1 - tok0, "seconds": t1 - t0,
            "tokens_per_s": tokens_per_s, "mfu_4n": 4 * matmul * tokens_per_s / peak,
            "mfu_6n": 6 * matmul * tokens_per_s / peak,
            "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
            "base_params": total, "base_matmul_params": matmul,
            "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if args.cuda else None}


def qlora_runnable(args) -> bool:
    """4-bit needs bitsandbytes; without CUDA, its CPU kernels must load too."""
    try:
        import bitsandbytes  # noqa: F401
    except (ImportError, RuntimeError) as err:
        print(f"qlora skipped: bitsandbytes cannot run here ({str(err).splitlines()[0]})")
        return False
    return True


def print_results(results: list[dict], args) -> None:
    import torch

    device = torch.cuda.get_device_name() if args.cuda else "CPU"
    print(f"\n{device}, torch {torch.__version__}; Llama hidden {args.hidden}, {args.layers} layers, "
          f"{results[0]['base_params'] / 1e6:.1f}M parameters; batch {args.batch_size} x {args.max_length} packed, "
          f"gradient checkpointing {args.gradient_checkpointing}, {args.attn_implementation}, "
          f"peak {args.peak_tflops:.0f} TFLOPS\n")
    print("| variant | timed steps | tokens | seconds | tokens/s | MFU (4N) | MFU (6N) | peak GiB | trainable "
          "| base |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        memory = f"{r['peak_mem_gb']:.1f}" if r["peak_mem_gb"] is not None else "-"
        print(f"| {r['variant']} | {r['timed_steps']} | {r['timed_tokens']} | {r['seconds']:.1f} "
              f"| {r['tokens_per_s']:.0f} | {r['mfu_4n']:.1%} | {r['mfu_6n']:.1%} | {memory} "
              f"| {r['trainable_params'] / 1e6:.2f}M | {r['base_params'] / 1e6:.1f}M |")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True, help="Base model, runs and results.json go here.")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--batch_size", type=int, default=8, help="Packed sequences per step.")
    parser.add_argument("--max_length", type=int, default=2048, help="Tokens per packed sequence.")
    parser.add_argument("--max_steps", type=int, default=40, help="Optimizer steps per variant, warm-up included.")
    parser.add_argument("--warmup", type=int, default=5, help="Steps left out of the timing.")
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--attn_implementation", default="sdpa", help="sdpa, eager or flash_attention_2.")
    parser.add_argument("--peak_tflops", type=float, default=989.0, help="Peak dense bf16 TFLOPS (H100 SXM: 989).")
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=32000, help="Model vocab (at least the tokenizer's).")
    parser.add_argument("--smoke", action="store_true", help="Tiny model and run, for a quick check on CPU.")
    args = parser.parse_args()
    if args.smoke:
        vars(args).update(SMOKE)
    if args.warmup >= args.max_steps:
        parser.error("--warmup must be below --max_steps")
    return args


def main() -> None:
    args = parse_args()
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    args.cuda = torch.cuda.is_available()
    args.workdir.mkdir(parents=True, exist_ok=True)
    base = build_base(args.workdir, args)
    names = [n for n in args.variants if n != "qlora" or qlora_runnable(args)]
    results = [run_variant(name, base, args.workdir / "runs", args) for name in names]
    print_results(results, args)
    (args.workdir / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.workdir / 'results.json'}")


if __name__ == "__main__":
    main()
