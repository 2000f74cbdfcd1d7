"""The prompts the decoder interop checks decode greedily on both sides (scripts/check_*.py)."""
PROMPTS = [
    "What is the secret word?",
    "这件衣服什么时候发货？",
    "Write a headline for: Shares in the bank fell after profits dropped sharply.",
    "Name three rivers.",
]
