"""An async client for the GPTalk text-generation API.

Two ways in:

* :class:`GPTalkClient` — for applications: one HTTP session, configurable
  timeouts and proxy, and a token store (in memory, or in Redis shared by every
  process). ``client.stream(messages)`` yields text deltas; ``client.complete``
  returns the whole answer.
* :class:`GPTalk` — the original provider interface,
  ``GPTalk.create_async_generator(model, messages)``.
"""

from .auth import (
    LoginResult,
    MemoryTokenStore,
    RedisTokenStore,
    TokenStatus,
    TokenStore,
)
from .client import DEFAULT_BASE_URL, DEFAULT_MODEL, AnswerStream, GPTalkClient
from .errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    GPTalkError,
    ProtocolError,
    StreamInterruptedError,
    TokenStoreError,
)
from .prompt import Message, Messages, format_prompt
from .provider import GPTalk

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MODEL",
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AnswerStream",
    "AuthenticationError",
    "GPTalk",
    "GPTalkClient",
    "GPTalkError",
    "LoginResult",
    "MemoryTokenStore",
    "Message",
    "Messages",
    "ProtocolError",
    "RedisTokenStore",
    "StreamInterruptedError",
    "TokenStatus",
    "TokenStore",
    "TokenStoreError",
    "format_prompt",
]
