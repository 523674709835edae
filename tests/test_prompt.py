from __future__ import annotations

import pytest

from gptalk import Message, format_prompt


def test_single_message_is_its_content_unchanged() -> None:
    assert format_prompt([{"role": "user", "content": "  Hi\nthere "}]) == "  Hi\nthere "


def test_spec_example() -> None:
    messages: list[Message] = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Hi"},
    ]
    assert format_prompt(messages) == "System: S\nUser: Hi\nAssistant:"


def test_roles_are_capitalized_and_joined_with_newlines() -> None:
    messages: list[Message] = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b\nc"},
        {"role": "USER", "content": "d"},
    ]
    assert format_prompt(messages) == "User: a\nAssistant: b\nc\nUser: d\nAssistant:"


def test_empty_history_is_rejected() -> None:
    with pytest.raises(ValueError, match="empty"):
        format_prompt([])
