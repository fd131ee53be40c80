"""Attention for packed batches: each packed document attends only to itself, at kernel speed.

TRL's bfd packing is padding-free: a batch is ONE row of concatenated documents whose position ids restart at 0,
and TRL's collator adds the document boundaries (`cu_seq_lens_q`, computed on CPU) and the longest document
(`max_length_q`). `--packed_attention` says how the model keeps the documents apart:

  sdpa    transformers' sdpa: a dense block-diagonal mask over the whole row, built at each forward from the
          position ids, so attention costs what it would over one row-long document. Runs everywhere.
  varlen  torch.nn.attention.varlen (torch >= 2.10; CUDA, compute capability 8.0+, bf16 or fp16): flash kernels over
          each document, from the collator's boundaries. On CPU: one SDPA call per document, the same result.
  flex    torch's flex_attention under a document BlockMask built once per forward from the boundaries: compiled
          on CUDA (on CPU it runs unfused and has no backward, so it only serves the tests).
  flash   flash-attn's variable-length kernels through transformers (`flash_attention_3` where flash-attn 3 is
          installed, else `flash_attention_2`); needs the flash-attn package and CUDA.
  auto    on CUDA the first available of varlen, flash, flex; elsewhere sdpa, as before.

varlen and flex are registered with transformers' AttentionInterface as `dtm_varlen` and `dtm_flex`. Names the
mask interface does not know make the model skip building a mask, and with it the host sync that detects packed
position ids; these functions need no mask. Called without boundaries (e.g. `model(input_ids, position_ids)`),
they find the documents from the position ids, with or without a cache; a batch of several rows is taken as one
sequence per row (right padding is harmless to causal attention), and a caller's 4D mask is honoured through sdpa.
"""

import functools
import inspect
import logging
import warnings

from ..errors import DtmError

logger = logging.getLogger(__name__)

CHOICES = ("auto", "varlen", "flex", "flash", "sdpa")
VARLEN, FLEX = "dtm_varlen", "dtm_flex"
AUTO_ORDER = ("varlen", "flash", "flex")  # on CUDA; to be ordered by benchmarks/bench_train_gpu.py's figures
DESCRIPTIONS = {
    "sdpa": "sdpa under a dense block-diagonal mask over the whole packed row",
    "varlen": "torch.nn.attention.varlen, flash kernels over each document",
    "varlen-cpu": "one SDPA call per document (torch's varlen kernels need CUDA)",
    "flex": "flex_attention under a document BlockMask, compiled",
    "flash": "flash-attn's variable-length kernels",
}


def packed_batches(training_args) -> bool:
    """Whether batches are padding-free rows of several documents (TRL's bfd packing, or `padding_free`)."""
    return bool(training_args.padding_free
                or (training_args.packing and training_args.packing_strategy in ("bfd", "bfd_split")))


def _on_cuda(training_args) -> bool:
    import torch

    return not training_args.use_cpu and torch.cuda.is_available()


def _half(training_args, model_args) -> bool:
    return bool(training_args.bf16 or training_args.fp16 or model_args.dtype in ("bfloat16", "float16"))


def unavailable(choice: str, cuda: bool, half: bool) -> str | None:
    """Why `choice` cannot run here, or None."""
    import torch

    if choice == "varlen" and cuda:
        try:
            import torch.nn.attention.varlen  # noqa: F401
        except ImportError:
            return f"torch.nn.attention.varlen needs torch >= 2.10 (installed: {torch.__version__})"
        if torch.cuda.get_device_capability() < (8, 0):
            return "torch's varlen flash kernels need compute capability 8.0 or newer"
        if not half:
            return "torch's varlen flash kernels run in bf16 or fp16: set bf16: true or dtype: bfloat16"
    if choice == "flex":
        try:
            import torch.nn.attention.flex_attention  # noqa: F401
        except ImportError:
            return f"flex_attention needs torch >= 2.5 (installed: {torch.__version__})"
        if not cuda:
            return "flex_attention has no backward pass on CPU"
    if choice == "flash":
        from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available

        if not cuda:
            return "flash-attn runs on CUDA only"
        if not (is_flash_attn_2_available() or is_flash_attn_3_available()):
            return "flash-attn is not installed (pip install flash-attn --no-build-isolation)"
        if not half:
            return "flash-attn runs in bf16 or fp16: set bf16: true or dtype: bfloat16"
    return None


