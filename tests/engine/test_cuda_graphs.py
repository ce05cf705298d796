"""CUDA graphs for decode steps: the padded sizes (everywhere) and, on a GPU, replayed steps
giving what eager steps give."""

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from fleetlm.engine import LLM, SamplingParams
from fleetlm.engine.config import CudaGraphConfig, EngineArgs

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_batch_sizes_pad_like_vllm():
    assert CudaGraphConfig(max_batch_size=20).batch_sizes() == [1, 2, 4, 8, 16, 20]
    assert CudaGraphConfig(max_batch_size=1).batch_sizes() == [1]
    sizes = CudaGraphConfig(max_batch_size=512).batch_sizes()
    assert sizes[:5] == [1, 2, 4, 8, 16] and sizes[-1] == 512
    assert all(b % 8 == 0 for b in sizes[3:])


def test_graphs_are_off_on_cpu_and_with_enforce_eager(tiny_model):
    assert not EngineArgs(tiny_model, device="cpu").create_engine_config().cuda_graphs.enabled
    args = EngineArgs(tiny_model, device="cpu", enforce_eager=True, max_num_seqs=64)
    config = args.create_engine_config()
    assert not config.cuda_graphs.enabled and config.cuda_graphs.max_batch_size == 64


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """head_dim 64 and 16-token blocks: the Triton kernels run (not the PyTorch fallback)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    config = LlamaConfig(
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1000,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.2)
    model.save_pretrained(path)
    return str(path)


@needs_cuda
@pytest.mark.parametrize("num_prompts", [1, 3, 9])  # graphs of 1, 4 and 16 rows
def test_replayed_decode_steps_match_eager_steps(tiny_model, num_prompts):
    prompts = [
        {"prompt_token_ids": [(7 * i + j) % 1000 for j in range(5 + 9 * i)]}
        for i in range(num_prompts)
    ]
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True, logprobs=1)
    results = {}
    for eager in (True, False):
        llm = LLM(
            tiny_model,
            dtype="float32",
            skip_tokenizer_init=True,
            enforce_eager=eager,
            max_cuda_graph_batch_size=16,
            gpu_memory_utilization=0.3,
        )
        results[eager] = llm.generate(prompts, params, use_tqdm=False)
        runner = llm.engine.engine_core.model_runner
        if eager:
            assert runner.cuda_graphs is None
        else:
            assert runner.cuda_graphs.num_replays >= 39  # every decode step after the prompt
        del llm, runner
        torch.cuda.empty_cache()
    for eager_out, graph_out in zip(results[True], results[False], strict=True):
        assert graph_out.outputs[0].token_ids == eager_out.outputs[0].token_ids
        for a, b in zip(graph_out.outputs[0].logprobs, eager_out.outputs[0].logprobs, strict=True):
            token = next(iter(a))
            assert a[token].logprob == pytest.approx(b[token].logprob, abs=1e-4)


def test_compiling_the_prompt_kernels_changes_no_output(tiny_model):
    """The start-up warm-up (run on CUDA) writes only into blocks no request holds yet: on the
    CPU path, running it first leaves greedy outputs as they were."""
    prompts = [{"prompt_token_ids": [3, 1, 4, 1, 5, 9, 2, 6]}, {"prompt_token_ids": [7] * 21}]
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    llm = LLM(tiny_model, dtype="float32", device="cpu", skip_tokenizer_init=True)
    before = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    llm.engine.reset_prefix_cache()
    llm.engine.engine_core.model_runner.compile_prompt_kernels()
    after = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    assert after == before
