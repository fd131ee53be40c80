"""Fused kernels for training, checked before any work.

`use_liger_kernel: true` (TRL's SFTConfig) applies Liger's Triton kernels for RoPE, RMSNorm and SwiGLU when training
starts; they need CUDA and the `gpu` extra (`pip install 'dtm-hf[gpu]'`). TRL 1.16 keeps Liger's fused linear
cross-entropy off: its own fused LM head already computes the loss in chunks from `lm_head.weight`, without the
(tokens x vocabulary) logits, which is also why no LoRA adapter may sit on `lm_head`.
"""

from ..errors import DtmError


def check_kernels(training_args, model_args) -> None:
    targets = model_args.lora_target_modules or []
    targets = [targets] if isinstance(targets, str) else targets
    if model_args.use_peft and "lm_head" in targets:
        raise DtmError("lora_target_modules includes lm_head, which would never train: TRL computes the loss from "
                       "lm_head.weight directly (its fused LM head); remove lm_head")
    if not training_args.use_liger_kernel:
        return
    import torch

    if training_args.use_cpu or not torch.cuda.is_available():
        raise DtmError("use_liger_kernel runs Liger's Triton kernels, which need a CUDA GPU; set use_liger_kernel: "
                       "false on this machine")
    from transformers.utils import is_liger_kernel_available

    if not is_liger_kernel_available():
        raise DtmError("use_liger_kernel needs liger-kernel: pip install 'dtm-hf[gpu]' (or set use_liger_kernel: "
                       "false)")
