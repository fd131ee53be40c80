"""Wall time and peak memory of `dtm-hf merge` against the I/O floor and a naive load-everything merge.

    python benchmarks/bench_merge.py --workdir /tmp/bench_merge            # K=4 LoRA r=16 on a ~665 MB base
    python benchmarks/bench_merge.py --workdir /tmp/bench_merge --k 2 4 8 --methods linear ties

Each measurement runs in its own subprocess, after that subprocess has done all its imports; memory is the peak
resident set size above what the process held once imported. Each route runs --repeats times, interleaved with the
others; the table keeps its best wall time and its highest peak. In one run, side by side:
- io_floor: read every input file once (base weights and adapters) and write the output's bytes once;
- dtm_hf: `dtm-hf merge` (its default streaming LoRA route: W + scale * B @ A on the fly, mergekit's methods);
- mergekit_route: `dtm-hf merge --lora_route mergekit` (mergekit's `base+adapter` references: one merged copy of
  the base per sub-model in a temporary cache, as `mergekit-yaml` does);
- naive: what the paper's code did: every sub-model loaded (merge_and_unload) into memory, averaged, saved.
Inputs are built once in --workdir (a random Llama in float32 and K random LoRA adapters) and reused.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_inputs(workdir: Path, k: int, rank: int, layers: int, hidden: int, shard_mb: int) -> tuple[Path, list[Path]]:
    import torch
    from peft import LoraConfig, get_peft_model
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    base = workdir / f"base_l{layers}_h{hidden}"
    if not (base / "config.json").exists():
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=hidden * 11 // 4 // 32 * 32,
                             num_hidden_layers=layers, num_attention_heads=hidden // 64,
                             num_key_value_heads=hidden // 64, tie_word_embeddings=False)
        LlamaForCausalLM(config).save_pretrained(base, max_shard_size=f"{shard_mb}MB")
        vocab = {f"t{i}": i for i in range(32000)}
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")),
                                            unk_token="t0", eos_token="t1", bos_token="t2")
        tokenizer.save_pretrained(base)
    subs = []
    for i in range(k):
        sub = workdir / f"sub_r{rank}_{i}"
        if not (sub / "adapter_model.safetensors").exists():
            model = get_peft_model(LlamaForCausalLM.from_pretrained(base),
                                   LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS, lora_dropout=0.0))
            generator = torch.Generator().manual_seed(i + 1)
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.data = torch.randn(param.shape, generator=generator) * 0.01
            model.save_pretrained(sub)
            (sub / "dtm_train.json").write_text(json.dumps({"cluster": f"cluster_{i}", "dataset": "bench",
                                                            "dataset_config": f"cluster_{i}", "base_model": str(base)}))
            del model
        subs.append(sub)
    return base, subs


def files_of(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".json"))


# ---- the measured runs, each in a fresh subprocess ----

def run_io_floor(base: Path, subs: list[Path], out: Path, method: str, device: str) -> None:
    """Read every input file once and write as many bytes as the merged model's weights, in 16 MB chunks."""
    out.mkdir(parents=True)
    inputs = files_of(base) + [f for sub in subs for f in files_of(sub)]
    chunk = 16 * 2**20
    with open(out / "model.bin", "wb") as sink:
        for path in inputs:
            with open(path, "rb") as f:
                while data := f.read(chunk):
                    if path.parent == base and path.suffix == ".safetensors":
                        sink.write(data)


def run_dtm_hf(base: Path, subs: list[Path], out: Path, method: str, device: str, route: str = "stream") -> None:
    from dtm_hf.merge import MergeArguments, merge

    merge(MergeArguments(submodels=[str(s) for s in subs], base_model=str(base), method=method,
                         output_dir=str(out), lora_route=route, device=device))


def run_dtm_hf_mergekit(base: Path, subs: list[Path], out: Path, method: str, device: str) -> None:
    run_dtm_hf(base, subs, out, method, device, route="mergekit")


