"""The prompt of a request as the engine will see it: token ids, cut into hashed blocks."""

from typing import Any

from fleetlm.engine.core.block_hash import extend_block_hashes
from fleetlm.router.tokenizer import RouterTokenizer


class PromptHasher:
    """Tokenizes prompts with the served model's tokenizer, as the engine's front end does:
    completions encode the text with special tokens, chats render the model's template and
    encode it without. Without a tokenizer only token-id prompts can be hashed."""

    def __init__(self, tokenizer_path: str | None, block_size: int) -> None:
        self.block_size = block_size
        self.tokenizer = None if tokenizer_path is None else RouterTokenizer(tokenizer_path)

    def block_hashes(self, path: str, body: dict[str, Any]) -> list[bytes]:
        """Hashes of the full blocks of the (first) prompt; [] when it cannot be known."""
        try:
            token_ids = self._token_ids(path, body)
        except Exception:  # a bad request: the replica answers it with the precise error
            return []
        if not token_ids:
            return []
        return extend_block_hashes([], token_ids, self.block_size)

    def _token_ids(self, path: str, body: dict[str, Any]) -> list[int] | None:
        if path.endswith("/chat/completions"):
            if self.tokenizer is None or body.get("chat_template") is not None:
                return None
            text = self.tokenizer.render_chat(
                body["messages"], body.get("add_generation_prompt", True)
            )
            return self.tokenizer.encode(text, add_special_tokens=False)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
            prompt = prompt[0]  # a batch: routed by its first prompt
        if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            return prompt
        if isinstance(prompt, str) and self.tokenizer is not None:
            return self.tokenizer.encode(prompt)
        return None
