"""Engine configuration: `EngineArgs` (what users pass) resolved into a frozen `EngineConfig`."""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fleetlm.engine.core.kv_events import DEFAULT_KEY_PREFIX, check_key_prefix
from fleetlm.engine.core.scheduler import SchedulerConfig
from fleetlm.engine.model_loader.arch_config import ArchConfig, parse_arch_config
from fleetlm.engine.model_loader.source import (
    ModelSource,
    load_config_dict,
    load_generation_config,
    resolve_model_source,
)

logger = logging.getLogger(__name__)

LoadFormat = Literal["auto", "dummy"]
_DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class CacheConfig:
    block_size: int = 16
    enable_prefix_caching: bool = True
    gpu_memory_utilization: float = 0.9  # CUDA: fraction of the device memory the engine may use
    cpu_kv_cache_gib: float = 1.0  # CPU: memory for the KV cache
    num_blocks_override: int | None = None  # fixed number of blocks (tests, benchmarks)


@dataclass(frozen=True)
class ModelConfig:
    model: str
    source: ModelSource
    arch: ArchConfig
    dtype: str  # "float32" | "bfloat16" | "float16"
    max_model_len: int
    load_format: LoadFormat
    tokenizer: str | None  # None: no tokenizer (prompts must be token ids)
    eos_token_ids: tuple[int, ...]
    seed: int
    max_logprobs: int
    generation_config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CudaGraphConfig:
    """Decode-only steps replay CUDA graphs captured at padded batch sizes (CUDA only)."""

    enabled: bool = True  # False: --enforce-eager
    max_batch_size: int = 256  # larger decode batches run eagerly

    def batch_sizes(self) -> list[int]:
        """1, 2, 4, 8, then every multiple of 8 up to max_batch_size (as vLLM pads)."""
        sizes = [n for n in (1, 2, 4) if n < self.max_batch_size]
        sizes += list(range(8, self.max_batch_size + 1, 8))
        if not sizes or sizes[-1] != self.max_batch_size:
            sizes.append(self.max_batch_size)
        return sizes


@dataclass(frozen=True)
class KVEventsConfig:
    """Publish prefix-cache events to Redis for routers (see `core/kv_events.py`).

    Only the engine-core process behind the server publishes (and takes) the events.
    """

    redis_url: str
    replica: str  # the name routers know this replica by: the server's advertised URL
    key_prefix: str = DEFAULT_KEY_PREFIX  # of its keys in Redis (one per model sharing it)


@dataclass(frozen=True)
class EngineConfig:
    model: ModelConfig
    cache: CacheConfig
    scheduler: SchedulerConfig
    device: str  # "cpu" | "cuda"
    cuda_graphs: CudaGraphConfig = field(default_factory=CudaGraphConfig)
    kv_events: KVEventsConfig | None = None  # None: no KV-cache events


