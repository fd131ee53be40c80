"""A first turn as tokens and labels, with any chat template: the loss covers the assistant reply and the token
that ends its turn, nothing before it and nothing after it. Training and evaluation both encode rows here, so
they score exactly the same tokens.

No `{% generation %}` markers are needed. The prompt (system and user messages) is rendered with the template's
generation prompt, the whole turn without it; the reply starts where the two token sequences part. It ends with
the first special token after the reply's text (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`, `<|end|>`, `</s>`,
...): what the model must emit to stop. Whatever the template writes after that token (a newline, an EOS after
`<|end|>`) is cut. A template that refuses a system message gets it folded into the user message.
"""

import logging
from dataclasses import dataclass

from ..errors import DtmError, first_line

logger = logging.getLogger(__name__)
IGNORE = -100
# Why a row was not encoded whole; a skipped row is left out, a truncated one is kept cut at max_length.
SKIPPED, TRUNCATED = "prompt_too_long", "reply_truncated"


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    outcome: str | None = None  # None, TRUNCATED or SKIPPED


def _fold_system(messages: list[dict]) -> list[dict]:
    system, user, *rest = messages
    return [{"role": "user", "content": f"{system['content']}\n\n{user['content']}"}, *rest]


def _render(tokenizer, messages: list[dict]) -> tuple[str, str, list[dict]]:
    """(prompt text, whole-turn text, the messages as rendered) through the tokenizer's chat template."""
    from jinja2.exceptions import TemplateError

    try:
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        return prompt, tokenizer.apply_chat_template(messages, tokenize=False), messages
    except TemplateError as err:
        if messages[0]["role"] == "system":  # e.g. Gemma, Mistral: "System role not supported"
            return _render(tokenizer, _fold_system(messages))
        raise DtmError(f"the chat template cannot render a first turn ({first_line(err)}); pass chat_template with "
                       "one that takes user and assistant messages") from err


def stop_ids(tokenizer) -> set[int]:
    """The special tokens: one of them ends an assistant turn."""
    added = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    return set(tokenizer.all_special_ids) | added


def encode_turn(tokenizer, messages: list[dict], max_length: int, assistant_only: bool = True,
                stops: set[int] | None = None) -> Encoded:
    """`messages` (a first turn: [system], user, assistant) as input ids and labels, at most `max_length` tokens.
    With `assistant_only` false every token is labelled."""
    prompt_text, text, messages = _render(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    start = next((i for i, (a, b) in enumerate(zip(prompt_ids, ids, strict=False)) if a != b),
                 min(len(prompt_ids), len(ids)))
    reply = messages[-1]["content"].strip()
    shared = next((i for i, (a, b) in enumerate(zip(prompt_text, text, strict=False)) if a != b),
                  min(len(prompt_text), len(text)))
    at = text.find(reply, shared) if reply else -1
    if at < 0:  # the template rewrote the reply's text: label the whole completion, as TRL would
        end = len(ids) - 1
    else:
        reply_end = at + len(reply)
        last = max((i for i, (a, b) in enumerate(offsets) if a < reply_end and b > a), default=start)
        stops = stop_ids(tokenizer) if stops is None else stops
        end = next((i for i in range(last + 1, len(ids)) if ids[i] in stops), last)
    ids = ids[: end + 1]
    labels = list(ids) if not assistant_only else [IGNORE] * start + ids[start:]
    if start >= max_length:
        return Encoded([], [], SKIPPED)
    if len(ids) > max_length:
        return Encoded(ids[:max_length], labels[:max_length], TRUNCATED)
    return Encoded(ids, labels)


def encode_rows(data, tokenizer, max_length: int, assistant_only: bool = True):
    """A dataset of first turns (`messages`) as `input_ids` and `labels` for TRL; rows whose prompt alone fills
    `max_length` are dropped. Returns (dataset, {outcome: rows}) counting skipped and truncated rows."""
    stops = stop_ids(tokenizer)

    def encode(batch):
        out = {"input_ids": [], "labels": [], "outcome": []}
        for messages in batch["messages"]:
            row = encode_turn(tokenizer, messages, max_length, assistant_only, stops)
            out["input_ids"].append(row.input_ids)
            out["labels"].append(row.labels)
            out["outcome"].append(row.outcome or "")
        return out

    encoded = data.map(encode, batched=True, remove_columns=data.column_names, desc="Tokenizing first turns")
    outcomes = encoded["outcome"]
    counts = {name: outcomes.count(name) for name in (SKIPPED, TRUNCATED) if outcomes.count(name)}
    if SKIPPED in counts:
        encoded = encoded.filter(lambda outcome: outcome != SKIPPED, input_columns="outcome")
    return encoded.remove_columns("outcome"), counts
