"""Where the bot may not write: a chat covers its topics; restoring a chat restores them."""

from __future__ import annotations

from bot.storage.keys import ConversationKey
from bot.unwritable import Unwritable

CHAT, TOPIC, OTHER_TOPIC = ConversationKey(-100), ConversationKey(-100, 7), ConversationKey(-100, 8)


def test_a_topic_is_listed_alone() -> None:
    unwritable = Unwritable()
    unwritable.add(TOPIC)
    assert unwritable.covers(TOPIC)
    assert not unwritable.covers(OTHER_TOPIC)
    assert not unwritable.covers(CHAT)
    assert unwritable.restore(TOPIC)
    assert not unwritable.covers(TOPIC)
    assert not unwritable.restore(TOPIC)


def test_a_chat_covers_its_topics_and_restoring_it_restores_them() -> None:
    unwritable = Unwritable()
    unwritable.add(CHAT)
    unwritable.add(TOPIC)
    assert unwritable.covers(OTHER_TOPIC)
    assert not unwritable.covers(ConversationKey(-101))
    assert unwritable.restore(CHAT)  # rights are back: try everywhere again
    assert not unwritable.covers(TOPIC)
    assert not unwritable.covers(CHAT)
    assert not unwritable.restore(CHAT)
