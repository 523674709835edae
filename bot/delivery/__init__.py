"""What goes to Telegram: the scheduler (priorities and budgets, in this process or
in Redis), the streaming editor, rendering, and the journal of answers in flight."""
