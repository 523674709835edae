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

    def last_prompt(self, conversation: ConversationKey, asker: int) -> str:
        """``P:last_prompt:{c}:{asker}``: the message id of the asker's last prompt in
        the conversation (``bot/storage/last_prompts.py``)."""
        return f"{self.prefix}:last_prompt:{conversation}:{asker}"

    @property
    def auth(self) -> str:
        return f"{self.prefix}:auth"

    @property
    def stats(self) -> str:
        return f"{self.prefix}:stats"

    def user_prompts(self, sender_id: int) -> str:
        """Sorted set of a sender's recent prompt times (``USER_RATE_LIMIT``).

        The sender is a user (positive id) or, for messages sent on behalf of a chat,
        that chat (negative id): the two never collide.
        """
        return f"{self.prefix}:ratelimit:{sender_id}"

    @property
    def journal(self) -> str:
        """Set of the ids of answers in flight (``bot/delivery/journal.py``)."""
        return f"{self.prefix}:journal"

    def journal_entry(self, answer_id: str) -> str:
        """Hash of one answer in flight: its owner and what it has shown so far."""
        return f"{self.prefix}:journal:{answer_id}"

    def owner(self, replica: str) -> str:
        """A live process's lease: its incarnation, expiring unless renewed."""
        return f"{self.prefix}:owner:{replica}"

    def update_claim(self, update_id: int) -> str:
        """Set (NX, ~24 h) by the replica that processes this webhook update."""
        return f"{self.prefix}:update:{update_id}"

    # Telegram's budgets, shared by every process (bot/delivery/redis_budgets.py).

    @property
    def telegram_bot(self) -> str:
        """Sorted set of the bot's calls in the bot-wide window."""
        return f"{self.prefix}:telegram:bot"

    def telegram_bucket(self, chat_id: int) -> str:
        """A private chat's token bucket (GCRA: when it is full again)."""
        return f"{self.prefix}:telegram:bucket:{chat_id}"

    def telegram_window(self, chat_id: int) -> str:
        """Sorted set of a group's calls in its window."""
        return f"{self.prefix}:telegram:window:{chat_id}"

    def telegram_block(self, chat_id: int) -> str:
        """Until when a 429 blocks the chat."""
        return f"{self.prefix}:telegram:block:{chat_id}"

    def telegram_answered(self, chat_id: int) -> str:
        """When the chat's last answer call (first message or edit) went."""
        return f"{self.prefix}:telegram:answered:{chat_id}"

    def line(self, conversation: object) -> tuple[str, str, str, str, str]:
        """A conversation's line (``bot/conversation/redis_line.py``):
        ``P:line:{c}:running`` (sorted set: ticket → lease deadline, ms),
        ``P:line:{c}:waiting`` (sorted set: ticket → message id),
        ``P:line:{c}:alive`` (sorted set: waiting ticket → its own deadline, ms),
        ``P:line:{c}:senders`` (hash: ticket → asker),
        ``P:line:{c}:arriving`` (sorted set: message id on its way → deadline, ms)."""
        base = f"{self.prefix}:line:{conversation}"
        return (
            f"{base}:running",
            f"{base}:waiting",
            f"{base}:alive",
            f"{base}:senders",
            f"{base}:arriving",
        )

    @property
    def line_channel(self) -> str:
        """Pub/sub channel: a conversation's line moved (the message is the conversation)."""
        return f"{self.prefix}:line"

    @property
    def handback(self) -> str:
        """List of prompts a draining replica handed to the others (JSON, oldest first)."""
        return f"{self.prefix}:handback"

    @property
    def handback_channel(self) -> str:
        """Pub/sub channel: a prompt was handed back (the message is empty)."""
        return f"{self.prefix}:handback"

    @property
    def control_channel(self) -> str:
        """Pub/sub channel of commands for every replica (``/stop``, ``/new``)."""
        return f"{self.prefix}:control"

    def control_reply(self, request: str) -> str:
        """List where every replica reports what one command did (expires)."""
        return f"{self.prefix}:control:{request}"

    def paste(self, conversation: ConversationKey, sender: int) -> str:
        """A sender's split pastes being merged (``bot/conversation/redis_paste.py``):
        ``P:paste:{c}:{sender}``, a hash of ``open`` (the id of the paste taking
        pieces) and, per paste id, ``{id}:deadline`` (ms), ``{id}:complete``,
        ``{id}:parts``, ``{id}:chars`` and its pieces ``{id}:1``, ``{id}:2``…"""
        return f"{self.prefix}:paste:{conversation}:{sender}"

    @property
    def paste_channel(self) -> str:
        """Pub/sub channel: a paste got a piece (the message is the paste's id)."""
        return f"{self.prefix}:paste"
