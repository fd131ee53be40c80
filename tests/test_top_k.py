import functools
import itertools
from unittest import mock

import pytest
import torch

from dtm_hf.errors import DtmError
from dtm_hf.merging.stream.row_blocks import MIN_ROWS, row_blocks
from dtm_hf.merging.stream.top_k import keep_mask, magnitude, stable_magnitude, top_k_rule


def stable_top_k(w, k):
    keep = torch.zeros(w.numel(), dtype=torch.bool)
    keep[torch.argsort(w, descending=True, stable=True)[:k]] = True
    return keep


def magnitudes(kind, n, seed):
    generator = torch.Generator().manual_seed(seed)
    if kind == "normal":
        return torch.randn(n, generator=generator).abs()
    if kind == "task_vector":  # a float32 weight plus a small update, minus the weight: equal magnitudes recur
        weight = torch.randn(n, generator=generator) * 0.02
        return ((weight + torch.randn(n, generator=generator) * 1e-3) - weight).abs()
    if kind == "few_values":
        return torch.randint(0, 3, (n,), generator=generator).float()
    return torch.zeros(n)


@pytest.mark.parametrize("kind", ["normal", "task_vector", "few_values", "zeros"])
@pytest.mark.parametrize("n", [1, 7, 1000, 300_001])
@pytest.mark.parametrize("density", [0.01, 0.3, 0.5, 0.9])
def test_top_k_rule_keeps_what_a_stable_sort_ranks_first(kind, n, density):
    w = magnitudes(kind, n, seed=n)
    k = max(1, int(density * n))
    t, last = top_k_rule(w, k)
    keep = keep_mask(w, 0, t, last)
    assert torch.equal(keep, stable_top_k(w, k)) and int(keep.sum()) == k
    # Applied block by block (as row blocks apply it), the rule gives the same mask.
    blocks = torch.cat([keep_mask(w[start:start + 333], start, t, last) for start in range(0, n, 333)])
    assert torch.equal(blocks, keep)


def test_tied_entries_are_kept_in_index_order():
    tensor = torch.tensor([3.0, -1.0, 1.0, 1.0, -1.0, 2.0, 0.0, 1.0])
    # k = 4: 3 and 2, then two of the five entries of magnitude 1, the first two.
    assert magnitude(tensor, 0.5).tolist() == [3.0, -1.0, 1.0, 0.0, 0.0, 2.0, 0.0, 0.0]


def _random(dtype):
    return torch.randn(64, 48, generator=torch.Generator().manual_seed(0)).to(dtype)


# (tensor, whether its top k is unambiguous, so that even mergekit's unstable sort must agree)
MAGNITUDE_CASES = [
    (_random(torch.float32), True), (_random(torch.bfloat16), False), (_random(torch.float16), False),
    (torch.arange(1.0, 101.0) * torch.tensor([1.0, -1.0]).repeat(50), True),
    (torch.tensor([3.0, -1.0, 1.0, 1.0, -1.0, 2.0, 0.0, 1.0]), False),
    (torch.zeros(10), False),  # a LoRA whose B is still zero
    (torch.tensor([2.0]), True),
]


@pytest.mark.parametrize(("tensor", "unambiguous"), MAGNITUDE_CASES)
@pytest.mark.parametrize("density", [0.01, 0.3, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("rescale", [None, "l1"])
def test_magnitude_equals_mergekits_under_a_stable_sort(tensor, unambiguous, density, rescale):
    import mergekit.sparsify

    norm = rescale and mergekit.sparsify.RescaleNorm(rescale)
    actual = magnitude(tensor, density, norm)
    with mock.patch("torch.argsort", functools.partial(torch.argsort, stable=True)):
        expected = mergekit.sparsify.magnitude(tensor, density, norm)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    if unambiguous:
        torch.testing.assert_close(actual, mergekit.sparsify.magnitude(tensor, density, norm), rtol=0, atol=0)


def test_a_nan_task_vector_is_one_clear_error():
    with pytest.raises(DtmError, match="NaN"):
        magnitude(torch.tensor([1.0, float("nan"), 2.0, -3.0, 0.5]), 0.5)
    with pytest.raises(DtmError, match="NaN"):
        top_k_rule(torch.tensor([float("nan")] * 3 + [1.0] * 997), 10)


def test_stable_magnitude_is_scoped_to_the_block():
    import mergekit.sparsify

    original = mergekit.sparsify.magnitude
    with pytest.raises(KeyError), stable_magnitude():
        assert mergekit.sparsify.magnitude is magnitude
        raise KeyError
    assert mergekit.sparsify.magnitude is original


@pytest.mark.parametrize(("rows", "row_elements", "block_elements"),
                         [(1, 10, 100), (3, 10, 1), (10, 10, 1), (1001, 16, 256), (1002, 16, 4000), (7, 1, 2**18)])
def test_row_blocks_cover_the_rows_in_blocks_of_at_least_min_rows(rows, row_elements, block_elements):
    blocks = row_blocks(rows, row_elements, block_elements)
    assert blocks[0][0] == 0 and blocks[-1][1] == rows
    assert all(stop == next_start for (_, stop), (next_start, _) in itertools.pairwise(blocks))
    assert all(stop - start >= MIN_ROWS for start, stop in blocks) or blocks == [(0, rows)]
