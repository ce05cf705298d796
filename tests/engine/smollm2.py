"""Prompts and engine settings shared by the SmolLM2 tests."""

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "Translate to German: 'Good morning, how are you?'",
    "1, 2, 3, 4, 5,",
    "Les fleurs du jardin sont",
    "The three primary colors are",
    "Q: What is 12 * 12?\nA:",
    "日本の首都は",
    "Emojis are fun 🎉 because",
]

# Small enough for a 2-core CI machine, large enough for every prompt here.
ENGINE_KWARGS = {"max_model_len": 512, "cpu_kv_cache_gib": 0.25}
