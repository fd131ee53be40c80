"""The chat template a sub-model trains with: the recipe's, else the tokenizer's, else dtm-hf's default (Tulu's
format) for a base model that has none. Any template works: `tokenize.encode_turn` finds the reply and its end of
turn without `{% generation %}` markers. Evaluation gives each model its template by the same rule."""

from importlib.resources import files
from pathlib import Path

from ..errors import DtmError, first_line

DEFAULT_ORIGIN = "dtm-hf default (Tulu format)"


def default_chat_template() -> str:
    """The template given to base models that have none: Tulu's `<|user|>` / `<|assistant|>` turns."""
    return files("dtm_hf.training").joinpath("templates/chat_template.jinja").read_text()


def ensure_chat_template(tokenizer) -> str:
    """Give a tokenizer without a chat template dtm-hf's default; returns where its template comes from."""
    if tokenizer.chat_template:
        return "the tokenizer"
    tokenizer.chat_template = default_chat_template()
    return DEFAULT_ORIGIN


def _template_text(template: str, flag: str) -> tuple[str, str]:
    """(template, origin) from a .jinja file or a template literal."""
    if "{" in template:
        return template, "the recipe"
    path = Path(template).expanduser()
    if not path.is_file():
        raise DtmError(f"{flag} {template} is neither a file nor a Jinja template; pass a .jinja file")
    return path.read_text(), str(path.absolute())


def load_tokenizer(dtm_args, model_args, training_args, base: str):
    """The base's tokenizer with the chat template to train with; returns (tokenizer, where the template is from)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(base, revision=model_args.model_revision,
                                                  trust_remote_code=training_args.trust_remote_code)
    except (OSError, ValueError) as err:
        raise DtmError(f"cannot load the tokenizer of {base}: {first_line(err)}") from err
    if dtm_args.chat_template and training_args.chat_template_path:
        raise DtmError("set either chat_template or chat_template_path, not both")
    if dtm_args.chat_template or training_args.chat_template_path:
        flag = "chat_template" if dtm_args.chat_template else "chat_template_path"
        tokenizer.chat_template, origin = _template_text(dtm_args.chat_template or training_args.chat_template_path,
                                                         flag)
        return tokenizer, origin
    return tokenizer, ensure_chat_template(tokenizer)
