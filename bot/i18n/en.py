"""English."""

from __future__ import annotations

from .texts import Texts

__all__ = ["EN"]

EN = Texts(
    language="en",
    stopped="\n\n⏹ _Stopped._",
    reset="\n\n⏹ _Stopped: the conversation was reset._",
    shutdown="\n\n⏹ _Interrupted: the bot is restarting. Send /retry in a moment._",
    provider_failed=(
        "\n\n⚠️ _Something went wrong while writing this answer. Send /retry to try again._"
    ),
    interrupted_restart="\n\n⚠️ _Interrupted: the bot restarted. Send /retry._",
    notice_timeout=(
        "\n\n⚠️ _{Service} stopped responding, so the answer is incomplete. "
        "Send /retry to try again._"
    ),
    notice_storage=(
        "\n\n⚠️ _I'm temporarily unavailable (storage is down). Send /retry in a minute._"
    ),
    notice_truncated="\n\n✂️ _The answer was cut by {service} ({why})._",
    truncated_by_filter="its content filter",
    truncated_by_length="its length limit",
    notice_cut_off="\n\n⚠️ _The answer was cut off by {service}. Send /retry to try again._",
    notice_auth=(
        "\n\n⚠️ _{Service} refused the bot's credentials, so I cannot answer. "
        "Please tell the bot's admin; /retry once it is fixed._"
    ),
    notice_unavailable="\n\n⚠️ _{Service} is unavailable right now. Send /retry in a minute._",
    notice_unreadable=(
        "\n\n⚠️ _{Service} sent an answer I could not read. Send /retry to try again._"
    ),
    the_model_service="the model service",
    empty_answer="🤷 The model returned an empty answer. Try /retry or rephrase.",
    busy="⏳ I'm still answering your previous messages; send this one again in a moment.",
    busy_group="⏳ I'm still answering earlier questions here; ask again in a moment.",
    slow_down="🐢 You're sending messages faster than I can answer. Try again in {seconds} s.",
    too_long="Your message has {chars} characters; I can take {limit}. Send it as a file.",
    nothing_to_retry="There is nothing to retry yet: send me a message first.",
    restarting=(
        "🔄 The bot is restarting and skipped this message: please send it again in a minute."
    ),
    missed=(
        "⏰ I was offline when you sent this, so I skipped it. "
        "Please send it again if you still need an answer."
    ),
    not_allowed="Sorry, this bot is private. Ask its owner for access.",
    unavailable=("⚠️ I'm temporarily unavailable (storage is down). Please try again in a minute."),
    failed="⚠️ Sorry, something went wrong on my side. Please try again.",
    cmd_new="Start a new conversation",
    cmd_stop="Stop the answer being written",
    cmd_retry="Answer the last message again",
    cmd_help="How to use this bot",
    cmd_ask="Ask me something",
    start="Hi, {name}! 👋\n\n{help}",
    someone="there",
    help=(
        "Send me any message and I'll answer it with {service}, writing the answer as it "
        "comes in. I remember our conversation, so you can ask follow-up questions.\n\n"
        "/new — start a new conversation (also /reset)\n"
        "/stop — stop the answer being written\n"
        "/retry — answer your last message again\n"
        "/help — this message"
    ),
    a_language_model="a language model",
    group_help=(
        "In this group I answer when you mention me, reply to one of my messages, or use "
        "/ask <question>. Reply to someone's message with /ask to ask me about it. "
        "Each group (and each forum topic) is one conversation.\n\n"
        "/new — start a new conversation here (also /reset; chat administrators)\n"
        "/stop — stop the answer being written\n"
        "/retry — answer the last question again"
    ),
    ask_usage="Usage: /ask <question> — or reply to a message with /ask.",
    quote_question="What do you say to this?",
    new_conversation="🆕 New conversation. What would you like to talk about?",
    new_admins_only="Only this chat's administrators can start a new conversation here.",
    admin_check_failed=(
        "⚠️ I couldn't check who administers this chat, so nothing changed. "
        "Please try again in a moment."
    ),
    nothing_to_stop="Nothing to stop: no answer is being written.",
    nothing_of_yours="Nothing to stop: none of the answers being written here is yours.",
    text_only="I can only read text messages. Please send your question as text.",
    unknown_command="I don't know that command. /help lists the ones I do.",
    empty_prompt="Your message is empty. What would you like to ask?",
    group_text_only=(
        "I can only read text. Mention me in a message (or a photo caption) with your question."
    ),
    only_mention="Yes? Write your question after the mention, or reply to me.",
    stop_button="⏹ Stop",
    stop_not_yours="Only the person who asked can stop this answer",
    stop_stale="This answer has already ended",
    stop_done="Stopped.",
    cmd_token="Admin: the shared GPTalk token's state",
    cmd_reset_token="Admin: force a fresh GPTalk login",
    cmd_stats="Admin: usage counters",
    admin_only="⛔ This command is for the bot's admins.",
    admin_private_only="🔒 Admin commands work only in a private chat with me.",
    unknown_time="unknown",
    gptalk_unused="ℹ️ GPTalk is not in use (LLM_PROVIDERS does not list it).",
    no_token_login="🔑 No GPTalk token yet: the next request logs in.",
    no_token="🔑 No GPTalk token yet.",
    token_status=(
        "🔑 Shared GPTalk token\n"
        "Obtained: {obtained}\n"
        "Expires: {expires}{expired}\n"
        "Uses left: {left} of {max_uses}"
    ),
    token_expired=" (expired)",
    token_reset="✅ Token reset: the next request logs in anew.",
    token_none="✅ There was no token: the next request logs in anew.",
    stats=(
        "📊 Statistics (all processes)\n"
        "Requests: {requests}\n"
        "Failures: {failures}\n"
        "GPTalk logins: {logins}\n"
        "Telegram 429s: {throttled}\n"
        "Streaming now: {active}\n\n"
        "Providers, in fallback order:\n"
        "{providers}"
    ),
    stats_provider="{name}: {requests} requests, {failures} failures, {fallbacks} as fallback",
    stats_first_text=", first text after {seconds:.1f} s",
    stats_lag=(
        "\n\nEvent-loop lag, this process (last {window:.0f} s): "
        "p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {max:.0f} ms"
    ),
    stats_lag_none="\n\nEvent-loop lag, this process: no samples yet",
)
