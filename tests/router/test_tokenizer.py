"""The router tokenizes as the engine does, without transformers (and so without torch)."""

import subprocess
import sys

import pytest

from fleetlm.engine.core.block_hash import extend_block_hashes
from fleetlm.engine.tokenizer import load_tokenizer, render_chat
from fleetlm.router.prompts import PromptHasher
from fleetlm.router.tokenizer import RouterTokenizer

TEXTS = [
    "The capital of France is",
    "北京是中国的首都，它有着悠久的历史和",
    "<|im_start|>user\nspecial tokens in text<|im_end|>",
    "  leading spaces, tabs\tand\nnewlines  ",
    "emoji 🤖 and accents: café, naïve",
]
CHATS = [
    [{"role": "user", "content": "Name three colours."}],
    [
        {"role": "system", "content": "You answer in French."},
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Bonjour !"},
        {"role": "user", "content": "How are you?"},
    ],
]


@pytest.fixture(scope="module")
def tokenizers(smollm2_dir):
    return RouterTokenizer(str(smollm2_dir)), load_tokenizer(str(smollm2_dir))


@pytest.mark.parametrize("text", TEXTS)
def test_encoding_equals_the_engines(tokenizers, text):
    ours, engine = tokenizers
    assert ours.encode(text) == engine.encode(text)
    assert ours.encode(text, add_special_tokens=False) == engine.encode(
        text, add_special_tokens=False
    )


@pytest.mark.parametrize("messages", CHATS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_rendering_equals_the_engines(tokenizers, messages, add_generation_prompt):
    ours, engine = tokenizers
    assert ours.render_chat(messages, add_generation_prompt) == render_chat(
        engine, messages, None, add_generation_prompt
    )


def test_prompt_hashes_equal_the_engines_block_hashes(smollm2_dir, tokenizers):
    _, engine = tokenizers
    hasher = PromptHasher(str(smollm2_dir), block_size=16)
    text = "Always answer briefly and politely. " * 10
    assert hasher.block_hashes("/v1/completions", {"prompt": text}) == extend_block_hashes(
        [], engine.encode(text), 16
    )
    chat = render_chat(engine, CHATS[1], None, True)
    expected = extend_block_hashes([], engine.encode(chat, add_special_tokens=False), 16)
    assert hasher.block_hashes("/v1/chat/completions", {"messages": CHATS[1]}) == expected
    assert hasher.block_hashes("/v1/completions", {"prompt": list(range(40))}) == (
        extend_block_hashes([], list(range(40)), 16)
    )
    assert hasher.block_hashes("/v1/completions", {"prompt": 3}) == []  # the replica says why


NO_TORCH = """
import sys
from fleetlm.router.app import create_app
from fleetlm.router.prompts import PromptHasher
from fleetlm.router.settings import RouterSettings

create_app(RouterSettings(replicas=["http://replica"]))
hasher = PromptHasher(sys.argv[1], 16)
assert hasher.block_hashes("/v1/completions", {"prompt": "hello " * 40})
chat = {"messages": [{"role": "user", "content": "hello " * 40}]}
assert hasher.block_hashes("/v1/chat/completions", chat)
assert "torch" not in sys.modules and "transformers" not in sys.modules, "heavy imports"
"""


def test_the_router_never_imports_torch(smollm2_dir):
    """It ships in a small image without torch: importing, building the app and hashing
    prompts (chats included) load neither torch nor transformers."""
    result = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(smollm2_dir)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
