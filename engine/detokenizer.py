"""Token ids -> text, one step at a time: partial characters, stop strings, streaming (torch-free)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Prompt tokens decoded in front of the output, so that the first output token gets the
# leading space a sentencepiece decoder strips from the first token of a text (vLLM uses 5).
NUM_CONTEXT_TOKENS = 5

# What a byte-level or byte-fallback decoder shows for bytes that are not (yet) a character.
REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    """Turns the generated token ids of one sample into text as they arrive.

    NOTE: decoding token by token is wrong twice over: a character may be split across
    byte-level tokens, and sentencepiece decoders drop the leading space of the first token
    they see. So, as in vLLM, we keep a small window of ids: `window[:num_read]` is already
    turned into text (`prefix_text`), the rest is not. Each step decodes the whole window and
    hands out what follows `prefix_text`, unless it ends in U+FFFD (a character still in
    flight), in which case we wait for more tokens. Once handed out, the window slides to the
    unread part. Each step costs two decodes of a few tokens, however long the output is
    (only bytes that never form a character, i.e. garbage output, make the window grow).

    The final text (after `finish()`) equals `tokenizer.decode(output_ids)` for byte-level BPE
    tokenizers; for sentencepiece ones it keeps the leading space of the first output token
    that a plain decode of the output alone would strip (as vLLM does). Decoding always passes
    `clean_up_tokenization_spaces=False`: that clean-up rewrites text across token boundaries,
    which would break the window difference (transformers skips it for BPE anyway).

    A stop string ends the text: `output_text` is cut just before it (just after it with
    `include_stop_str_in_output`). Each step searches only the new text plus the last
    `len(stop) - 1` characters before it; of several matches the earliest start wins (on a tie
    the shorter one, which completes first).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompt_token_ids: Sequence[int],
        *,
        skip_special_tokens: bool = True,
        stop: Sequence[str] = (),
        include_stop_str_in_output: bool = False,
    ) -> None:
        if any(not s for s in stop):
            raise ValueError("stop strings must not be empty")
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.stop = list(stop)
        self.include_stop_str_in_output = include_stop_str_in_output
        self.output_text = ""  # complete characters so far, cut at a stop string
        self.stop_reason: str | None = None  # the stop string that matched
        self._window = list(prompt_token_ids[-NUM_CONTEXT_TOKENS:])
        self._num_read = len(self._window)  # window[:num_read] is decoded as prefix_text
        self._prefix_text = self._decode(self._window)
        self._num_sent_chars = 0  # output_text[:num_sent_chars] went out through take_delta

    @property
    def is_stopped(self) -> bool:
        return self.stop_reason is not None

    def update(self, new_token_ids: Sequence[int]) -> str | None:
        """Append generated tokens; return the stop string that matched (then stop feeding).

        Tokens are taken one at a time, so feeding several at once gives the same text as
        feeding them one by one; tokens after the one that completed a stop string are ignored.
        """
        if self.is_stopped:
            raise RuntimeError(f"update() after stop string {self.stop_reason!r} matched")
        for token_id in new_token_ids:
            self._window.append(token_id)
            self._append_text(self._read_window(allow_partial=False))
            if self.is_stopped:
                break
        return self.stop_reason

    def finish(self) -> str | None:
        """No more tokens will come: add the text still held back as a partial character.

        Output that ends in the middle of a character (e.g. cut by max_tokens) ends in U+FFFD,
        as in `tokenizer.decode`. Idempotent. Returns the stop string that matched, if any.
        """
        if not self.is_stopped:
            self._append_text(self._read_window(allow_partial=True))
        return self.stop_reason

    def take_delta(self, finished: bool) -> str:
        """Text not handed out yet, for streaming.

        While unfinished, the trailing characters that could still begin a stop string are
        held back, so no part of a stop string is ever streamed. When `finished`, `finish()`
        is called and everything is released. All deltas together equal the final text.
        """
        if finished:
            self.finish()
        end = len(self.output_text)
        if not finished and not self.is_stopped:
            end -= num_stop_prefix_chars(self.output_text, self.stop)
        delta = self.output_text[self._num_sent_chars : end]
        self._num_sent_chars = max(self._num_sent_chars, end)
        return delta

    def _read_window(self, allow_partial: bool) -> str:
        """Return the text the unread tokens add ("" while the last character is partial)."""
        if len(self._window) == self._num_read:
            return ""
        text = self._decode(self._window)
        if text.endswith(REPLACEMENT_CHAR) and not allow_partial:
            return ""
        delta = text[len(self._prefix_text) :]
        self._window = self._window[self._num_read :]
        self._num_read = len(self._window)
        self._prefix_text = self._decode(self._window)
        return delta

    def _append_text(self, delta: str) -> None:
        if not delta:
            return
        num_old_chars = len(self.output_text)
        self.output_text += delta
        match = find_stop(self.output_text, self.stop, num_old_chars)
        if match is None:
            return
        index, stop = match
        self.output_text = self.output_text[: index + len(stop) * self.include_stop_str_in_output]
        self.stop_reason = stop

    def _decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(
            token_ids,
            skip_special_tokens=self.skip_special_tokens,
            clean_up_tokenization_spaces=False,
        )


def find_stop(text: str, stop: Sequence[str], num_old_chars: int) -> tuple[int, str] | None:
    """Earliest (index, stop string) in `text` that ends after `text[:num_old_chars]`.

    Only the new characters and the `len(s) - 1` before them are searched: the old text was
    searched before. On a tie the shorter stop string wins (it completes first).
    """
    best: tuple[int, str] | None = None
    for s in stop:
        index = text.find(s, max(0, num_old_chars - len(s) + 1))
        if index != -1 and (best is None or (index, len(s)) < (best[0], len(best[1]))):
            best = (index, s)
    return best


def num_stop_prefix_chars(text: str, stop: Sequence[str]) -> int:
    """Length of the longest end of `text` that is the beginning of a stop string."""
    max_len = max((len(s) for s in stop), default=0)
    for num_chars in range(min(max_len - 1, len(text)), 0, -1):
        tail = text[-num_chars:]
        if any(s.startswith(tail) for s in stop):
            return num_chars
    return 0


def decode_token(tokenizer: PreTrainedTokenizerBase, token_id: int) -> str:
    """Display string of one token, for logprobs.

    `tokenizer.decode([token_id])` rather than `convert_ids_to_tokens`: it reads as text
    (" the", not "Ġthe" or "▁the"), like vLLM and the OpenAI API. Special tokens are shown
    ("<|im_end|>"). A token that is only part of a character decodes to U+FFFD; sentencepiece
    decoders drop a leading space, since the token is decoded alone.
    """
    return tokenizer.decode([token_id], skip_special_tokens=False)