def implementation(choice: str) -> str:
    """The `attn_implementation` a choice trains with."""
    if choice == "flash":
        from transformers.utils import is_flash_attn_3_available

        return "flash_attention_3" if is_flash_attn_3_available() else "flash_attention_2"
    return {"varlen": VARLEN, "flex": FLEX, "sdpa": "sdpa"}[choice]


def resolve_attention(choice: str, training_args, model_args) -> str | None:
    """The `attn_implementation` to train with for `--packed_attention choice`, registered and logged; None keeps
    transformers' default (batches that are not packed)."""
    explicit = model_args.attn_implementation
    if choice != "auto" and explicit:
        raise DtmError(f"set either packed_attention ({choice}) or attn_implementation ({explicit}), not both")
    if explicit:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        register()
        known = ["eager", *ALL_ATTENTION_FUNCTIONS.valid_keys()]
        if explicit not in known and "/" not in explicit:  # "org/repo": a kernel from the Hub
            raise DtmError(f"unknown attn_implementation {explicit!r}; choose one of {', '.join(known)}, or leave it "
                           "unset for packed_attention to choose")
        logger.info(f"Attention: {explicit} (attn_implementation)")
        return explicit
    if not packed_batches(training_args):
        if choice != "auto":
            raise DtmError(f"--packed_attention {choice} is for packed batches: set packing: true (bfd strategy) "
                           "or leave packed_attention: auto")
        return None
    cuda, half = _on_cuda(training_args), _half(training_args, model_args)
    if choice == "auto":
        how, choice = ["auto, on CUDA" if cuda else "auto, without CUDA"], "sdpa"
        for candidate in AUTO_ORDER if cuda else ():
            reason = unavailable(candidate, cuda, half)
            if reason is None:
                choice = candidate
                break
            how.append(f"not {candidate}: {reason}")
        how = "; ".join(how)
    else:
        how = "packed_attention"
        reason = unavailable(choice, cuda, half)
        if reason:
            raise DtmError(f"--packed_attention {choice} cannot run here: {reason}; use auto or sdpa")
    register()
    name = implementation(choice)
    described = DESCRIPTIONS[f"{choice}-cpu" if not cuda and choice == "varlen" else choice]
    logger.info(f"Packed attention: {choice} ({how}): {described} [attn_implementation {name}]")
    return name


