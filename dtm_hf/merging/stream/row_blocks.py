"""mergekit's merge of one tensor, run block of rows by block of rows.

For linear, task arithmetic and TIES (once each task vector's top k is chosen) a row of the merged tensor depends
only on the same row of every input. So mergekit's own merge task runs here on blocks of rows of the K inputs, each
input's rows computed on the fly by the loaders: memory is K blocks rather than K whole tensors, and each block stays
in cache through mergekit's dozen element-wise passes. TIES first needs each task vector whole to choose its top k;
that runs one sub-model at a time and keeps only the rule (`top_k.top_k_rule`), which each block then applies.
"""

from ..methods import METHODS
from .top_k import sparsify_block, top_k_rule

# CPU matmul over fewer than about 12 rows takes other kernels, whose rounding differs from the full product's;
# blocks of 16 rows or more, wherever they start, reproduce the full product's rows bit for bit.
MIN_ROWS = 16


def row_blocks(rows: int, row_elements: int, block_elements: int) -> list[tuple[int, int]]:
    """[start, stop) row ranges of about `block_elements` each; none shorter than MIN_ROWS unless it is all."""
    step = max(MIN_ROWS, block_elements // max(1, row_elements))
    starts = list(range(0, rows, step)) or [0]
    if len(starts) > 1 and rows - starts[-1] < MIN_ROWS:
        starts.pop()
    return [(start, stop) for start, stop in zip(starts, [*starts[1:], rows], strict=True)]


class RowBlockMerge:
    """One output tensor: the planned mergekit task and its inputs as {model: (LoadTensor, loader, source name)}."""

    def __init__(self, task, inputs: dict, shape, device: str):
        self.task, self.inputs, self.shape, self.device = task, inputs, tuple(shape), device

    @classmethod
    def plan(cls, save, loaders, base, device: str):
        """The block-wise form of a planned SaveTensor, or None where it must run whole (other methods, rescaled
        sparsification, vocabulary surgery, a scalar, a tensor missing from the base)."""
        from mergekit.io.tasks import GatherTensors
        from mergekit.merge_methods.task_adapter import ExecuteMergeMethodTask

        task = save.tensor_task
        method = METHODS.get(getattr(task, "method_name", None))
        if not (isinstance(task, ExecuteMergeMethodTask) and method and method.row_blocks
                and isinstance(task.gather_tensors, GatherTensors) and not task.parameters.get("rescale", False)):
            return None
        inputs = {}
        for load in task.gather_tensors.arguments().values():
            source = base.resolve(load.tensor, load.aliases, load.tied_names)
            if source is None:
                return None
            inputs[load.model] = (load, loaders[load.model], source)
        shape = base.header(next(iter(inputs.values()))[2])[1]
        return cls(task, inputs, shape, device) if len(shape) else None

    def _rows(self, model, start: int, stop: int):
        """`model`'s rows [start, stop) of the tensor, as mergekit's LoadTensor would give them."""
        from mergekit.common import dtype_from_name

        load, loader, source = self.inputs[model]
        tensor = loader.get_rows(source, start, stop, self.device)
        if load.dtype and tensor.dtype != dtype_from_name(load.dtype):
            tensor = tensor.to(dtype_from_name(load.dtype))
        return tensor

    def run(self, block_elements: int):
        """Yield (first row, merged rows) block by block."""
        import math

        from mergekit.common import dtype_from_name

        row_elements = math.prod(self.shape[1:])
        blocks = row_blocks(self.shape[0], row_elements, block_elements)
        if not METHODS[self.task.method_name].top_k:
            for start, stop in blocks:
                yield start, self.task.execute(tensors={m: self._rows(m, start, stop) for m in self.inputs})
            return
        base_model = self.task.base_model
        dtype = self._merge_dtype(*blocks[0])
        rules = {model: self._top_k(model, dtype, blocks, row_elements) for model in self.inputs if model != base_model}
        # mergekit gets each block's task vectors already sparsified (each keeps its top k, so mergekit's own
        # sparsification keeps everything) over a zero base, and returns the merged task vector; the base is added
        # back here as mergekit adds it, then cast as it casts.
        task = self.task.model_copy(update={"out_dtype": None, "input_parameters": {
            model: {**params, "density": 1.0} for model, params in self.task.input_parameters.items()}})
        out_dtype = dtype_from_name(self.task.out_dtype)
        for start, stop in blocks:
            base = self._rows(base_model, start, stop).to(dtype)
            tensors = {base_model: base.new_zeros(()).expand(base.shape)}
            for model, rule in rules.items():
                delta = self._rows(model, start, stop).to(dtype) - base
                tensors[model] = delta if rule is None else sparsify_block(delta, start * row_elements, *rule)
            merged = (base + task.execute(tensors=tensors)).to(dtype)
            yield start, merged if out_dtype is None else merged.to(out_dtype)

    def _merge_dtype(self, start: int, stop: int):
        """The dtype mergekit merges in: the configuration's, or the inputs' promoted to one."""
        import torch
        from mergekit.common import dtype_from_name

        if self.task.dtype:
            return dtype_from_name(self.task.dtype)
        dtypes = [self._rows(model, start, min(stop, start + 1)).dtype for model in self.inputs]
        dtype = dtypes[0]
        for other in dtypes[1:]:
            dtype = torch.promote_types(dtype, other)
        return dtype

    def _top_k(self, model, dtype, blocks, row_elements):
        """The TIES top-k rule of `model`'s task vector (None: keep all), as mergekit's sparsify would choose it."""
        import math

        import torch

        density = self.task.input_parameters[model]["density"]
        numel = math.prod(self.shape)
        if density >= 1:
            return None
        if density <= 0 or numel == 0:
            return math.inf, -1
        magnitudes = torch.empty(numel, dtype=torch.float32, device=self.device)
        for start, stop in blocks:
            base = self._rows(self.task.base_model, start, stop).to(dtype)
            out = magnitudes[start * row_elements:stop * row_elements].view(base.shape)
            if dtype == torch.float32:
                torch.sub(self._rows(model, start, stop).to(dtype), base, out=out).abs_()
            else:
                out.copy_(self._rows(model, start, stop).to(dtype) - base).abs_()
        return top_k_rule(magnitudes, max(1, int(density * numel)), self.inputs[model][2])
