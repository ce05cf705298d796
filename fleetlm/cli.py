"""The `fleetlm` command."""

import argparse
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except ModuleNotFoundError as e:
        extra = EXTRAS.get((e.name or "").split(".")[0])
        if extra is None:
            raise
        print(
            f"fleetlm: this command needs {e.name}, which this installation lacks: "
            f"pip install 'fleetlm[{extra}]'",
            file=sys.stderr,
        )
        return 2


# The optional dependencies, by the extra that brings them (the router and the operator
# images install fleetlm without the engine's).
EXTRAS = {
    "torch": "engine",
    "transformers": "engine",
    "safetensors": "engine",
    "gguf": "engine",
    "numpy": "engine",
    "tqdm": "engine",
    "kopf": "operator",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleetlm", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    convert = commands.add_parser(
        "convert-gguf",
        help="convert a GGUF model (default: the bundled SmolLM2) to a Hugging Face directory",
    )
    convert.add_argument("gguf", nargs="?", help="GGUF file (default: the bundled SmolLM2)")
    convert.add_argument("--output", help="output directory (default: the fleetlm model cache)")
    convert.add_argument(
        "--max-shard-size-mb",
        type=int,
        default=None,
        help="split the weights into safetensors shards of at most this size",
    )
    convert.set_defaults(handler=_convert)

    serve = commands.add_parser(
        "serve",
        help="run the OpenAI-compatible server (default model: the bundled SmolLM2)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_serve_args(serve)
    serve.set_defaults(handler=_serve)

    router = commands.add_parser(
        "router",
        help="run the router: one OpenAI endpoint in front of engine replicas",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_router_args(router)
    router.set_defaults(handler=_router)

    operator = commands.add_parser(
        "operator",
        help="run the Kubernetes operator (InferenceModel resources; docs/operator.md)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_operator_args(operator)
    operator.set_defaults(handler=_operator)

    chat = commands.add_parser("chat", help="answer one message with the model's chat template")
    chat.add_argument("message", help="the user message")
    _add_generation_args(chat)
    chat.set_defaults(handler=_chat)

    generate = commands.add_parser("generate", help="complete prompts (one per argument)")
    generate.add_argument("prompts", nargs="+")
    _add_generation_args(generate)
    generate.set_defaults(handler=_generate)
    return parser


def _add_serve_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        nargs="?",
        default=None,
        help="Hugging Face directory or GGUF file (default: bundled SmolLM2)",
    )
    server = parser.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on")
    server.add_argument("--port", type=int, default=8000, help="port to listen on")
    server.add_argument(
        "--api-key",
        default=None,
        help="require this key as 'Authorization: Bearer KEY' (also $FLEETLM_API_KEY)",
    )
    server.add_argument(
        "--served-model-name",
        default=None,
        help="the model name clients use (default: the model's directory name)",
    )
    server.add_argument(
        "--max-waiting-requests",
        type=int,
        default=256,
        help="requests allowed to wait beyond the running batch; more get 429",
    )
    server.add_argument("--max-n", type=int, default=16, help="largest n a request may ask for")
    server.add_argument(
        "--max-tokens-limit",
        type=int,
        default=None,
        help="largest max_tokens a request may ask for (default: max-model-len)",
    )
    server.add_argument(
        "--max-body-bytes",
        type=int,
        default=4 * 1024 * 1024,
        help="largest request body; larger ones get 413",
    )
    server.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="seconds in-flight requests get to finish after SIGTERM",
    )
    server.add_argument("--log-level", default="info", help="uvicorn log level")
    server.add_argument(
        "--kv-events-redis-url",
        default=None,
        help="publish KV-cache events to this Redis for routers (e.g. redis://host:6379/0)",
    )
    server.add_argument(
        "--register-redis-url",
        default=None,
        help="register this server in this Redis for routers to discover (heartbeat TTL)",
    )
    server.add_argument(
        "--advertise-url",
        default=None,
        help="how routers reach this server, its name in Redis "
        "(default: http://127.0.0.1:PORT for a loopback or wildcard host, else http://HOST:PORT)",
    )
    server.add_argument(
        "--redis-key-prefix",
        type=_key_prefix,
        default="fleetlm:",
        help="start of every key this server writes in Redis (KV events, registration); "
        "one per model sharing a Redis, the same as its routers'",
    )
    server.add_argument(
        "--trust-request-chat-template",
        action="store_true",
        help="let requests bring their own chat template (runs sandboxed, but "
        "unbounded in CPU and memory)",
    )
    engine = parser.add_argument_group("engine")
    engine.add_argument(
        "--tokenizer", default=None, help="tokenizer directory (default: the model's)"
    )
    engine.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="weights and activations (auto: float32 on CPU, bfloat16 on CUDA)",
    )
    engine.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    engine.add_argument(
        "--quantization",
        default="none",
        choices=["none", "fp8", "awq", "gptq", "gguf"],
        help="gguf: a .gguf model, dequantized at load; fp8, awq, gptq: not supported yet",
    )
    engine.add_argument(
        "--load-format",
        default="auto",
        choices=["auto", "dummy"],
        help="dummy: random weights (benchmarks)",
    )
    engine.add_argument("--seed", type=int, default=0, help="seed of unseeded sampling")
    engine.add_argument(
        "--max-model-len", type=int, default=None, help="context length (default: the model's)"
    )
    engine.add_argument("--max-num-seqs", type=int, default=256, help="requests running at once")
    engine.add_argument(
        "--max-num-batched-tokens",
        type=int,
        default=None,
        help="tokens computed per step (default 2048)",
    )
    engine.add_argument("--block-size", type=int, default=16, help="tokens per KV-cache block")
    engine.add_argument(
        "--enable-prefix-caching",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="share the KV cache of equal prompt prefixes",
    )
    engine.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=0.9,
        help="fraction of GPU memory the engine may use (CUDA)",
    )
    engine.add_argument(
        "--cpu-kv-cache-gib", type=float, default=1.0, help="KV-cache memory on CPU"
    )
    engine.add_argument(
        "--num-gpu-blocks-override",
        type=int,
        default=None,
        help="a fixed number of KV-cache blocks",
    )
    engine.add_argument(
        "--max-logprobs", type=int, default=20, help="largest logprobs a request may ask for"
    )
    engine.add_argument(
        "--enforce-eager",
        action="store_true",
        help="CUDA: run every step eagerly (no CUDA graphs)",
    )
    engine.add_argument(
        "--async-scheduling",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="schedule each step before the previous one's tokens reach the host "
        "(default: on with CUDA)",
    )
    engine.add_argument(
        "--max-cuda-graph-batch-size",
        type=int,
        default=None,
        help="largest decode batch replayed from a CUDA graph (default: max-num-seqs, <= 512)",
    )
    _add_parallel_args(parser)


