"""Chats and forum topics where the bot may not write, as far as this process knows.

Learnt from a refused send (the bot was restricted, a topic closed) and from the
bot's ``my_chat_member`` updates; forgotten when an update says the bot may write
again (rights restored, topic reopened). While a conversation is listed, prompts
there are not answered at all: an answer nobody can see would only cost GPTalk
requests. Each process keeps its own list: a replica that has not learnt it yet
pays for one refused answer.
"""

from __future__ import annotations

from bot.storage.keys import ConversationKey

__all__ = ["Unwritable"]


class Unwritable:
    def __init__(self) -> None:
        self._chats: set[int] = set()
        self._topics: set[ConversationKey] = set()

    def add(self, conversation: ConversationKey) -> None:
        """A whole chat (no ``thread_id``), or one of its topics."""
        if conversation.thread_id is None:
            self._chats.add(conversation.chat_id)
        else:
            self._topics.add(conversation)

    def covers(self, conversation: ConversationKey) -> bool:
        return conversation.chat_id in self._chats or conversation in self._topics

    def restore(self, conversation: ConversationKey) -> bool:
        """The bot may write there again (a whole chat: in all its topics too).
        Returns whether it was listed."""
        if conversation.thread_id is not None:
            listed = conversation in self._topics
            self._topics.discard(conversation)
            return listed
        topics = {topic for topic in self._topics if topic.chat_id == conversation.chat_id}
        listed = conversation.chat_id in self._chats or bool(topics)
        self._chats.discard(conversation.chat_id)
        self._topics -= topics
        return listed
