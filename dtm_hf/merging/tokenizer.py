"""The merged model's tokenizer: what mergekit gives a full model, the base's tokenizer files, re-saved with the
sub-models' chat template when the base has another (or none)."""

import shutil
from pathlib import Path

# The files mergekit copies from the base when it keeps the base's tokenizer as it is.
TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer.model",
                   "added_tokens.json", "merges.txt", "chat_template.jinja", "generation_config.json", "chat_template.json")


def save_tokenizer(base_path: Path, chat_template: str | None, out: Path) -> None:
    from transformers import AutoTokenizer

    if not chat_template:
        for name in TOKENIZER_FILES:
            if (base_path / name).is_file():
                shutil.copy(base_path / name, out / name)
        return
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(out)