def _add_parallel_args(parser: argparse.ArgumentParser) -> None:
    """vLLM's flags, so that deployments written for them are well-formed; this engine build
    runs one device per server and refuses more (`parallel_config_error`)."""
    parallel = parser.add_argument_group("parallelism")
    parallel.add_argument(
        "--tensor-parallel-size",
        "-tp",
        type=_int_in(1),
        default=1,
        metavar="N",
        help="devices each layer is split over",
    )
    parallel.add_argument(
        "--pipeline-parallel-size",
        "-pp",
        type=_int_in(1),
        default=1,
        metavar="N",
        help="stages the layers are split into",
    )
    parallel.add_argument(
        "--data-parallel-size",
        "-dp",
        type=_int_in(1),
        default=1,
        metavar="N",
        help="engines in one server",
    )
    parallel.add_argument(
        "--enable-expert-parallel",
        action="store_true",
        help="split MoE experts over the tensor x data parallel ranks (none with one device)",
    )
    parallel.add_argument("--nnodes", type=_int_in(1), default=1, help="nodes one server spans")
    parallel.add_argument(
        "--node-rank", type=_int_in(0), default=0, help="this node's rank (0: the leader)"
    )
    parallel.add_argument("--master-addr", default="127.0.0.1", help="the leader's address")
    parallel.add_argument(
        "--master-port", type=_int_in(1, 65535), default=29500, help="the leader's port"
    )
    parallel.add_argument("--headless", action="store_true", help="a worker rank: no HTTP server")


