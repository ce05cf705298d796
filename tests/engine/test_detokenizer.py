"""Incremental detokenization against the real SmolLM2 tokenizer and small fake tokenizers."""

import random
from collections.abc import Iterator, Sequence
from itertools import pairwise

import pytest

from fleetlm.engine.detokenizer import (
    IncrementalDetokenizer,
    decode_token,
    find_stop,
    num_stop_prefix_chars,
)

TEXTS = [
    "Thumbs up 👍🏽, flag 🇫🇷, family 👨‍👩‍👧 and a smile 🙂!",
    "日本語のテキストと中文的句子，还有한국어.",
    "Crème brûlée à la française — naïve café, Ångström, Œuvre.",
    "def f(x):\n    if x  !=  0:\n\treturn {'a': [1, 2]}  # done\n\n\n",
    "mixed: été 世界 🎉\n  indented\ttab  end ",
]

SENTENCE = "Hello world, the answer is 42.\nThe end of the story"


@pytest.fixture(scope="module")
def tok(smollm2_tokenizer):
    return smollm2_tokenizer


def stream(detok: IncrementalDetokenizer, ids: Sequence[int], chunk: int = 1) -> list[str]:
    """Feed `ids` `chunk` at a time as an engine would; return every delta handed out."""
    deltas = []
    for start in range(0, len(ids), chunk):
        stop = detok.update(ids[start : start + chunk])
        deltas.append(detok.take_delta(finished=stop is not None))
        if stop is not None:
            return deltas
    deltas.append(detok.take_delta(finished=True))
    return deltas


def assert_streamed_prefixes(deltas: list[str], final: str) -> None:
    """What was streamed at every step is a prefix of the final text (nothing taken back)."""
    streamed = ""
    for delta in deltas:
        streamed += delta
        assert final.startswith(streamed), (streamed, final)
    assert streamed == final


def reference_stop(tok, ids: list[int], stop: list[str], include: bool) -> tuple[str, str | None]:
    """Decode growing prefixes of `ids` until a stop string shows up (slow but obvious)."""
    for end in range(1, len(ids) + 1):
        text = tok.decode(ids[:end])
        match = find_stop(text, stop, 0)
        if match is not None:
            index, s = match
            return text[: index + len(s) * include], s
    return tok.decode(ids), None


# --- real tokenizer: text --------------------------------------------------------------------


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("chunk", [1, 3])
def test_one_token_at_a_time_matches_decode(tok, text: str, chunk: int) -> None:
    ids = tok.encode(text, add_special_tokens=False)
    prompt_ids = tok.encode("Say something:", add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, prompt_ids)
    deltas = stream(detok, ids, chunk)
    assert "".join(deltas) == detok.output_text == tok.decode(ids) == text
    assert not any("\ufffd" in delta for delta in deltas)
    assert detok.stop_reason is None


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_random_ids_match_decode(tok, seed: int, skip_special_tokens: bool) -> None:
    """Arbitrary ids (broken UTF-8, special tokens) still end as exactly tokenizer.decode."""
    rng = random.Random(seed)
    ids = [
        rng.choice([0, 1, 2]) if rng.random() < 0.1 else rng.randrange(len(tok)) for _ in range(60)
    ]
    prompt_ids = [rng.randrange(len(tok)) for _ in range(rng.randrange(8))]
    detok = IncrementalDetokenizer(tok, prompt_ids, skip_special_tokens=skip_special_tokens)
    deltas = stream(detok, ids, chunk=rng.choice([1, 2, 5]))
    assert "".join(deltas) == tok.decode(ids, skip_special_tokens=skip_special_tokens)


def test_partial_character_is_held_until_finish(tok) -> None:
    ids = tok.encode("café 🙂🙂", add_special_tokens=False)[:-1]  # cut inside the last emoji
    assert tok.decode(ids) == "café 🙂\ufffd"
    detok = IncrementalDetokenizer(tok, [])
    detok.update(ids)
    assert detok.output_text == "café 🙂"
    assert detok.take_delta(finished=False) == "café 🙂"
    assert detok.take_delta(finished=True) == "\ufffd"
    assert detok.output_text == tok.decode(ids)


@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_skip_special_tokens(tok, skip_special_tokens: bool) -> None:
    ids = tok.encode("Hi there!<|im_end|>", add_special_tokens=False)
    assert ids[-1] == 2
    prompt_ids = tok.encode("<|im_start|>assistant\n", add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, prompt_ids, skip_special_tokens=skip_special_tokens)
    assert "".join(stream(detok, ids)) == tok.decode(ids, skip_special_tokens=skip_special_tokens)
    assert detok.output_text == ("Hi there!" if skip_special_tokens else "Hi there!<|im_end|>")


def test_decode_token(tok) -> None:
    ids = tok.encode(SENTENCE, add_special_tokens=False)
    assert decode_token(tok, ids[1]) == " world"
    assert decode_token(tok, 2) == "<|im_end|>"
    flag_byte = tok.encode("🇫🇷", add_special_tokens=False)[-1]
    assert decode_token(tok, flag_byte) == "\ufffd"


# --- real tokenizer: stop strings ------------------------------------------------------------


