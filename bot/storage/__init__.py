"""Storage behind small interfaces, each with an in-memory and a Redis implementation."""
