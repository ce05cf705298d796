"""vLLM-style serving metrics from per-request token timestamps (shared by the benchmarks)."""

from dataclasses import dataclass

import numpy as np


@dataclass
class RequestTiming:
    start: float  # when the request was submitted
    token_times: list[float]  # when each output token (or streamed chunk of tokens) arrived
    num_prompt_tokens: int
    reported_output_tokens: int | None = None  # the server's count, when chunks may hold several

    @property
    def num_output_tokens(self) -> int:
        if self.reported_output_tokens is None:
            return len(self.token_times)
        return self.reported_output_tokens


def summarize(timings: list[RequestTiming], duration: float) -> dict[str, float]:
    """Throughput, TTFT, TPOT (per request, excluding the first token) and ITL, in ms. ITL is
    the gap between consecutive token times, i.e. between chunks when a chunk holds several."""
    num_output = sum(t.num_output_tokens for t in timings)
    num_prompt = sum(t.num_prompt_tokens for t in timings)
    ttft = [(t.token_times[0] - t.start) * 1e3 for t in timings if t.token_times]
    tpot = [
        (t.token_times[-1] - t.token_times[0]) * 1e3 / (t.num_output_tokens - 1)
        for t in timings
        if t.token_times and t.num_output_tokens > 1
    ]
    itl = [gap * 1e3 for t in timings for gap in np.diff(t.token_times)]
    result = {
        "duration_s": duration,
        "num_requests": len(timings),
        "num_prompt_tokens": num_prompt,
        "num_output_tokens": num_output,
        "request_throughput": len(timings) / duration,
        "output_throughput": num_output / duration,
        "total_token_throughput": (num_prompt + num_output) / duration,
    }
    for name, values in (("ttft_ms", ttft), ("tpot_ms", tpot), ("itl_ms", itl)):
        values = np.asarray(values or [float("nan")])
        result[f"mean_{name}"] = float(values.mean())
        result[f"median_{name}"] = float(np.median(values))
        result[f"p99_{name}"] = float(np.percentile(values, 99))
    return result


def random_prompts(
    num_prompts: int, input_len: int, range_ratio: float, vocab_size: int, seed: int
) -> list[list[int]]:
    """Random token ids, lengths uniform in input_len * [1 - range_ratio, 1 + range_ratio]."""
    rng = np.random.default_rng(seed)
    low = max(1, int(input_len * (1 - range_ratio)))
    high = int(input_len * (1 + range_ratio))
    lengths = rng.integers(low, high + 1, size=num_prompts)
    return [rng.integers(0, vocab_size, size=int(n)).tolist() for n in lengths]
