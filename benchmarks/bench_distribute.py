"""Throughput and memory of `dtm-hf distribute` on tulu-v2-sized data, kmeans against balanced_kmeans, and
static-vs-transformer agreement.

    python benchmarks/bench_distribute.py --rows 326154 --agreement_rows 1000 --embedding_model PATH

Generates N tulu-shaped rows (11 sources, multi-turn, some with a system message), runs `dtm-hf distribute
--method kmeans` and then `--method balanced_kmeans` (both `--embedding_backend static`) on them, each in its own
subprocess, and reports seconds and rows per second for each phase (reduction, embedding, clustering,
balancing, describing the clusters, the map, writing), the peak resident memory of each process, the ratios of
balanced_kmeans to kmeans, and the cost of the balance. Then runs the transformer and the static backends on
the first `--agreement_rows` rows (0 skips this) and reports the adjusted mutual information between their
clusters (1.0 = identical partitions up to relabelling).
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SOURCES = ["flan_v2", "cot", "oasst1", "lima", "gpt4_alpaca", "code_alpaca", "sharegpt", "wizardlm",
           "open_orca", "science", "hard_coded"]


def tulu_like_rows(n: int, seed: int = 0):
    """Rows shaped like allenai/tulu-v2-sft-mixture: each source has its own vocabulary and reply lengths."""
    rng = random.Random(seed)
    vocab = {s: [f"{s[:3]}{i}" for i in range(300)] + ["the", "a", "of", "to", "and", "is"] for s in SOURCES}
    for i in range(n):
        source = SOURCES[i % len(SOURCES)]
        words = vocab[source]
        user = " ".join(rng.choices(words, k=rng.randint(15, 150)))
        reply = " ".join(rng.choices(words, k=rng.randint(20, 300)))
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
        if rng.random() < 0.3:
            messages += [{"role": "user", "content": "And then?"}, {"role": "assistant", "content": "Then done."}]
        if rng.random() < 0.1:
            messages.insert(0, {"role": "system", "content": "You are a helpful assistant."})
        yield {"dataset": source, "id": f"{source}_{i}", "messages": messages}


def run_distribute(args: list[str], work: Path) -> tuple[float, float]:
    """Run dtm-hf distribute in a child process with an empty datasets cache (so the JSON is parsed cold);
    returns (wall seconds, peak RSS of that child in MiB)."""
    env = {**os.environ, "HF_DATASETS_CACHE": tempfile.mkdtemp(prefix="datasets-cache-", dir=work)}
    log = work / "distribute.log"
    start = time.perf_counter()
    with log.open("w") as out:
        child = subprocess.Popen([sys.executable, "-m", "dtm_hf.distribute", *args], stdout=out, stderr=out, env=env)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own peak, not the largest of all children
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait for it again
    if child.returncode:
        sys.exit(log.read_text()[-5000:])
    return wall, usage.ru_maxrss / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=326_154)
    parser.add_argument("--agreement_rows", type=int, default=1000)
    parser.add_argument("--embedding_model", required=True, help="a sentence-transformers folder or Hub id")
    parser.add_argument("--n_clusters", type=int, default=4)
    opts = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-distribute-"))
    data = work / "tulu_like.jsonl"
    start = time.perf_counter()
    with data.open("w") as f:
        for row in tulu_like_rows(opts.rows):
            f.write(json.dumps(row) + "\n")
    print(f"generated {opts.rows} rows ({data.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - start:.0f} s")

    common = ["--dataset", str(data), "--n_clusters", str(opts.n_clusters), "--embedding_model", opts.embedding_model]
    # Distil the static model first so the timed runs measure distribution, not the one-off distillation.
    run_distribute([*common, "--method", "kmeans", "--embedding_backend", "static", "--max_samples", "100",
                    "--output_dir", str(work / "warmup")], work)
    runs = {}
    for method in ("kmeans", "balanced_kmeans"):
        wall, peak = run_distribute([*common, "--method", method, "--embedding_backend", "static", "--output_dir",
                                     str(work / method)], work)
        runs[method] = wall, peak, json.loads((work / method / "stats.json").read_text())
    n = runs["kmeans"][2]["kept_rows"]
    print(f"\n{n} rows, {opts.n_clusters} clusters, static backend")
    print(f"{'phase':<10} " + " ".join(f"{m + ' s':>17} {'rows/s':>8}" for m in runs))
    for phase in ("load", "reduce", "embed", "cluster", "balance", "describe", "map", "write"):
        cells = []
        for _, _, stats in runs.values():
            seconds = stats["timings_s"].get(phase)
            cells.append(f"{seconds:>17.1f} {n / max(seconds, 1e-9):>8.0f}" if seconds is not None else f"{'-':>26}")
        print(f"{phase:<10} " + " ".join(cells))
    for method, (wall, peak, stats) in runs.items():
        print(f"{method:<16} {wall:6.0f} s wall, peak RSS {peak / 1024:.2f} GiB, sizes {stats['sizes']}")
    (k_wall, k_peak, _), (b_wall, b_peak, b_stats) = runs.values()
    print(f"balanced_kmeans / kmeans: wall {b_wall / k_wall:.2f}x, peak RSS {b_peak / k_peak:.2f}x")
    balance = b_stats["balance"]
    print(f"balance: k-means sizes {balance['kmeans_sizes']}; mean distance to the assigned centroid "
          f"{balance['kmeans_mean_distance']:.4f} -> {balance['mean_distance']:.4f} "
          f"({balance['cost_increase']:+.2%}) in {balance['iterations']} iterations")
    if not opts.agreement_rows:
        shutil.rmtree(work)
        return

    common += ["--method", "kmeans"]
    sample = ["--max_samples", str(opts.agreement_rows)]
    labels = {}
    for backend in ("transformer", "static"):
        out = work / f"agree_{backend}"
        wall, _ = run_distribute([*common, *sample, "--embedding_backend", backend, "--output_dir", str(out)], work)
        labels[backend] = json.loads((out / "clusters.json").read_text())
        embed_s = json.loads((out / "stats.json").read_text())["timings_s"]["embed"]
        print(f"{backend:<11} backend on {opts.agreement_rows} rows: embedding {opts.agreement_rows / embed_s:.0f} rows/s")
    from sklearn.metrics import adjusted_mutual_info_score

    ami = adjusted_mutual_info_score(labels["transformer"], labels["static"])
    print(f"adjusted mutual information, static vs transformer clusters: {ami:.3f}")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