@pytest.mark.parametrize(
    ("stop", "include", "expected_text", "expected_stop"),
    [
        (["orl"], False, "Hello w", "orl"),  # inside one token
        (["ld,"], False, "Hello wor", "ld,"),  # over 2 tokens
        (["s 4"], False, "Hello world, the answer i", "s 4"),  # over 3 tokens
        (["2.\nT"], False, "Hello world, the answer is 4", "2.\nT"),  # over 3 tokens, newline
        (["Hel"], False, "", "Hel"),  # at the very start
        (["xyz", "Hello!"], False, SENTENCE, None),  # never
        (["ld,"], True, "Hello world,", "ld,"),
        (["story", "answer", "the"], False, "Hello world, ", "the"),  # earliest
        (["world", "wor"], True, "Hello wor", "wor"),  # same start: the shorter one
        (["swer", "the ans"], False, "Hello world, ", "the ans"),  # both in " answer"
        (["end of", " the answer"], False, "Hello world,", " the answer"),
    ],
)
@pytest.mark.parametrize("chunk", [1, 2, 4])
def test_stop_strings(
    tok, stop: list[str], include: bool, expected_text: str, expected_stop, chunk: int
) -> None:
    ids = tok.encode(SENTENCE, add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, [1], stop=stop, include_stop_str_in_output=include)
    deltas = stream(detok, ids, chunk)
    assert (detok.output_text, detok.stop_reason) == (expected_text, expected_stop)
    assert (expected_text, expected_stop) == reference_stop(tok, ids, stop, include)
    assert_streamed_prefixes(deltas, expected_text)


def test_possible_stop_prefix_is_held_back(tok) -> None:
    ids = tok.encode(SENTENCE, add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, [], stop=["answer was"])
    detok.update(ids[:5])  # "Hello world, the answer"
    assert detok.take_delta(finished=False) == "Hello world, the "
    detok.update(ids[5:6])  # " is": not the stop string after all
    assert detok.take_delta(finished=False) == "answer is"


def test_stop_on_special_token_text(tok) -> None:
    ids = tok.encode("Hi there!<|im_end|>", add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, [], skip_special_tokens=False, stop=["<|im_end|>"])
    assert "".join(stream(detok, ids)) == "Hi there!"
    assert detok.stop_reason == "<|im_end|>"


def test_update_after_stop_raises(tok) -> None:
    detok = IncrementalDetokenizer(tok, [], stop=["Hello"])
    assert detok.update(tok.encode(SENTENCE, add_special_tokens=False)) == "Hello"
    assert detok.finish() == "Hello"
    with pytest.raises(RuntimeError):
        detok.update([42])


def test_empty_stop_string_is_rejected(tok) -> None:
    with pytest.raises(ValueError):
        IncrementalDetokenizer(tok, [], stop=[""])


# --- fake tokenizers: every token boundary ---------------------------------------------------


class ByteTokenizer:
    """Byte-level fake: id i is `pieces[i]` bytes; the text is their join, decoded lossily."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = False, **_) -> str:
        return b"".join(self.pieces[i] for i in token_ids).decode("utf-8", errors="replace")


class MetaspaceTokenizer:
    """Sentencepiece-style fake: "▁" is a space, and the decoder drops the leading space."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = False, **_) -> str:
        return "".join(self.pieces[i] for i in token_ids).replace("▁", " ").removeprefix(" ")


def splits(data: bytes) -> Iterator[list[bytes]]:
    """Every way to cut `data` into non-empty pieces (2 ** (len - 1) of them)."""
    for mask in range(2 ** (len(data) - 1)):
        cuts = [0] + [i + 1 for i in range(len(data) - 1) if mask >> i & 1] + [len(data)]
        yield [data[a:b] for a, b in pairwise(cuts)]


@pytest.mark.parametrize(
    ("stop", "include", "expected_text"),
    [
        (["STOP"], False, "é🙂"),
        (["STOP"], True, "é🙂STOP"),
        (["🙂ST"], False, "é"),
        (["OP!", "é🙂S"], True, "é🙂S"),
        (["nope"], False, "é🙂STOP!"),
    ],
)
def test_stop_string_at_every_boundary(stop: list[str], include: bool, expected_text: str) -> None:
    for pieces in splits("é🙂STOP!".encode()):
        tokenizer = ByteTokenizer([b"<", *pieces])
        detok = IncrementalDetokenizer(
            tokenizer, [0], stop=stop, include_stop_str_in_output=include
        )
        deltas = stream(detok, range(1, len(pieces) + 1))
        assert detok.output_text == expected_text, pieces
        assert_streamed_prefixes(deltas, expected_text)
        assert not any("\ufffd" in delta for delta in deltas)


def test_sentencepiece_leading_space_comes_from_prompt_context() -> None:
    tokenizer = MetaspaceTokenizer(["▁Hello", "▁world", "!"])
    detok = IncrementalDetokenizer(tokenizer, [0])
    assert stream(detok, [1, 2]) == [" world", "!", ""]
    assert tokenizer.decode([1, 2]) == "world!"  # what decoding the output alone would give
    without_prompt = IncrementalDetokenizer(tokenizer, [])
    assert "".join(stream(without_prompt, [1, 2])) == "world!"


# --- helpers ---------------------------------------------------------------------------------


def test_find_stop_looks_only_at_new_text() -> None:
    assert find_stop("abcabc", ["abc"], num_old_chars=4) == (3, "abc")
    assert find_stop("abcab", ["abc"], num_old_chars=4) is None
    assert find_stop("xxab", ["b", "ab"], num_old_chars=0) == (2, "ab")


def test_num_stop_prefix_chars() -> None:
    assert num_stop_prefix_chars("Hello wor", ["world", "or!"]) == 3
    assert num_stop_prefix_chars("Hello", ["world"]) == 0
    assert num_stop_prefix_chars("ab", []) == 0
    assert num_stop_prefix_chars("xaxa", ["axax"]) == 3
