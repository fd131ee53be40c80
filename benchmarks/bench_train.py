"""Training throughput of the tiny recipe with packing against TRL's defaults without it, side by side.

    python benchmarks/bench_train.py [--n_per_skill 200] [--threads 2]

The same rows (the demo's four skills), the same tiny Llama, LoRA and loss mask (assistant reply + EOS) in every
variant; only the batching differs:
  packed     the recipe: `packing: true` (bfd, padding-free), per_device_train_batch_size 4 x max_length 256
  default    TRL's defaults: no packing, padded to the longest row, per_device_train_batch_size 8
  unpacked   no packing, padded, per_device_train_batch_size 32 (about as many real tokens per step as packed)
Tokens/s counts real tokens (no padding) over the trainer's `train_runtime`, best of `--repeats` interleaved runs
(the machine may be shared); the share of loss tokens
(labels != -100 over real tokens) is printed to show that every variant trains on the same tokens.
"""

import argparse
import json
import tempfile
from pathlib import Path

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "tiny" / "dtm_lora.yaml"
VARIANTS = {
    "packed": {},
    "default": {"packing": "false", "per_device_train_batch_size": "8"},
    "unpacked": {"packing": "false", "per_device_train_batch_size": "32"},
}


def count_tokens(trainer) -> tuple[int, int]:
    """(real tokens, loss tokens) in one epoch of the trainer's batches."""
    real = loss = 0
    for batch in trainer.get_train_dataloader():
        mask = batch.get("attention_mask")
        real += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
        loss += int((batch["labels"] != -100).sum())
    return real, loss


def run_variant(name: str, overrides: dict, base: Path, data, output_dir: Path) -> dict:
    from dtm_hf.cli import parse
    from dtm_hf.train import make_parser
    from dtm_hf.training.chat_template import load_tokenizer
    from dtm_hf.training.plan import Run
    from dtm_hf.training.trainer import build_trainer

    argv = ["--config", str(RECIPE), "--model_name_or_path", str(base), "--dataset", "unused",
            "--output_dir", str(output_dir / name), "--save_strategy", "no", "--logging_steps", "1000"]
    for key, value in overrides.items():
        argv += [f"--{key}", value]
    dtm_args, training_args, model_args = parse(make_parser(), argv)
    tokenizer, _ = load_tokenizer(dtm_args, model_args, training_args, str(base))
    run = Run(["all"], output_dir / name, data, len(data), 0, "train")
    trainer = build_trainer(run, tokenizer, str(base), training_args, model_args)
    real, loss = count_tokens(trainer)
    metrics = trainer.train().metrics
    seconds = metrics["train_runtime"]
    return {"variant": name, "steps": trainer.state.global_step, "real_tokens": real, "loss_tokens": loss,
            "loss_share": loss / real, "seconds": seconds, "tokens_per_s": real / seconds,
            "final_loss": next((e["loss"] for e in reversed(trainer.state.log_history) if "loss" in e),
                               metrics.get("train_loss"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n_per_skill", type=int, default=200, help="Rows per demo skill (4 skills).")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads.")
    parser.add_argument("--repeats", type=int, default=2, help="Runs per variant, interleaved; the fastest counts.")
    args = parser.parse_args()

    import torch
    from datasets import Dataset
    from transformers.utils import logging as hf_logging

    from dtm_hf.demo.data import demo_rows
    from dtm_hf.demo.tiny_model import save_tiny_llama

    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    rows = demo_rows(args.n_per_skill)
    data = Dataset.from_list([{"messages": r["messages"]} for r in rows])
    with tempfile.TemporaryDirectory() as tmp:
        base = save_tiny_llama(Path(tmp) / "base", [m["content"] for r in rows for m in r["messages"]])
        (base / "chat_template.jinja").unlink()  # like Llama-2: dtm-hf's default template applies
        # Interleaved, in a rotating order, best of `repeats`: a shared machine's load hits every variant alike
        runs = []
        for repeat in range(args.repeats):
            names = list(VARIANTS)[repeat % len(VARIANTS):] + list(VARIANTS)[:repeat % len(VARIANTS)]
            runs += [run_variant(name, VARIANTS[name], base, data, Path(tmp) / str(repeat)) for name in names]
        results = [max((r for r in runs if r["variant"] == name), key=lambda r: r["tokens_per_s"]) for name in VARIANTS]

    print(f"\n{len(data)} rows, tiny Llama (hidden 64, 2 layers), LoRA r 16, {args.threads} CPU threads, "
          f"torch {torch.__version__}, best of {args.repeats}\n")
    print("| variant | steps | real tokens | loss tokens | loss share | seconds | tokens/s | final loss |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['variant']} | {r['steps']} | {r['real_tokens']} | {r['loss_tokens']} | {r['loss_share']:.3f} "
              f"| {r['seconds']:.1f} | {r['tokens_per_s']:.0f} | {r['final_loss']:.3f} |")
    by_name = {r["variant"]: r for r in results}
    packed = by_name["packed"]["tokens_per_s"]
    print(f"\npacked / TRL default: {packed / by_name['default']['tokens_per_s']:.2f}x tokens/s (goal >= 1.5x)")
    print(f"packed / unpacked at ~equal tokens per step: {packed / by_name['unpacked']['tokens_per_s']:.2f}x")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
