"""The seed API: the ``GPTalk`` provider class, as the original module defined it."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any, ClassVar

from .auth import MemoryTokenStore
from .client import DEFAULT_BASE_URL, DEFAULT_MODEL, SUBMIT_FIELDS, GPTalkClient
from .prompt import Messages

__all__ = ["GPTalk"]


class GPTalk:
    """Asynchronous provider for the GPTalk API (the original interface).

    ``url`` is read at call time, so ``GPTalk.url = "http://127.0.0.1:8081"``
    redirects every later call. The token lives in process memory, in ``_auth`` (the
    login's ``data`` object) and ``used_times``; setting ``_auth = None`` forces a
    new login. Applications that need a shared token, timeouts or one connection
    pool for many requests should use :class:`~gptalk.GPTalkClient`.
    """

    url: ClassVar[str] = DEFAULT_BASE_URL
    working: ClassVar[bool] = True
    supports_gpt_35_turbo: ClassVar[bool] = True
    _auth: ClassVar[dict[str, Any] | None] = None
    used_times: ClassVar[int] = 0

    _store: ClassVar[MemoryTokenStore | None] = None

    @classmethod
    async def create_async_generator(
        cls,
        model: str,
        messages: Messages,
        proxy: str | None = None,
        **kwargs: Any,
    ) -> AsyncGenerator[str, None]:
        """Yield pieces of the answer to ``messages`` as they are generated.

        An empty ``model`` means ``gpt-3.5-turbo``. Keyword arguments that name
        fields of the submit body (e.g. ``temperature``) override them; other
        keyword arguments are ignored. Raises :class:`~gptalk.GPTalkError`.
        """
        options = {key: value for key, value in kwargs.items() if key in SUBMIT_FIELDS}
        async with (
            GPTalkClient(
                base_url=cls.url,
                model=model or DEFAULT_MODEL,
                proxy=proxy,
                token_store=cls._token_store(),
            ) as client,
            client.stream(messages, options=options) as answer,
        ):
            async for delta in answer:
                yield delta

    @classmethod
    def _token_store(cls) -> MemoryTokenStore:
        # One store per class (a subclass gets its own, holding its own attributes).
        if cls.__dict__.get("_store") is None:
            cls._store = MemoryTokenStore(holder=cls)
        return cls.__dict__["_store"]  # type: ignore[no-any-return]
