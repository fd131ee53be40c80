"""The merge run by mergekit itself (`--lora_route mergekit`, and DARE under `auto`): its Python API, offline,
with a LoRA merge cache made for this merge alone."""

import shutil
import tempfile
from pathlib import Path

from .stream.top_k import stable_magnitude
from .stream.writer import check_finite


def run_mergekit(config, out: Path, seed: int, shard_bytes: int, device: str) -> None:
    """Run the mergekit configuration `config` into `out`. mergekit keys its LoRA cache by path alone, so a cache
    shared between merges would serve a retrained adapter stale: this one is made here and deleted after."""
    from unittest import mock

    from mergekit.io.tasks import LoaderCache
    from mergekit.io.tensor_writer import TensorWriter
    from mergekit.merge import MergeOptions, run_merge

    save_tensor = TensorWriter.save_tensor

    def checked_save(self, name, tensor, *args, **kwargs):  # each merged tensor checked as the streaming route does
        check_finite(name, tensor)
        return save_tensor(self, name, tensor, *args, **kwargs)

    # Inside the temporary output folder: a killed merge's cache goes with it (outputs.remove_stale).
    cache = Path(tempfile.mkdtemp(prefix=".lora-merge-cache-", dir=out))
    # mergekit keeps its loaders in a class-level dict keyed by reference: one left from an earlier merge in this
    # process would read an older (deleted) cache. Start and end empty.
    LoaderCache().loaders.clear()
    try:
        options = MergeOptions(lora_merge_cache=str(cache), write_model_card=False, random_seed=seed,
                               out_shard_size=shard_bytes, device=device)
        with stable_magnitude(), mock.patch.object(TensorWriter, "save_tensor", checked_save):
            run_merge(config, str(out), options=options)
    finally:
        LoaderCache().loaders.clear()
        shutil.rmtree(cache, ignore_errors=True)
