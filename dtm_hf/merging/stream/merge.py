"""Merge LoRA sub-models without materialising them: mergekit's planner and methods over on-the-fly tensors.

mergekit reads `base+adapter` references by first writing a merged copy of the base per adapter to a cache (K
full models written and read back). Here the same merge configuration is planned by mergekit, and each
`base+adapter` reference is served by a loader that computes W + scale * B @ A when a tensor (or a block of its
rows) is asked for, from the base read once and the adapters held in memory. mergekit's own merge tasks merge each
tensor: linear, task arithmetic and TIES block of rows by block of rows (`row_blocks`), other methods whole. The
results are streamed into safetensors shards whose headers are laid out before the run, so no shard is ever held in
memory.
"""

import math
import os
from pathlib import Path

from ..methods import METHODS
from ..submodels import SubModel
from .loaders import LoraTensorLoader, SharedBaseLoader
from .row_blocks import RowBlockMerge
from .top_k import stable_magnitude
from .writer import STORED_DTYPES, StreamingShardWriter

BLOCK_ELEMENTS = {"cpu": 2**18, "cuda": 2**25}  # elements per input in one block of rows: cache-sized on a CPU


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


def stream_merge(config, out: Path, base_path: Path, submodels: list[SubModel], seed: int, max_shard_bytes: int,
                 device: str) -> None:
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
        # A method that adds merged task vectors to the base returns the base's tensor exactly (base + 0) where no
        # adapter changes it: that tensor is copied rather than sorted, masked and summed.
        if METHODS[config.merge_method].task_vectors:
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
