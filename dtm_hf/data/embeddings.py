"""Sentence embeddings for k-means: a sentence-transformers model, or a static model2vec model distilled from it.

The static backend is ~200x faster on CPU (a token-embedding lookup instead of a transformer pass), which is
what makes k-means over a 300k-row mixture practical without a GPU.
"""

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import DtmError, first_line

BACKENDS = ("transformer", "static")
# The static model reads the same 256-token window that all-MiniLM-L6-v2 (max_seq_length 256) reads; cutting
# the string first spares the tokenizer the rest of long replies (a token is rarely longer than 8 characters).
STATIC_MAX_TOKENS = 256
STATIC_MAX_CHARS = 8 * STATIC_MAX_TOKENS

logger = logging.getLogger(__name__)


def _is_model2vec(model: str) -> bool:
    config = Path(model) / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("model_type") == "model2vec"


def static_cache_dir(model: str) -> Path:
    """Where the model2vec distillation of `model` is kept, keyed by the name and, for a folder, its weights."""
    key = model
    if Path(model).is_dir():
        key += "".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(Path(model).iterdir()))
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return home / "dtm_hf" / "static_embeddings" / f"{Path(model).name}-{digest}"


class Encoder:
    """Encodes texts in batches into L2-normalised float32 vectors, on a GPU when there is one."""

    def __init__(self, model: str, backend: str, batch_size: int):
        self.backend, self.batch_size = backend, batch_size
        try:
            self.model = self._load_static(model) if backend == "static" else self._load_transformer(model)
        except (OSError, ValueError) as err:
            raise DtmError(
                f"cannot load the embedding model {model!r} ({type(err).__name__}: {first_line(err)}); "
                "pass a local folder or a Hub id that can be downloaded with --embedding_model"
            ) from err

    @staticmethod
    def _load_transformer(model: str):
        import torch
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(model, device="cuda" if torch.cuda.is_available() else "cpu")

    @staticmethod
    def _load_static(model: str):
        from model2vec import StaticModel

        if _is_model2vec(model):
            return StaticModel.from_pretrained(model)
        cache = static_cache_dir(model)
        if not (cache / "config.json").is_file():
            from model2vec.distill import distill

            logger.info(f"Distilling a static embedding model from {model} (once; cached in {cache})")
            distilled = distill(model_name=model, pca_dims=256)
            tmp = cache.with_name(cache.name + f".tmp-{os.getpid()}")
            distilled.save_pretrained(tmp)
            tmp.rename(cache)
        return StaticModel.from_pretrained(cache)

    def encode(self, texts: list[str]) -> np.ndarray:
        if self.backend == "static":
            vectors = self.model.encode([t[:STATIC_MAX_CHARS] for t in texts], batch_size=self.batch_size,
                                        max_length=STATIC_MAX_TOKENS)
        else:
            vectors = self.model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True)
        vectors = np.asarray(vectors, dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)

    def encode_chunks(self, chunks: Iterator[list[str]], total: int) -> np.ndarray:
        """Encode an iterator of text chunks into one (total, dim) array, with a progress bar over rows."""
        from tqdm.auto import tqdm

        out, done = None, 0
        with tqdm(total=total, desc=f"Embedding ({self.backend})", unit="rows") as bar:
            for chunk in chunks:
                vectors = self.encode(chunk)
                if out is None:  # the width is the first chunk's: no model-specific dimension query
                    out = np.empty((total, vectors.shape[1]), dtype=np.float32)
                out[done : done + len(chunk)] = vectors
                done += len(chunk)
                bar.update(len(chunk))
        return out
