"""Which entries TIES keeps when magnitudes tie at the threshold: mergekit's choice per device against dtm-hf's.

    python benchmarks/tie_break.py [--size 4096 4096] [--density 0.5] [--trials 5]

A task vector of a LoRA sub-model is fl(W + scale * B @ A) - W in float32: equal magnitudes recur, and often at the
k-th largest. mergekit's `sparsify.magnitude` keeps the first k of an unstable `torch.argsort`, so which tied
entries it keeps is up to the sort's implementation; dtm-hf keeps them in index order (`dtm_hf.merging.stream.top_k`). For random
task vectors of that form this prints, per trial: the entries tied at the threshold, how many of mergekit's kept
entries differ between two runs of its sort (CPU and, when there is one, CUDA) and from a stable sort, and how many
of dtm-hf's differ between CPU and CUDA (0 when the rule is device-independent).
"""

import argparse

import torch


def task_vector(shape, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(shape, generator=generator) * 0.02  # Llama's initialisation
    a = (torch.rand(16, shape[1], generator=generator) * 2 - 1) / shape[1] ** 0.5  # PEFT's A, r=16
    b = torch.randn(shape[0], 16, generator=generator) * 0.01  # a trained B
    return (weight + b @ a) - weight


def differ(x, y) -> str:
    return "-" if y is None else str(int((x.reshape(-1) != y.reshape(-1)).sum()))


def kept(mask_fn, tensor, density, device) -> torch.Tensor:
    return mask_fn(tensor.to(device), density).cpu() != 0


def main() -> None:
    from mergekit.sparsify import magnitude as mergekit_magnitude

    from dtm_hf.merging.stream.top_k import magnitude as dtm_magnitude

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=[4096, 4096])
    parser.add_argument("--density", type=float, default=0.5)
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    print(f"torch {torch.__version__}, {'CUDA ' + torch.cuda.get_device_name() if cuda else 'no CUDA'}; "
          f"{args.size[0]}x{args.size[1]} float32 task vectors, density {args.density}")
    print(f"{'trial':>5} {'tied at t':>10} {'mk cpu vs stable':>17} {'mk cpu vs cuda':>15} {'dtm cpu vs cuda':>16}")
    for trial in range(args.trials):
        tensor = task_vector(tuple(args.size), seed=trial)
        k = max(1, int(args.density * tensor.numel()))
        w = tensor.abs().reshape(-1)
        threshold = w.kthvalue(w.numel() - k + 1).values
        tied = int((w == threshold).sum())
        mk_cpu = kept(mergekit_magnitude, tensor, args.density, "cpu")
        stable = torch.zeros(w.numel(), dtype=torch.bool)
        stable[torch.argsort(w, descending=True, stable=True)[:k]] = True
        dtm_cpu = kept(dtm_magnitude, tensor, args.density, "cpu")
        assert torch.equal(dtm_cpu.reshape(-1), stable)
        mk_cuda = dtm_cuda = None
        if cuda:
            mk_cuda = kept(mergekit_magnitude, tensor, args.density, "cuda")
            dtm_cuda = kept(dtm_magnitude, tensor, args.density, "cuda")
        print(f"{trial:>5} {tied:>10} {differ(mk_cpu, stable):>17} {differ(mk_cpu, mk_cuda):>15} "
              f"{differ(dtm_cpu, dtm_cuda):>16}")


if __name__ == "__main__":
    main()
