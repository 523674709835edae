"""Credentials inside URLs (``http://user:password@proxy:3128``, ``redis://:pw@host``):
which strings to mask, how to name a URL without them, and a check of an http(s) URL
that never quotes it.

Messages name a URL by its scheme, host, port and path only: ``without_userinfo``
takes the ``user:password@`` out of every URL in a text, including the URLs that
aiohttp and other libraries quote in their exceptions.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import unquote, unquote_plus

from yarl import URL

__all__ = ["check_http_url", "url_secrets", "without_userinfo"]

# Up to the last "@" before the path: a password may hold an unencoded "@" (urllib and
# yarl read it so too). Quotes and brackets end it, so that a URL quoted inside a
# message (url='http://…') does not swallow the rest of the line.
_USERINFO: Final = re.compile(r"\b([a-z][a-z0-9+.\-]*://)[^\s/'\"<>()\[\]]*@", re.IGNORECASE)
# Query parameters that carry a credential: Redis's ?password= and ?sentinel_password=,
# the ?api-key= of some OpenAI-compatible gateways.
_SECRET_PARAMETER: Final = re.compile(r"pass|secret|token|key|sig", re.IGNORECASE)


def without_userinfo(text: str) -> str:
    """``text`` with the ``user:password@`` of every URL in it removed:
    ``http://u:pw@127.0.0.1:9/v1`` becomes ``http://127.0.0.1:9/v1``."""
    return _USERINFO.sub(r"\1", text)


def url_secrets(url: str) -> list[str]:
    """The credentials ``url`` carries, to mask wherever they might show: the password
    of its userinfo (as written and decoded) and the values of query parameters such as
    ``password`` or ``sentinel_password``. A URL without a scheme is read too: that is
    how a misconfigured one looks. Empty when it has none. User names alone are left
    out: they are mostly common words, and messages show no userinfo at all."""
    found: list[str] = []
    rest = url.partition("://")[2] or url
    userinfo, at, _host = rest.partition("/")[0].rpartition("@")
    if at:
        password = userinfo.partition(":")[2]
        found += [password, unquote(password)]
    query = url.partition("?")[2].partition("#")[0]
    for parameter in query.split("&"):
        name, _eq, value = parameter.partition("=")
        if _SECRET_PARAMETER.search(unquote_plus(name)):
            found += [value, unquote_plus(value)]
    return list(dict.fromkeys(secret for secret in found if secret))


def check_http_url(value: str) -> None:
    """ValueError, saying why without quoting ``value`` (it may hold credentials),
    unless it is an http(s) URL that aiohttp can use. A malformed one fails here
    rather than at the first request, with an exception quoting it."""
    if not value.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    try:
        host = URL(value).host
    except ValueError as exc:  # yarl's reasons name the problem, not the value
        raise ValueError(f"is not a valid URL ({exc})") from None
    if not host or any(c.isspace() for c in host):
        raise ValueError("is not a valid URL (no host name)")
