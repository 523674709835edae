"""Every Redis key of the bot, built in one place (``P`` = ``REDIS_PREFIX``)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ConversationKey", "Keys"]


@dataclass(frozen=True, order=True)
class ConversationKey:
    """One conversation: a chat, or one forum topic of a chat."""

    chat_id: int
    thread_id: int | None = None

    def __str__(self) -> str:
        return str(self.chat_id) if self.thread_id is None else f"{self.chat_id}:{self.thread_id}"


@dataclass(frozen=True)
class Keys:
    prefix: str = "gptalk"

    def history(self, conversation: ConversationKey) -> str:
        """``P:history:{chat_id}`` or ``P:history:{chat_id}:{thread_id}``."""
        return f"{self.prefix}:history:{conversation}"

    @property
    def auth(self) -> str:
        return f"{self.prefix}:auth"

    @property
    def stats(self) -> str:
        return f"{self.prefix}:stats"

    def user_prompts(self, user_id: int) -> str:
        """Sorted set of a user's recent prompt times (``USER_RATE_LIMIT``)."""
        return f"{self.prefix}:ratelimit:{user_id}"

    def update_claim(self, update_id: int) -> str:
        """Set (NX, ~24 h) by the replica that processes this webhook update."""
        return f"{self.prefix}:update:{update_id}"
