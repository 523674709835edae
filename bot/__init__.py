"""The gptalk Telegram bot (aiogram 3). Built in the next issue; only settings live here now."""
