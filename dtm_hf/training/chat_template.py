"""The chat template a sub-model trains with: the recipe's, the tokenizer's, or dtm-hf's default (Tulu's format)
for a base model that has none. Evaluation formats conversations with the same rule."""

from importlib.resources import files
from pathlib import Path

from ..errors import DtmError, first_line


def default_chat_template() -> str:
    """The template given to base models that have none: Tulu's `<|user|>` / `<|assistant|>` turns."""
    return files("dtm_hf.training").joinpath("templates/chat_template.jinja").read_text()


def load_tokenizer(dtm_args, model_args, training_args, base: str):
    """The base's tokenizer with the chat template to train with; returns (tokenizer, where the template is from)."""
    from transformers import AutoTokenizer
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    try:
        tokenizer = AutoTokenizer.from_pretrained(base, revision=model_args.model_revision,
                                                  trust_remote_code=training_args.trust_remote_code)
    except (OSError, ValueError) as err:
        raise DtmError(f"cannot load the tokenizer of {base}: {first_line(err)}") from err
    if dtm_args.chat_template and training_args.chat_template_path:
        raise DtmError("set either chat_template or chat_template_path, not both")
    template = dtm_args.chat_template
    if template and "{" not in template:
        path = Path(template).expanduser()
        if not path.is_file():
            raise DtmError(f"chat_template {template} is neither a file nor a Jinja template; pass a .jinja file")
        tokenizer.chat_template, origin = path.read_text(), str(path.absolute())
    elif template:
        tokenizer.chat_template, origin = template, "the recipe"
    elif tokenizer.chat_template is None and not training_args.chat_template_path:
        tokenizer.chat_template, origin = default_chat_template(), "dtm-hf default (Tulu format)"
    else:
        origin = training_args.chat_template_path or "the tokenizer"
    if (training_args.assistant_only_loss and tokenizer.chat_template
            and not has_generation_markers(tokenizer.chat_template)):
        try:  # TRL ships training versions (with markers) of the common templates and swaps them in itself
            patched = get_training_chat_template(tokenizer)
        except Exception as err:  # noqa: BLE001 - any failure means TRL has no training version of it
            raise DtmError(f"the chat template from {origin} has no {{% generation %}} markers, which "
                           "assistant_only_loss needs, and TRL knows no training version of it; pass chat_template "
                           "with markers (see dtm_hf/training/templates/chat_template.jinja)") from err
        if patched:
            origin += " (TRL's training version)"
    return tokenizer, origin
