"""Merge LoRA sub-models without materialising them: mergekit's planner and methods over on-the-fly tensors.

mergekit reads `base+adapter` references by first writing a merged copy of the base per adapter to a cache (K
full models written and read back). Here the same merge configuration is planned by mergekit, and each
`base+adapter` reference is served by a loader that computes W + scale * B @ A when a tensor (or a block of its
rows) is asked for, from the base read once and the adapters held in memory. mergekit's own merge tasks merge each
tensor: linear, task arithmetic and TIES block of rows by block of rows (`row_blocks`), other methods whole. The
results are streamed into safetensors shards whose headers are laid out before the run, so no shard is ever held in
memory.
"""

import json
import math
import os
from pathlib import Path

from .submodels import ADAPTER_WEIGHTS, PEFT_PREFIX, SubModel

SAFETENSORS_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64"}
STORED_DTYPES = {code: name for name, code in SAFETENSORS_DTYPES.items()}
DEFAULT_SHARD_BYTES = 5 * 2**30
# Methods that add merged task vectors to the base: where no adapter changes a tensor, every task vector is zero
# and they return the base's tensor exactly (base + 0), so it is copied rather than sorted, masked and summed.
TASK_VECTOR_METHODS = {"ties", "task_arithmetic", "dare_ties"}
BLOCK_ELEMENTS = {"cpu": 2**18, "cuda": 2**25}  # elements per input in one block of rows: cache-sized on a CPU


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
        from safetensors.torch import load_file

        tensors = load_file(submodel.path / ADAPTER_WEIGHTS)
        modules = submodel.lora_modules()
        self.base, self.index, self.scale = base, base.index, submodel.scale
        self.loras = {weight: (tensors[a], tensors[b]) for weight, (a, b) in modules.items()}
        lora_keys = {key for pair in modules.values() for key in pair}
        self.saved = {key.removeprefix(PEFT_PREFIX): t for key, t in tensors.items() if key not in lora_keys}
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


def _source_name(save, loader: SharedBaseLoader) -> str:
    """The base tensor an output tensor comes from."""
    info = save.tensor_task.output_weight
    return loader.resolve(info.name, info.aliases, info.tied_names)


def _layout(saves, loader: SharedBaseLoader, dtype: str | None) -> list[tuple[str, str, list[int], int]]:
    """(name, dtype, shape, bytes) of every output tensor, from the base's headers (merges keep the shapes)."""
    import torch

    layout = []
    for save in saves:
        stored, shape = loader.header(_source_name(save, loader))
        out_dtype = save.dtype or dtype or STORED_DTYPES[stored]
        layout.append((save.tensor_name, out_dtype, list(shape), math.prod(shape) * getattr(torch, out_dtype).itemsize))
    return layout


def stream_merge(config, out: Path, base_path: Path, submodels: list[SubModel], seed: int,
                 max_shard_bytes: int = DEFAULT_SHARD_BYTES, device: str = "cpu") -> None:
    """Run the mergekit configuration `config` (whose LoRA references are `base_path+submodel.path`) into `out`,
    with the arithmetic on `device`."""
    import transformers
    from mergekit.architecture import get_architecture_info
    from mergekit.common import dtype_from_name
    from mergekit.graph import Executor
    from mergekit.io.tasks import LoaderCache, SaveTensor
    from mergekit.options import MergeOptions
    from mergekit.plan import MergePlanner
    from tqdm.auto import tqdm

    from .row_blocks import RowBlockMerge
    from .top_k import stable_magnitude

    options = MergeOptions(random_seed=seed, device=device)
    transformers.trainer_utils.set_seed(seed)
    by_path = {str(sub.path): sub for sub in submodels}
    cache = LoaderCache()
    cache.loaders.clear()
    cache.setup(options)
    base = SharedBaseLoader(base_path)
    writer = None
    try:
        for model in config.referenced_models():
            cache.loaders[model] = base if model.lora is None else LoraTensorLoader(base, by_path[model.lora.path])
        arch_info = get_architecture_info(config, options)
        out_config = (config.base_model or config.referenced_models()[0]).config()
        if config.out_dtype or config.dtype:
            out_config.dtype = config.out_dtype or config.dtype
        # mergekit plans the merge to disk; its save tasks name each output tensor and the task computing it,
        # which run here with our loaders and go to our streaming writer instead of mergekit's (which holds a
        # whole shard in memory).
        planned = MergePlanner(config, arch_info, options=options, out_model_config=out_config).plan_to_disk(str(out))
        saves = [save for save in planned if isinstance(save, SaveTensor)]
        copied = []
        if config.merge_method in TASK_VECTOR_METHODS:
            changed = set().union(*(set(loader.loras) | set(loader.saved) for loader in cache.loaders.values()
                                    if isinstance(loader, LoraTensorLoader)))
            copied = [save for save in saves if _source_name(save, base) not in changed]
        plans = {save: RowBlockMerge.plan(save, cache.loaders, base, device) for save in saves if save not in copied}
        whole = {save.tensor_task: save for save, block in plans.items() if block is None}
        blockwise = {save: block for save, block in plans.items() if block is not None}
        executor = Executor(list(whole), math_device=device, storage_device="cpu") if whole else None
        ordered = []
        if executor:
            wanted = set(executor.targets)
            ordered = [whole[handle.task()] for handle in executor.schedule.tasks if handle in wanted]
        layout = _layout(copied + list(blockwise) + ordered, base, config.out_dtype or config.dtype)
        writer = StreamingShardWriter(out, layout, max_shard_bytes)
        progress = tqdm(total=len(layout), desc="Merging tensors", unit="tensor")

        def cast(tensor, *dtypes):  # the casts mergekit's load and save tasks would apply
            for dtype in dtypes:
                tensor = tensor.to(dtype_from_name(dtype)) if dtype else tensor
            return tensor

        for save in copied:
            writer.write(save.tensor_name, cast(base.get_tensor(_source_name(save, base)), config.dtype, save.dtype))
            progress.update()
        block_elements = BLOCK_ELEMENTS["cuda" if device.startswith("cuda") else "cpu"]
        for save, block in blockwise.items():
            for first_row, rows in block.run(block_elements):
                if rows is None:
                    raise RuntimeError(f"mergekit gave no value for {save.tensor_name}")
                writer.write(save.tensor_name, cast(rows, save.dtype), first_row)
            progress.update()
        if executor:
            with stable_magnitude():
                for task, tensor in executor.run(quiet=True):
                    save = whole[task]
                    if tensor is None:
                        raise RuntimeError(f"mergekit gave no value for {save.tensor_name}")
                    writer.write(save.tensor_name, cast(tensor, save.dtype))
                    del tensor
                    progress.update()
        progress.close()
        writer.close()
        out_config.save_pretrained(out)
    finally:
        if writer is not None and writer.files:
            for fd in writer.files:
                os.close(fd)
        cache.loaders.clear()
