"""Who answers when: each conversation's line of prompts (one answer at a time in a
private chat, several people at once in a group) and the gate that keeps arrival
order up to taking a place in it."""
