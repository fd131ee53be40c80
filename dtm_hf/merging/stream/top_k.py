"""TIES' magnitude sparsification with a defined tie-break, found by selection instead of a full sort.

mergekit keeps the `density` share of a task vector with the largest magnitudes by taking the first k of
`torch.argsort(|x|, descending=True)`. That sort is not stable: when several entries share the k-th largest
magnitude, which of them are kept depends on the sort's implementation (CPU and CUDA keep different ones). Such ties
are common, since a task vector is a difference of float weights. Here the tie-break is fixed as a stable sort would
fix it: tied entries are kept in index order. The result is mergekit's wherever the top k is unambiguous, and
mergekit's run under a stable sort everywhere.

The rule is a threshold `t` and a last index: keep |x| > t, and |x| == t up to that flat index. Finding it needs one
order statistic instead of a sort: numpy's introselect on a CPU (ten times faster than `torch.kthvalue` there),
`torch.kthvalue` elsewhere.
"""

import contextlib

from ...errors import DtmError


def top_k_rule(w, k: int, name: str | None = None) -> tuple[float, int]:
    """(t, last) such that `keep_mask(w, 0, t, last)` keeps the first k entries of a stable descending sort of
    the flat float tensor `w` (1 <= k <= w.numel())."""
    import numpy as np
    import torch

    n = w.numel()
    if w.device.type == "cpu":  # numpy: its selection and comparisons are several times faster than torch's on a CPU
        a = w.numpy()
        top = np.partition(a, n - k)[n - k:]  # the k largest, NaN counted largest as in torch's sort
        t, nan = top[0], np.isnan(top).any()
        at_least = None if nan else int(np.count_nonzero(a >= t))
        tied = None if nan or at_least == k else np.flatnonzero(a == t)
    else:
        t = torch.kthvalue(w, n - k + 1).values
        nan = w.isnan().any()
        at_least = None if nan else int(torch.count_nonzero(w >= t))
        tied = None if nan or at_least == k else (w == t).nonzero().squeeze(1)
    if nan:
        # The sub-models' adapters were checked finite when they were read: the NaN comes from the base
        raise DtmError(f"the task vector of {name or 'a tensor'} holds NaN values: the base model's tensor holds NaN "
                       "(the sub-models' adapters are finite); check the base model")
    if tied is None:
        return float(t), n - 1
    wanted = k - (at_least - len(tied))  # how many entries equal to t to keep: the first ones in index order
    return float(t), int(tied[wanted - 1])


def keep_mask(w, start: int, t: float, last: int):
    """Which entries of `w` (flat indices start, start+1, ...) the rule (t, last) keeps."""
    if last >= start + w.numel() - 1:
        return w >= t
    if last < start:
        return w > t
    tied = w == t
    tied[last - start + 1:] = False
    return tied.logical_or_(w > t)


def sparsify_block(delta, start: int, t: float, last: int):
    """`delta` (flat indices start, start+1, ...) with the entries the rule (t, last) drops set to zero."""
    import numpy as np
    import torch

    if delta.dtype == torch.float32 and not start <= last < start + delta.numel() - 1:
        # One fused pass: hardshrink keeps |x| > its threshold; |x| >= t is |x| > the next float32 below t.
        if last < start:
            return torch.nn.functional.hardshrink(delta, t)
        return delta if t == 0 else torch.nn.functional.hardshrink(delta, float(np.nextafter(np.float32(t), 0)))
    keep = keep_mask(delta.abs().float().reshape(-1), start, t, last)
    return delta * keep.reshape(delta.shape)


def magnitude(tensor, density: float, rescale_norm=None):
    """mergekit's `sparsify.magnitude` with ties at the threshold kept in index order."""
    import torch
    from mergekit.sparsify import rescaled_masked_tensor

    if density >= 1:
        return tensor
    if density <= 0 or tensor.numel() == 0:
        return torch.zeros_like(tensor)
    k = max(1, int(density * tensor.numel()))
    w = tensor.abs().reshape(-1).float()
    t, last = top_k_rule(w, k)
    mask = keep_mask(w, 0, t, last).to(tensor.dtype).reshape_as(tensor)
    return rescaled_masked_tensor(tensor, mask, rescale_norm)


@contextlib.contextmanager
def stable_magnitude():
    """Within the block, mergekit's TIES keeps tied entries in index order (and selects rather than sorts)."""
    import mergekit.sparsify

    original = mergekit.sparsify.magnitude
    mergekit.sparsify.magnitude = magnitude
    try:
        yield
    finally:
        mergekit.sparsify.magnitude = original