def _add_router_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--replicas", default="", help="engine base URLs, comma-separated (a static list)"
    )
    parser.add_argument(
        "--discover",
        choices=["redis", "kubernetes"],
        action="append",
        default=None,
        help="also route to the engines registered in Redis (fleetlm serve "
        "--register-redis-url), or to the Ready engine pods in Kubernetes; may be given twice",
    )
    parser.add_argument(
        "--kubernetes-namespace",
        default=None,
        help="the engines' namespace, if not the router pod's own",
    )
    parser.add_argument(
        "--kubernetes-label-selector",
        default="app.kubernetes.io/component=engine",
        help="which pods are engines",
    )
    parser.add_argument(
        "--kubernetes-port", type=int, default=8000, help="the engines' port in their pods"
    )
    parser.add_argument(
        "--kubernetes-api-url",
        default=None,
        help="the API server, e.g. kubectl proxy's http://127.0.0.1:8001 "
        "(none: in-cluster, with the pod's service account)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--strategy",
        default="prefix",
        choices=["prefix", "round_robin", "least_load", "session"],
        help="prefix: the replica holding the longest cached prefix, weighed against load",
    )
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="the served model's Hugging Face directory, to hash prompts as the engine does "
        "(default: only token-id prompts are hashed)",
    )
    parser.add_argument("--block-size", type=int, default=16, help="the engines' KV block size")
    parser.add_argument(
        "--redis-url",
        default=None,
        help="shared state for router replicas (default: $REDIS_URL, else in-process)",
    )
    parser.add_argument(
        "--redis-key-prefix",
        type=_key_prefix,
        default=None,
        help="start of every key this router reads or writes in Redis; one per model sharing "
        "a Redis, the same as its engines' (default: $FLEETLM_ROUTER_REDIS_KEY_PREFIX, "
        "else fleetlm:)",
    )
    parser.add_argument(
        "--kv-events",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with Redis: follow the engines' KV-cache events for the prefix index",
    )
    parser.add_argument(
        "--requests-per-minute", type=int, default=None, help="per API key (default: no limit)"
    )
    parser.add_argument(
        "--tokens-per-minute",
        type=int,
        default=None,
        help="per API key, prompt + completion tokens (default: no limit)",
    )
    parser.add_argument("--health-check-interval", type=float, default=1.0, help="seconds")
    parser.add_argument("--log-level", default="info")


def _router(args: argparse.Namespace) -> int:
    import uvicorn

    from fleetlm.router.app import create_app
    from fleetlm.router.settings import RouterSettings

    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per proxied request

    redis = {"redis_url": args.redis_url} if args.redis_url else {}  # else $REDIS_URL, if set
    if args.redis_key_prefix is not None:  # else $FLEETLM_ROUTER_REDIS_KEY_PREFIX, if set
        redis["redis_key_prefix"] = args.redis_key_prefix
    settings = RouterSettings(
        **redis,
        host=args.host,
        port=args.port,
        replicas=args.replicas,
        discover_redis="redis" in (args.discover or []),
        discover_kubernetes="kubernetes" in (args.discover or []),
        kubernetes_namespace=args.kubernetes_namespace,
        kubernetes_label_selector=args.kubernetes_label_selector,
        kubernetes_port=args.kubernetes_port,
        kubernetes_api_url=args.kubernetes_api_url,
        strategy=args.strategy,
        tokenizer=args.tokenizer,
        block_size=args.block_size,
        kv_events=args.kv_events,
        requests_per_minute=args.requests_per_minute,
        tokens_per_minute=args.tokens_per_minute,
        health_check_interval_s=args.health_check_interval,
        log_level=args.log_level,
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
    )
    return 0