def register() -> None:
    """Make `dtm_varlen` and `dtm_flex` known to transformers (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN, varlen_attention_forward)
    AttentionInterface.register(FLEX, flex_attention_forward)


def _documents(query, key, cu_seq_lens_q, max_length_q, position_ids):
    """(boundaries, longest, what they come from) for a one-row packed batch, or None where causal attention over
    each row is right: several rows, decoding with a cache, or a row of one document."""
    import torch

    batch, _, length, _ = query.shape
    if batch != 1 or length == 1 or key.shape[2] != length:
        return None
    if cu_seq_lens_q is not None:
        longest = max_length_q if max_length_q is not None else cu_seq_lens_q.diff().max()
        return cu_seq_lens_q, int(longest), cu_seq_lens_q
    if position_ids is None:
        return None
    positions = position_ids.reshape(-1)[-length:]
    starts = torch.nonzero(torch.diff(positions, prepend=positions[:1] + 1) != 1).flatten()
    if len(starts) == 1:
        return None
    bounds = torch.cat([starts, starts.new_tensor([length])]).to(torch.int32)
    return bounds, int(bounds.diff().max()), position_ids


def _sdpa(module, query, key, value, attention_mask, scaling, dropout, kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  **kwargs)


def _packed_rows(name: str):
    """An attention function for transformers' AttentionInterface from `kernel(query, key, value, documents,
    scaling)`, which attends within each packed document; rows with a mask, or without document boundaries, go to
    transformers' SDPA. Query, key and value come as (batch, heads, tokens, head_dim); the function returns
    (batch, tokens, heads, head_dim)."""

    def wrap(kernel):
        @functools.wraps(kernel)
        def forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, cu_seq_lens_q=None,
                    max_length_q=None, position_ids=None, **kwargs):
            documents = None if attention_mask is not None else _documents(query, key, cu_seq_lens_q, max_length_q,
                                                                           position_ids)
            if documents is None:
                return _sdpa(module, query, key, value, attention_mask, scaling, dropout, kwargs)
            if dropout:
                raise ValueError(f"{name} attention has no dropout; set the model's attention_dropout to 0")
            return kernel(query, key, value, documents, scaling)

        return forward

    return wrap


@_packed_rows(VARLEN)
def varlen_attention_forward(query, key, value, documents, scaling):
    """Causal attention within each packed document: torch's varlen kernels on CUDA, SDPA per document elsewhere."""
    bounds, longest, _ = documents
    q, k, v = (x.transpose(1, 2).reshape(-1, x.shape[1], x.shape[3]) for x in (query, key, value))
    scaling = q.shape[-1] ** -0.5 if scaling is None else scaling
    out = _varlen_cuda(q, k, v, bounds, longest, scaling) if q.is_cuda else _per_document(q, k, v, bounds, scaling)
    return out.to(query.dtype).unsqueeze(0), None


@functools.cache
def _torch_varlen():
    from torch.nn.attention.varlen import varlen_attn

    return varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)


def _varlen_cuda(q, k, v, bounds, longest: int, scaling: float):
    """torch's varlen_attn over (tokens, heads, head_dim), across its signatures: torch 2.10 takes `is_causal`;
    2.11 `window_size` and `scale`; 2.12 adds `enable_gqa`."""
    import torch

    varlen_attn, params = _torch_varlen()
    if q.dtype not in (torch.bfloat16, torch.float16):
        dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None
        if dtype not in (torch.bfloat16, torch.float16):
            raise DtmError("packed_attention varlen runs in bf16 or fp16: set bf16: true or dtype: bfloat16")
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    options = {"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)}
    if "scale" in params:
        options["scale"] = scaling
    elif scaling != q.shape[-1] ** -0.5:
        q = q * (scaling * q.shape[-1] ** 0.5)
    if k.shape[1] != q.shape[1]:
        if "enable_gqa" in params:
            options["enable_gqa"] = True
        else:
            k, v = (x.repeat_interleave(q.shape[1] // x.shape[1], dim=1) for x in (k, v))
    return varlen_attn(q, k, v, bounds, bounds, longest, longest, **options)


def _per_document(q, k, v, bounds, scaling: float):
    """The same attention on any device: one causal SDPA call per document, (tokens, heads, head_dim) in and out."""
    import torch
    from torch.nn.functional import scaled_dot_product_attention

    groups = q.shape[1] // k.shape[1]
    edges = bounds.tolist()
    out = []
    for start, end in zip(edges, edges[1:], strict=False):
        qd, kd, vd = (x[start:end].transpose(0, 1) for x in (q, k, v))
        if groups > 1:
            kd, vd = kd.repeat_interleave(groups, dim=0), vd.repeat_interleave(groups, dim=0)
        out.append(scaled_dot_product_attention(qd, kd, vd, is_causal=True, scale=scaling).transpose(0, 1))
    return torch.cat(out)


@_packed_rows(FLEX)
def flex_attention_forward(query, key, value, documents, scaling):
    """Causal attention within each packed document through flex_attention and a document BlockMask."""
    bounds, _, source = documents
    heads, kv_heads = query.shape[1], key.shape[1]
    gqa = heads != kv_heads
    if gqa and heads & (heads - 1):  # as transformers' flex path: grouped heads only for a power-of-two count
        from transformers.integrations.sdpa_attention import repeat_kv

        key, value, gqa = repeat_kv(key, heads // kv_heads), repeat_kv(value, heads // kv_heads), False
    block_mask = _document_block_mask(bounds, source, query.shape[2], query.device)
    flex = _compiled_flex() if query.is_cuda else _eager_flex
    out = flex(query, key, value, block_mask=block_mask, scale=scaling, enable_gqa=gqa)
    return out.transpose(1, 2).contiguous(), None


_last_mask: list = []  # [(boundaries source, length, device, BlockMask)]: every layer of a forward shares one mask


def _document_block_mask(bounds, source, length: int, device):
    import torch
    from torch.nn.attention.flex_attention import create_block_mask

    if _last_mask and _last_mask[0][0] is source and _last_mask[0][1:3] == (length, device):
        return _last_mask[0][3]
    bounds = bounds.to(device)
    starts = torch.zeros(length, dtype=torch.int32, device=device)
    starts[bounds[1:-1].long()] = 1
    document = starts.cumsum(0)

    def same_document_causal(batch, head, q_index, kv_index):
        return (q_index >= kv_index) & (document[q_index] == document[kv_index])

    mask = create_block_mask(same_document_causal, 1, None, length, length, device=device,
                             _compile=device.type == "cuda")
    _last_mask[:] = [(source, length, device, mask)]
    return mask


@functools.cache
def _compiled_flex():
    import torch
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)


def _eager_flex(*args, **kwargs):
    from torch.nn.attention.flex_attention import flex_attention

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        return flex_attention(*args, **kwargs)