def run_naive(base: Path, subs: list[Path], out: Path, method: str, device: str) -> None:
    """The paper code's route: every sub-model merged into its own copy of the base, all held, then averaged."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    states = []
    for sub in subs:
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), sub).merge_and_unload()
        states.append(model.state_dict())
    with torch.no_grad():
        for name, tensor in states[0].items():
            tensor.copy_(sum(state[name] for state in states) / len(states))
    model.save_pretrained(out)


RUNS = {"io_floor": run_io_floor, "dtm_hf": run_dtm_hf, "mergekit_route": run_dtm_hf_mergekit, "naive": run_naive}


def child(args) -> None:
    # Everything any run imports, before the baseline, so that memory above it is the merge's own.
    import mergekit.merge  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import dtm_hf.merge  # noqa: F401

    torch.set_num_threads(os.cpu_count())
    if args.device != "cpu":
        torch.zeros(1, device=args.device)  # the CUDA context, outside the measured run
    baseline = rss_mb()
    start = time.perf_counter()
    RUNS[args.run](Path(args.base), [Path(s) for s in args.subs], Path(args.out), args.method, args.device)
    wall = time.perf_counter() - start
    print(json.dumps({"wall_s": wall, "peak_above_imports_mb": peak_mb() - baseline}))


def measure(run: str, base: Path, subs: list[Path], workdir: Path, method: str, device: str) -> dict:
    out = workdir / f"out_{run}"
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, __file__, "--child", run, "--base", str(base), "--out", str(out), "--method", method,
               "--device", device, "--subs", *map(str, subs)]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if result.returncode:
        raise SystemExit(f"{run} failed:\n{result.stderr[-3000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def size_mb(paths) -> float:
    return sum(p.stat().st_size for p in paths) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/bench_merge")
    parser.add_argument("--k", type=int, nargs="+", default=[4])
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--shard_mb", type=int, default=5000, help="Shard size of the base's safetensors.")
    parser.add_argument("--methods", nargs="+", default=["linear"])
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--device", default="cpu", help="--device of the dtm_hf runs: cpu or cuda.")
    parser.add_argument("--repeats", type=int, default=3,
                        help="Runs of each route, interleaved; the best wall time and the highest peak are kept.")
    parser.add_argument("--child", choices=list(RUNS), dest="run", help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--subs", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        return child(args)
    import torch

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    base, subs = build_inputs(workdir, max(args.k), args.rank, args.layers, args.hidden, args.shard_mb)
    shards = [p for p in base.iterdir() if p.suffix == ".safetensors"]
    gpu = f", {torch.cuda.get_device_name()}" if args.device != "cpu" else ""
    print(f"Machine: {os.cpu_count()} CPU cores{gpu}, torch {torch.__version__}; base {size_mb(shards):.0f} MB "
          f"float32 in {len(shards)} shard(s), LoRA r={args.rank} on {', '.join(TARGETS)}")
    rows = []
    for k in args.k:
        adapters = [sub / "adapter_model.safetensors" for sub in subs[:k]]
        bound = max(p.stat().st_size for p in shards) / 2**20 + size_mb(adapters)
        for method in args.methods:
            results = {}
            for _ in range(args.repeats):  # interleaved, so that a busy spell of a shared machine hits every run
                for run in args.runs:
                    if run == "naive" and method != "linear":
                        continue
                    r = measure(run, base, subs[:k], workdir, method, args.device)
                    best = results.setdefault(run, r)
                    best["wall_s"] = min(best["wall_s"], r["wall_s"])
                    best["peak_above_imports_mb"] = max(best["peak_above_imports_mb"], r["peak_above_imports_mb"])
            floor = results.get("io_floor", {}).get("wall_s")
            for run, r in results.items():
                rows.append((k, method, run, r["wall_s"], r["wall_s"] / floor if floor else float("nan"),
                             r["peak_above_imports_mb"], r["peak_above_imports_mb"] / bound))
    print(f"\n{'K':>2} {'method':<8} {'run':<14} {'wall s':>8} {'x floor':>8} {'peak MB':>9} {'x (shard+adapters)':>19}")
    for k, method, run, wall, ratio, peak, mem_ratio in rows:
        print(f"{k:>2} {method:<8} {run:<14} {wall:>8.2f} {ratio:>8.2f} {peak:>9.0f} {mem_ratio:>19.2f}")


if __name__ == "__main__":
    main()
