import pytest

from dtm_hf.data.formats import detect_format, reduce_row
from dtm_hf.errors import DtmError

SYSTEM = {"role": "system", "content": "Be brief."}
USER = {"role": "user", "content": "Hi?"}
ASSISTANT = {"role": "assistant", "content": "Hello."}


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        (["messages", "dataset", "id"], "messages"),
        (["conversations", "id"], "sharegpt"),
        (["instruction", "input", "output"], "alpaca"),
        (["prompt", "completion"], "prompt_completion"),
    ],
)
def test_detect_format(columns, expected):
    assert detect_format(columns) == expected


def test_unknown_columns_list_what_was_seen_and_what_is_known():
    with pytest.raises(DtmError) as err:
        detect_format(["question", "answer"])
    message = str(err.value)
    assert "['answer', 'question']" in message
    for name in ("messages", "sharegpt", "alpaca", "prompt_completion"):
        assert name in message


def test_requested_format_needs_its_columns():
    with pytest.raises(DtmError, match="--format alpaca needs the column"):
        detect_format(["messages"], "alpaca")


def test_messages_first_turn_keeps_or_drops_system():
    row = {"messages": [SYSTEM, USER, ASSISTANT, {"role": "user", "content": "More?"},
                        {"role": "assistant", "content": "No."}]}
    assert reduce_row(row, "messages", keep_system=True) == ([SYSTEM, USER, ASSISTANT], None)
    assert reduce_row(row, "messages", keep_system=False) == ([USER, ASSISTANT], None)


def test_sharegpt_speakers_are_mapped():
    row = {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi?"},
                             {"from": "gpt", "value": "Hello."}]}
    assert reduce_row(row, "sharegpt", keep_system=True) == ([SYSTEM, USER, ASSISTANT], None)


def test_alpaca_joins_instruction_and_input():
    row = {"instruction": "Translate.", "input": "chat", "output": "cat"}
    assert reduce_row(row, "alpaca", True)[0] == [{"role": "user", "content": "Translate.\n\nchat"},
                                                  {"role": "assistant", "content": "cat"}]
    row = {"instruction": "Say hi.", "input": "", "output": "hi"}
    assert reduce_row(row, "alpaca", True)[0][0] == {"role": "user", "content": "Say hi."}


def test_prompt_completion_standard_and_conversational():
    assert reduce_row({"prompt": "Hi?", "completion": "Hello."}, "prompt_completion", True) == ([USER, ASSISTANT], None)
    row = {"prompt": [SYSTEM, USER], "completion": [ASSISTANT]}
    assert reduce_row(row, "prompt_completion", False) == ([USER, ASSISTANT], None)


@pytest.mark.parametrize(
    ("row", "fmt", "reason"),
    [
        ({"messages": "just text"}, "messages", "not_a_conversation"),
        ({"messages": [USER]}, "messages", "too_few_messages"),
        ({"messages": [USER, {"role": "tool", "content": "x"}, ASSISTANT]}, "messages", "unknown_role"),
        ({"messages": [SYSTEM, ASSISTANT]}, "messages", "no_user_message"),
        ({"messages": [USER, {"role": "user", "content": "again"}]}, "messages", "no_assistant_reply"),
        ({"messages": [USER, {"role": "assistant", "content": None}]}, "messages", "non_string_content"),
        ({"messages": [{"role": "user", "content": 7}, ASSISTANT]}, "messages", "non_string_content"),
        ({"messages": [USER, {"role": "assistant", "content": "   "}]}, "messages", "empty_content"),
        ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "robot", "value": "x"}]}, "sharegpt",
         "unknown_role"),
        ({"instruction": "", "input": "", "output": "x"}, "alpaca", "empty_content"),
        ({"instruction": "Do it", "input": None, "output": None}, "alpaca", "non_string_content"),
        ({"prompt": [USER], "completion": "Hello."}, "prompt_completion", "not_a_conversation"),
        ({"prompt": "Hi?", "completion": ""}, "prompt_completion", "empty_content"),
    ],
)
def test_skip_reasons(row, fmt, reason):
    assert reduce_row(row, fmt, keep_system=True) == (None, reason)
