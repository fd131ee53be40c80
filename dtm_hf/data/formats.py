"""Instruction-data formats and their reduction to a first turn: [system], user, assistant.

Every format is detected from the dataset's columns. A row that yields no usable first turn is skipped with a
reason (one of SKIP_REASONS) instead of failing the run.
"""

from collections.abc import Callable

from ..errors import DtmError

# Format -> the columns that identify it, checked in this order by `detect_format`.
FORMAT_COLUMNS = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
}
SKIP_REASONS = (
    "not_a_conversation",
    "too_few_messages",
    "unknown_role",
    "no_user_message",
    "no_assistant_reply",
    "non_string_content",
    "empty_content",
)
# ShareGPT speakers -> chat roles.
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant"}
CHAT_ROLES = ("system", "user", "assistant")


class Skip(Exception):
    """A row that yields no first turn; `args[0]` is one of SKIP_REASONS."""


def detect_format(columns: list[str], requested: str = "auto") -> str:
    if requested != "auto":
        missing = [c for c in FORMAT_COLUMNS[requested] if c not in columns]
        if missing:
            raise DtmError(f"--format {requested} needs the column(s) {missing}; the data has {sorted(columns)}")
        return requested
    for name, needed in FORMAT_COLUMNS.items():
        if all(c in columns for c in needed):
            return name
    known = "; ".join(f"{name}: {', '.join(cols)}" for name, cols in FORMAT_COLUMNS.items())
    raise DtmError(f"unknown data format: the columns are {sorted(columns)}; known formats and their columns: {known}")


def _text(value) -> str:
    if not isinstance(value, str):
        raise Skip("non_string_content")
    if not value.strip():
        raise Skip("empty_content")
    return value


def first_turn(messages, keep_system: bool) -> list[dict]:
    """The leading system message (if kept), the first user message and the first assistant reply after it."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise Skip("not_a_conversation")
    if len(messages) < 2:
        raise Skip("too_few_messages")
    turn, user_at = [], None
    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in CHAT_ROLES:
            raise Skip("unknown_role")
        if role == "system" and i == 0:
            if keep_system and isinstance(message.get("content"), str) and message["content"].strip():
                turn.append({"role": "system", "content": message["content"]})
        elif role == "user" and user_at is None:
            turn.append({"role": "user", "content": _text(message.get("content"))})
            user_at = i
        elif role == "assistant" and user_at is not None:
            turn.append({"role": "assistant", "content": _text(message.get("content"))})
            return turn
    raise Skip("no_user_message" if user_at is None else "no_assistant_reply")


def _from_messages(row: dict, keep_system: bool) -> list[dict]:
    return first_turn(row["messages"], keep_system)


def _from_sharegpt(row: dict, keep_system: bool) -> list[dict]:
    conversation = row["conversations"]
    if not isinstance(conversation, list) or not all(isinstance(m, dict) for m in conversation):
        raise Skip("not_a_conversation")
    messages = [{"role": SHAREGPT_ROLES.get(m.get("from"), m.get("from")), "content": m.get("value")}
                for m in conversation]
    return first_turn(messages, keep_system)


def _from_alpaca(row: dict, keep_system: bool) -> list[dict]:
    instruction, extra = _text(row["instruction"]), row.get("input")
    if extra is not None and not isinstance(extra, str):
        raise Skip("non_string_content")
    prompt = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": _text(row["output"])}]


def _from_prompt_completion(row: dict, keep_system: bool) -> list[dict]:
    prompt, completion = row["prompt"], row["completion"]
    if isinstance(prompt, list) or isinstance(completion, list):  # conversational prompt / completion
        if not isinstance(prompt, list) or not isinstance(completion, list):
            raise Skip("not_a_conversation")
        return first_turn(prompt + completion, keep_system)
    return [{"role": "user", "content": _text(prompt)}, {"role": "assistant", "content": _text(completion)}]


REDUCERS: dict[str, Callable[[dict, bool], list[dict]]] = {
    "messages": _from_messages,
    "sharegpt": _from_sharegpt,
    "alpaca": _from_alpaca,
    "prompt_completion": _from_prompt_completion,
}


def reduce_row(row: dict, fmt: str, keep_system: bool) -> tuple[list[dict] | None, str | None]:
    """(first turn, None) for a usable row, (None, reason) for a skipped one."""
    try:
        return REDUCERS[fmt](row, keep_system), None
    except Skip as skip:
        return None, skip.args[0]
