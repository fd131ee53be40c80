"""The tensors mergekit asks for, computed rather than read from merged copies: the base model read once and
shared by every reference, and each LoRA sub-model's tensors as W + scale * B @ A, whole or a block of rows."""

import os
from pathlib import Path

from ..submodels import SubModel


class SharedBaseLoader:
    """The base model's tensors for every reference; keeps the last tensor read for the next request of it."""

    def __init__(self, base_path: Path):
        from mergekit.io import LazyTensorLoader, ShardedTensorIndex

        self.loader = LazyTensorLoader(ShardedTensorIndex.from_disk(str(base_path)), lazy_unpickle=False)
        self.index = self.loader.index
        self._last = self._last_rows = (None, None)
        self._headers = {}

    def resolve(self, name, aliases=None, tied_names=None) -> str | None:
        """The first of a weight's names the base stores (mergekit resolves aliases and tied names the same way)."""
        return next((n for n in [name, *(aliases or []), *(tied_names or [])] if n in self.index.tensor_paths), None)

    def header(self, key) -> tuple[str, list[int]]:
        """The stored dtype code and shape of the tensor `key`, from its shard's header."""
        from safetensors import safe_open

        shard = self.index.tensor_paths[key]
        if shard not in self._headers:
            with safe_open(os.path.join(self.index.base_path, shard), framework="pt") as f:
                self._headers[shard] = {k: (f.get_slice(k).get_dtype(), f.get_slice(k).get_shape()) for k in f.keys()}
        return self._headers[shard][key]

    def get_tensor(self, key, device="cpu", aliases=None, raise_on_missing=True):
        if self._last[0] != (key, device):
            self._last = (None, None)  # free the previous tensor before reading the next
            self._last = ((key, device), self.loader.get_tensor(key, device, aliases, raise_on_missing))
        return self._last[1]

    def get_rows(self, key, start, stop, device="cpu"):
        """Rows [start, stop) of the tensor `key` on `device`; the last block is kept for the other references."""
        if self._last_rows[0] != (key, start, stop, device):
            self._last_rows = ((key, start, stop, device), self.get_tensor(key)[start:stop].to(device))
        return self._last_rows[1]

    def flush(self):
        self._last = self._last_rows = (None, None)
        self.loader.flush()


class LoraTensorLoader:
    """Stands in for mergekit's loader of a merged `base+adapter` copy: what PEFT's merge_and_unload would save."""

    def __init__(self, base: SharedBaseLoader, submodel: SubModel):
        self.base, self.index, self.scale = base, base.index, submodel.scale
        self.loras, self.saved = submodel.load_tensors()
        self._factors = (None, None)  # (key, device), (A, B) there in float32: the last tensor's, for its next block

    def get_tensor(self, key, device="cpu", aliases=None, raise_on_missing=True):
        weight = self.base.get_tensor(key, device, aliases, raise_on_missing)
        if weight is None:
            return weight
        return self._apply(key, weight, None, device)

    def get_rows(self, key, start, stop, device="cpu"):
        """Rows [start, stop) of the tensor `key`: bit for bit those rows of get_tensor's when they are at least
        row_blocks.MIN_ROWS (on a CPU)."""
        return self._apply(key, self.base.get_rows(key, start, stop, device), slice(start, stop), device)

    def _apply(self, key, weight, rows, device):
        import torch

        if key in self.saved:
            saved = self.saved[key] if rows is None else self.saved[key][rows]
            return saved.to(device=device, dtype=weight.dtype)
        if key not in self.loras:
            return weight
        if self._factors[0] != (key, device):
            self._factors = ((key, device), tuple(t.to(device).float() for t in self.loras[key]))
        a, b = self._factors[1]
        # PEFT's arithmetic, so that the result equals merge_and_unload's bit for bit: (B @ A) * scale in float32,
        # added to the weight. In place, to touch one fresh buffer rather than three.
        delta = torch.matmul(b if rows is None else b[rows], a).mul_(self.scale)
        if weight.dtype == torch.float32:
            return delta.add_(weight)
        return delta.add_(weight.float()).to(weight.dtype)

    def flush(self):
        self.base.flush()
