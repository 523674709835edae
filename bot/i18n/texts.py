"""Every text the bot shows users, as one typed record per language.

A frozen dataclass rather than gettext: a language that misses a key does not
construct (mypy and the first import both say so), there is no compile step for
``.mo`` files, and call sites read as ``texts.busy``. Values are ``str.format``
templates where they have ``{placeholders}``; those starting with a blank line
end an answer and are Markdown (they are rendered with it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Language", "Texts"]

Language = Literal["en", "ru"]


@dataclass(frozen=True, kw_only=True)
class Texts:
    language: Language  # which one this is (e.g. for records that outlive a process)

    # --- the end of an answer (Markdown, appended to the answer so far) ---------------
    stopped: str
    reset: str
    shutdown: str
    provider_failed: str
    interrupted_restart: str  # bot/delivery/recovery.py INTERRUPTED: an answer cut by a crash
    # A provider cut the answer short; {Service} is {service} starting a sentence.
    notice_timeout: str
    notice_storage: str
    notice_truncated: str
    truncated_by_filter: str
    truncated_by_length: str
    notice_cut_off: str
    notice_auth: str
    notice_unavailable: str
    notice_unreadable: str
    the_model_service: str  # how notices name a service that is not GPTalk

    # --- replies about prompts ------------------------------------------------------------
    empty_answer: str
    busy: str
    busy_group: str
    slow_down: str
    too_long: str  # a prompt (a split paste) over PASTE_MAX_PARTS or PROMPT_MAX_CHARS
    nothing_to_retry: str
    restarting: str
    missed: str  # a message that waited while the bot was offline
    not_allowed: str
    unavailable: str
    failed: str

    # --- commands ---------------------------------------------------------------------------
    cmd_new: str
    cmd_stop: str
    cmd_retry: str
    cmd_help: str
    cmd_ask: str
    start: str
    someone: str  # {name} of /start when the sender is unknown
    help: str
    a_language_model: str  # {service} of help when it is not GPTalk
    group_help: str
    ask_usage: str
    quote_question: str  # the prompt of /ask (or a bare mention) replying to a message
    new_conversation: str
    new_admins_only: str  # /new in a group from someone who does not administer it
    admin_check_failed: str  # Telegram did not say who administers the group
    nothing_to_stop: str
    nothing_of_yours: str

    # --- private chats and groups -------------------------------------------------------
    text_only: str
    unknown_command: str
    empty_prompt: str
    group_text_only: str
    only_mention: str

    # --- the Stop button ----------------------------------------------------------------
    stop_button: str
    stop_not_yours: str
    stop_stale: str
    stop_done: str

    # --- admins -----------------------------------------------------------------------------
    cmd_token: str
    cmd_reset_token: str
    cmd_stats: str
    admin_only: str
    admin_private_only: str  # an admin command in a group, from anyone
    unknown_time: str
    gptalk_unused: str
    no_token_login: str
    no_token: str
    token_status: str
    token_expired: str
    token_reset: str
    token_none: str
    stats: str
    stats_provider: str
    stats_first_text: str
    stats_lag: str
    stats_lag_none: str
