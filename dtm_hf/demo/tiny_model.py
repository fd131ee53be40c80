"""A tiny Llama and a tokenizer trained on the spot, for the offline demo and the tests (`python -m
dtm_hf.tiny_model OUTPUT_DIR` writes one).

Every linear layer's output width is a multiple of 32 (bitsandbytes' CPU 4-bit kernel asserts otherwise).
The tokenizer carries the default chat template (the Tulu format).
"""

from collections.abc import Iterable
from pathlib import Path

from ..training.chat_template import default_chat_template

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]


def build_tokenizer(texts: Iterable[str], vocab_size: int = 512):
    """Train a byte-level BPE tokenizer on `texts` and wrap it for transformers, chat template included."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        chat_template=default_chat_template(),
    )


def build_tiny_llama(tokenizer, hidden_size: int = 64, num_layers: int = 2, seed: int = 0,
                     num_key_value_heads: int = 4):
    """A randomly initialised Llama (2 layers by default) sized to the tokenizer (vocab rounded up to a multiple of
    32), with 4 attention heads; fewer `num_key_value_heads` make it grouped-query."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=-(-len(tokenizer) // 32) * 32,
        hidden_size=hidden_size,
        intermediate_size=3 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def save_tiny_llama(output_dir: str | Path, texts: Iterable[str], seed: int = 0, **model_kwargs) -> Path:
    """Build the tokenizer and the model and save both (safetensors) into `output_dir`."""
    output_dir = Path(output_dir)
    tokenizer = build_tokenizer(texts)
    model = build_tiny_llama(tokenizer, seed=seed, **model_kwargs)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir

