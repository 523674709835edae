"""What goes to Telegram: the journal of answers in flight and the recovery that ends
answers a crashed process left half-written."""
