"""safetensors shards written tensor by tensor (or block of rows by block of rows) at offsets fixed in advance,
so that no shard is ever held in memory."""

import json
import os
from pathlib import Path

from ...errors import DtmError

SAFETENSORS_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64"}
STORED_DTYPES = {code: name for name, code in SAFETENSORS_DTYPES.items()}


def check_finite(name: str, tensor) -> None:
    """A merged tensor (or block of its rows) must hold finite numbers: a NaN or inf comes from an input (the base
    or a sub-model) or from an overflow of the output dtype, and would make the merged model useless."""
    import torch

    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise DtmError(f"the merged tensor {name} has {bad} non-finite value(s) (NaN or inf): the base model's tensor "
                       f"holds them, or the merge overflows {str(tensor.dtype).removeprefix('torch.')}; check the base "
                       "model (and try --dtype float32); nothing was written")


class StreamingShardWriter:
    """safetensors shards written tensor by tensor at offsets fixed in advance; an index when there are several."""

    def __init__(self, out: Path, layout: list[tuple[str, str, list[int], int]], max_shard_bytes: int):
        shards, current, size = [], [], 0
        for entry in layout:  # (name, dtype name, shape, bytes), in the order the tensors will arrive
            if current and size + entry[3] > max_shard_bytes:
                shards.append(current)
                current, size = [], 0
            current.append(entry)
            size += entry[3]
        shards.append(current)
        names = (["model.safetensors"] if len(shards) == 1 else
                 [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
        self.out, self.files, self.slots, self.weight_map = out, [], {}, {}
        for shard, file_name in zip(shards, names, strict=True):
            header, offset = {"__metadata__": {"format": "pt"}}, 0
            for name, dtype, shape, nbytes in shard:
                header[name] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": shape,
                                "data_offsets": [offset, offset + nbytes]}
                offset += nbytes
            encoded = json.dumps(header, separators=(",", ":")).encode()
            encoded += b" " * (-len(encoded) % 8)
            fd = os.open(out / file_name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, len(encoded).to_bytes(8, "little") + encoded)
            start = 8 + len(encoded)
            self.files.append(fd)
            for name, dtype, shape, nbytes in shard:
                self.slots[name] = (fd, start + header[name]["data_offsets"][0], dtype, shape, nbytes)
                self.weight_map[name] = file_name
        self.total_size = sum(entry[3] for entry in layout)

    def write(self, name: str, tensor, first_row: int = 0) -> None:
        """Write `tensor` as the tensor `name`, or as its rows from `first_row` on."""
        import torch

        fd, offset, dtype, shape, left = self.slots[name]
        if str(tensor.dtype).removeprefix("torch.") != dtype or list(tensor.shape[1:]) != shape[1:] or (
                first_row + (tensor.shape[0] if shape else 1) > (shape[0] if shape else 1)):
            raise RuntimeError(f"{name}: planned {dtype}{shape}, merged {tensor.dtype}{list(tensor.shape)} "
                               f"from row {first_row}")
        check_finite(name, tensor)
        view = memoryview(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        offset += first_row * (len(view) // tensor.shape[0] if shape and tensor.shape[0] else 0)
        written = 0
        while written < len(view):
            written += os.pwrite(fd, view[written:], offset + written)
        if left == len(view):
            del self.slots[name]
        else:
            self.slots[name] = (fd, self.slots[name][1], dtype, shape, left - len(view))

    def close(self) -> None:
        for fd in self.files:
            os.close(fd)
        self.files = []
        if self.slots:
            raise RuntimeError(f"tensors never written: {sorted(self.slots)[:5]}")
        if len(set(self.weight_map.values())) > 1:
            index = {"metadata": {"total_size": self.total_size}, "weight_map": dict(sorted(self.weight_map.items()))}
            (self.out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