def _serve(args: argparse.Namespace) -> int:
    import os

    error = parallel_config_error(args) or quantization_error(args.quantization, args.model)
    if error is not None:  # before anything loads
        print(f"fleetlm serve: error: {error}", file=sys.stderr)
        return 2

    from fleetlm.engine.config import EngineArgs
    from fleetlm.engine.entrypoints.openai.server import run_server
    from fleetlm.engine.entrypoints.openai.settings import ServerSettings

    advertise = advertise_url(args.advertise_url, args.host, args.port)
    settings = ServerSettings(
        host=args.host,
        port=args.port,
        api_key=args.api_key or os.environ.get("FLEETLM_API_KEY"),
        served_model_name=args.served_model_name,
        max_waiting_requests=args.max_waiting_requests,
        max_n=args.max_n,
        max_tokens_limit=args.max_tokens_limit,
        max_body_bytes=args.max_body_bytes,
        drain_timeout_s=args.drain_timeout,
        log_level=args.log_level,
        trust_request_chat_template=args.trust_request_chat_template,
        register_redis_url=args.register_redis_url,
        advertise_url=advertise,
        redis_key_prefix=args.redis_key_prefix,
    )
    engine_args = EngineArgs(
        model=args.model,
        tokenizer=args.tokenizer,
        dtype=args.dtype,
        device=args.device,
        load_format=args.load_format,
        seed=args.seed,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        block_size=args.block_size,
        enable_prefix_caching=args.enable_prefix_caching,
        gpu_memory_utilization=args.gpu_memory_utilization,
        cpu_kv_cache_gib=args.cpu_kv_cache_gib,
        num_gpu_blocks_override=args.num_gpu_blocks_override,
        max_logprobs=args.max_logprobs,
        enforce_eager=args.enforce_eager,
        async_scheduling=args.async_scheduling,
        max_cuda_graph_batch_size=args.max_cuda_graph_batch_size,
        kv_events_redis_url=args.kv_events_redis_url,
        kv_events_replica=advertise,
        redis_key_prefix=args.redis_key_prefix,
    )
    run_server(settings, engine_args)
    return 0


ONE_DEVICE = (
    "this engine build runs one device per server; tensor / pipeline / data / expert "
    "parallelism across devices is not implemented yet"
)


def parallel_config_error(args: argparse.Namespace) -> str | None:
    """Why the parallelism flags cannot be served, or None. Anything needing more than one
    device or process is refused. Expert parallelism alone is accepted, as vLLM does: over
    tensor x data = 1 rank there is nothing to split."""
    if args.node_rank >= args.nnodes:
        return f"--node-rank {args.node_rank} must be below --nnodes {args.nnodes}"
    sizes = {
        "--tensor-parallel-size": args.tensor_parallel_size,
        "--pipeline-parallel-size": args.pipeline_parallel_size,
        "--data-parallel-size": args.data_parallel_size,
        "--nnodes": args.nnodes,
    }
    for flag, size in sizes.items():
        if size > 1:
            return f"{flag} {size}: {ONE_DEVICE}"
    if args.headless:
        return f"--headless (a worker rank of a multi-node server): {ONE_DEVICE}"
    return None