@dataclass
class EngineArgs:
    """Engine options, named as vLLM names them."""

    model: str | None = None  # None: the bundled default model (SmolLM2-135M-Instruct)
    tokenizer: str | None = None
    skip_tokenizer_init: bool = False
    load_format: LoadFormat = "auto"
    dtype: str = "auto"
    device: str = "auto"
    seed: int = 0
    max_model_len: int | None = None
    max_logprobs: int = 20
    block_size: int = 16
    enable_prefix_caching: bool = True
    gpu_memory_utilization: float = 0.9
    cpu_kv_cache_gib: float = 1.0
    num_gpu_blocks_override: int | None = None
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None  # None: 2048 (at least max_model_len if unchunked)
    enable_chunked_prefill: bool = True
    enforce_eager: bool = False  # CUDA: never capture or replay CUDA graphs
    async_scheduling: bool | None = None  # None: on with CUDA (it gains nothing on CPU)
    max_cuda_graph_batch_size: int | None = None  # None: max_num_seqs, at most 512
    kv_events_redis_url: str | None = None  # publish KV-cache events to this Redis (server)
    kv_events_replica: str | None = None  # this replica's name there (its advertised URL)
    redis_key_prefix: str = DEFAULT_KEY_PREFIX  # of the KV-event keys in that Redis

    def create_engine_config(self) -> EngineConfig:
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )
        device = _resolve_device(self.device)
        model = self._create_model_config(device)
        cache = CacheConfig(
            block_size=_positive(self.block_size, "block_size"),
            enable_prefix_caching=self.enable_prefix_caching,
            gpu_memory_utilization=self.gpu_memory_utilization,
            cpu_kv_cache_gib=self.cpu_kv_cache_gib,
            num_blocks_override=self.num_gpu_blocks_override,
        )
        max_batched = self.max_num_batched_tokens or (
            2048 if self.enable_chunked_prefill else max(2048, model.max_model_len)
        )
        scheduler = SchedulerConfig(
            max_num_seqs=_positive(self.max_num_seqs, "max_num_seqs"),
            max_num_batched_tokens=max_batched,
            max_model_len=model.max_model_len,
            enable_chunked_prefill=self.enable_chunked_prefill,
            async_scheduling=(
                device == "cuda" if self.async_scheduling is None else self.async_scheduling
            ),
        )
        cuda_graphs = CudaGraphConfig(
            enabled=not self.enforce_eager and device == "cuda",
            max_batch_size=_positive(
                self.max_cuda_graph_batch_size or min(scheduler.max_num_seqs, 512),
                "max_cuda_graph_batch_size",
            ),
        )
        return EngineConfig(
            model=model,
            cache=cache,
            scheduler=scheduler,
            device=device,
            cuda_graphs=cuda_graphs,
            kv_events=self._create_kv_events_config(),
        )

    def _create_kv_events_config(self) -> KVEventsConfig | None:
        if not self.kv_events_redis_url:
            return None
        if not self.kv_events_redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                "kv_events_redis_url must be a redis://, rediss:// or unix:// URL, "
                f"got {self.kv_events_redis_url!r}"
            )
        if not self.kv_events_replica:
            raise ValueError(
                "kv_events_replica (the URL routers reach this replica at) is required "
                "when kv_events_redis_url is set"
            )
        return KVEventsConfig(
            redis_url=self.kv_events_redis_url,
            replica=self.kv_events_replica,
            key_prefix=check_key_prefix(self.redis_key_prefix),
        )

    def _create_model_config(self, device: str) -> ModelConfig:
        from fleetlm.engine.model_loader.default_model import default_model_dir

        model_path = str(self.model) if self.model is not None else str(default_model_dir())
        source = resolve_model_source(model_path)
        arch = parse_arch_config(load_config_dict(source))
        generation_config = load_generation_config(source)
        max_model_len = _max_model_len(arch, self.max_model_len)
        return ModelConfig(
            model=model_path,
            source=source,
            arch=arch,
            dtype=_resolve_dtype(self.dtype, arch, device),
            max_model_len=max_model_len,
            load_format=self.load_format,
            tokenizer=None if self.skip_tokenizer_init else _find_tokenizer(self.tokenizer, source),
            eos_token_ids=_eos_token_ids(arch, generation_config),
            seed=self.seed,
            max_logprobs=self.max_logprobs,
            generation_config=generation_config,
        )


def _resolve_device(device: str) -> str:
    if device != "auto":
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _resolve_dtype(dtype: str, arch: ArchConfig, device: str) -> str:
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    if dtype != "auto":
        return dtype
    if device == "cpu":
        return "float32"
    return "float16" if arch.torch_dtype == "float16" else "bfloat16"


def _max_model_len(arch: ArchConfig, requested: int | None) -> int:
    """The context length: the model's own (capped to its sliding window) unless set lower."""
    limit = arch.max_position_embeddings
    if arch.sliding_window is not None and arch.sliding_window < limit:
        logger.info("capping the context to the sliding window (%d tokens)", arch.sliding_window)
        limit = arch.sliding_window
    if requested is None:
        return limit
    if requested < 1 or requested > limit:
        raise ValueError(f"max_model_len must be in [1, {limit}] for this model, got {requested}")
    return requested


def _find_tokenizer(tokenizer: str | None, source: ModelSource) -> str | None:
    if tokenizer is not None:
        if not Path(tokenizer).exists():
            raise FileNotFoundError(f"tokenizer path {tokenizer!r} does not exist")
        return tokenizer
    model_dir = source.path if source.kind == "hf" else source.path.parent
    has_files = any(
        (model_dir / f).exists()
        for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
    )
    if has_files:
        return str(model_dir)
    return str(source.path) if source.kind == "gguf" else None


def _eos_token_ids(arch: ArchConfig, generation_config: dict[str, Any]) -> tuple[int, ...]:
    eos = generation_config.get("eos_token_id")
    if eos is None:
        return arch.eos_token_ids
    return tuple(eos) if isinstance(eos, list) else (eos,)


def _positive(value: int, name: str) -> int:
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return value
