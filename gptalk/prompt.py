"""Turning a chat history into GPTalk's single prompt string."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, TypedDict

__all__ = ["Message", "Messages", "format_prompt"]


class Message(TypedDict):
    """One chat message, as in the OpenAI chat format."""

    role: Literal["system", "user", "assistant"] | str
    content: str


Messages = Sequence[Message]


def format_prompt(messages: Messages) -> str:
    """Format ``messages`` the way GPTalk expects them.

    A single message is sent as its content, unchanged. Several messages become
    ``Role: content`` lines followed by ``Assistant:`` so that the model answers as
    the assistant::

        >>> format_prompt([{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}])
        'System: S\\nUser: Hi\\nAssistant:'
    """
    if not messages:
        raise ValueError("messages must not be empty")
    if len(messages) == 1:
        return messages[0]["content"]
    lines = [f"{message['role'].capitalize()}: {message['content']}" for message in messages]
    return "\n".join(lines) + "\nAssistant:"