def quantization_error(quantization: str, model: str | None) -> str | None:
    """Why `--quantization` cannot be served with `model`, or None. The engine dequantizes
    GGUF weights at load; it has no kernels for other quantized formats."""
    if quantization == "none":
        return None
    if quantization != "gguf":
        return (
            f"--quantization {quantization} is not supported yet: this engine build serves "
            "unquantized weights and GGUF files (dequantized at load)"
        )
    if model is not None and _is_gguf_model(Path(model)):
        return None
    return (
        "--quantization gguf needs a .gguf file (or a directory holding one and no "
        f"config.json), got {model or 'the bundled model directory'}; a directory written by "
        "`fleetlm convert-gguf` holds dequantized weights: serve it with --quantization none"
    )


def _is_gguf_model(path: Path) -> bool:
    """Whether the engine reads `path` as GGUF (see `model_loader/source.py`)."""
    if path.is_dir():
        return not (path / "config.json").is_file() and any(path.glob("*.gguf"))
    return path.suffix == ".gguf"


def _int_in(low: int, high: int | None = None):
    """An argparse type: an int in [low, high]."""

    def parse(text: str) -> int:
        value = int(text)
        if value < low or (high is not None and value > high):
            bounds = f"at least {low}" if high is None else f"in {low}..{high}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value

    parse.__name__ = "int"  # argparse names the type in its "invalid int value" error
    return parse


def _key_prefix(text: str) -> str:
    from fleetlm.engine.core.kv_events import check_key_prefix

    try:
        return check_key_prefix(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def advertise_url(url: str | None, host: str, port: int) -> str:
    """The URL routers reach this server at: `url` or one made of where it listens (loopback
    for 0.0.0.0), without a trailing slash, as routers write replica URLs."""
    if url is None:
        if host in ("127.0.0.1", "localhost", "0.0.0.0"):
            host = "127.0.0.1"
        elif ":" in host:  # an IPv6 address
            host = f"[{host}]"
        url = f"http://{host}:{port}"
    return url.rstrip("/")


def _add_operator_args(parser: argparse.ArgumentParser) -> None:
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help="watch InferenceModels in this namespace (may be repeated)",
    )
    scope.add_argument(
        "--all-namespaces", "-A", action="store_true", help="watch every namespace (the default)"
    )
    parser.add_argument(
        "--liveness",
        default=None,
        help="serve kopf's liveness probe here, e.g. http://0.0.0.0:8080/healthz",
    )


def _operator(args: argparse.Namespace) -> int:
    """Images, Redis and router defaults come from $FLEETLM_OPERATOR_* (OperatorSettings)."""
    from fleetlm.operator.main import run
    from fleetlm.operator.settings import OperatorSettings

    run(OperatorSettings(), namespaces=args.namespace, liveness_endpoint=args.liveness)
    return 0


def _add_generation_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=None, help="HF directory or GGUF file (default: bundled SmolLM2)"
    )
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None)


def _convert(args: argparse.Namespace) -> int:
    from fleetlm.engine.model_loader.convert import convert_gguf_to_hf
    from fleetlm.engine.model_loader.default_model import bundled_gguf_path, default_model_dir

    if args.gguf is None and args.output is None and args.max_shard_size_mb is None:
        print(default_model_dir())
        return 0
    gguf = Path(args.gguf) if args.gguf else bundled_gguf_path()
    output = Path(args.output) if args.output else default_model_dir().with_name(gguf.stem)
    print(convert_gguf_to_hf(gguf, output, max_shard_size_mb=args.max_shard_size_mb))
    return 0


def _sampling_params(args: argparse.Namespace):
    from fleetlm.engine import SamplingParams

    return SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)


def _chat(args: argparse.Namespace) -> int:
    from fleetlm.engine import LLM

    llm = LLM(args.model)
    output = llm.chat(
        [{"role": "user", "content": args.message}], _sampling_params(args), use_tqdm=False
    )[0]
    print(output.outputs[0].text)
    return 0


def _generate(args: argparse.Namespace) -> int:
    from fleetlm.engine import LLM

    llm = LLM(args.model)
    for output in llm.generate(args.prompts, _sampling_params(args)):
        print(f"{output.prompt!r} -> {output.outputs[0].text!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
