"""The `fleetlm` command's flags: parallelism and quantization (accepted, or refused with exit
status 2 before any model loads), and the Redis key prefix of `serve` and `router`. No model is
loaded: the server and the router are replaced by recorders."""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from fleetlm import cli
from fleetlm.cli import build_parser, main, parallel_config_error, quantization_error


def serve_args(*flags: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *flags])


@pytest.fixture
def served(monkeypatch) -> list[tuple]:
    """The (settings, engine_args) `fleetlm serve` would run the server with."""
    import fleetlm.engine.entrypoints.openai.server as server

    calls: list[tuple] = []
    monkeypatch.setattr(server, "run_server", lambda *args: calls.append(args))
    return calls


@pytest.fixture
def routed(monkeypatch) -> list:
    """The settings `fleetlm router` would run the router with."""
    import uvicorn

    import fleetlm.router.app as app

    calls: list = []
    monkeypatch.setattr(app, "create_app", lambda settings: calls.append(settings))
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: None)
    return calls


# --- parallelism --------------------------------------------------------------------------


def test_parallelism_defaults_are_one_device_on_one_node():
    args = vars(serve_args())
    sizes = ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size", "nnodes")
    assert [args[size] for size in sizes] == [1, 1, 1, 1]
    assert (args["node_rank"], args["master_addr"], args["master_port"]) == (0, "127.0.0.1", 29500)
    assert not args["enable_expert_parallel"] and not args["headless"]
    assert args["quantization"] == "none"
    assert parallel_config_error(argparse.Namespace(**args)) is None


def test_short_flags_are_vllms():
    args = serve_args("-tp", "2", "-pp", "3", "-dp", "4")
    assert args.tensor_parallel_size == 2
    assert args.pipeline_parallel_size == 3
    assert args.data_parallel_size == 4


def test_one_device_flags_as_the_operator_writes_them_are_accepted():
    args = serve_args(
        "--tensor-parallel-size", "1",
        "--pipeline-parallel-size", "1",
        "--data-parallel-size", "1",
        "--enable-expert-parallel",  # nothing to split over one rank, as in vLLM: accepted
        "--nnodes", "1",
        "--node-rank", "0",
        "--master-addr", "llama-serve-0-0.llama-serve-hl.team-a.svc",
        "--master-port", "29500",
    )  # fmt: skip
    assert parallel_config_error(args) is None


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--tensor-parallel-size", "2"], "--tensor-parallel-size 2"),
        (["-tp", "8", "--enable-expert-parallel"], "--tensor-parallel-size 8"),
        (["--pipeline-parallel-size", "2"], "--pipeline-parallel-size 2"),
        (["-dp", "4"], "--data-parallel-size 4"),
        (["--nnodes", "2"], "--nnodes 2"),
        (["--nnodes", "2", "--node-rank", "1", "--headless"], "--nnodes 2"),
        (["--headless"], "--headless"),
    ],
)
def test_more_than_one_device_or_process_is_refused(flags: list[str], named: str):
    error = parallel_config_error(serve_args(*flags))
    assert error is not None and error.startswith(named)
    assert "one device per server" in error and "not implemented yet" in error


def test_node_rank_must_be_below_nnodes():
    assert parallel_config_error(serve_args("--node-rank", "1")) == (
        "--node-rank 1 must be below --nnodes 1"
    )
    assert "below --nnodes 2" in parallel_config_error(
        serve_args("--nnodes", "2", "--node-rank", "2")
    )


@pytest.mark.parametrize(
    "flags",
    [
        ["-tp", "0"],
        ["--pipeline-parallel-size", "-1"],
        ["--data-parallel-size", "two"],
        ["--nnodes", "0"],
        ["--node-rank", "-1"],
        ["--master-port", "0"],
        ["--master-port", "65536"],
        ["--quantization", "int4"],
    ],
)
def test_malformed_values_are_usage_errors(flags: list[str], capsys):
    with pytest.raises(SystemExit) as exit_info:
        serve_args(*flags)
    assert exit_info.value.code == 2
    assert flags[0].lstrip("-") in capsys.readouterr().err


def test_serve_refuses_with_status_2_and_one_line_before_loading(served, capsys):
    assert main(["serve", "--tensor-parallel-size", "2"]) == 2
    assert served == []  # the server (and the model) never started
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("fleetlm serve: error: --tensor-parallel-size 2: this engine build")


def test_serve_refusal_from_the_command_line():
    answer = subprocess.run(
        [sys.executable, "-m", "fleetlm.cli", "serve", "/no/such/model", "--nnodes", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert answer.returncode == 2
    assert answer.stderr.splitlines() == [
        "fleetlm serve: error: --nnodes 2: this engine build runs one device per server; "
        "tensor / pipeline / data / expert parallelism across devices is not implemented yet"
    ]


def test_serve_starts_with_the_accepted_flags(served, tmp_path: Path):
    model = tmp_path / "model.gguf"
    model.touch()
    flags = ["--enable-expert-parallel", "-tp", "1", "--quantization", "gguf"]
    assert main(["serve", str(model), *flags]) == 0
    [(_, engine_args)] = served
    assert engine_args.model == str(model)


# --- quantization -------------------------------------------------------------------------


@pytest.mark.parametrize("quantization", ["fp8", "awq", "gptq"])
def test_quantized_formats_without_kernels_are_not_supported_yet(quantization, served, capsys):
    assert quantization_error(quantization, "/models/llama").startswith(
        f"--quantization {quantization} is not supported yet"
    )
    assert main(["serve", "/models/llama", "--quantization", quantization]) == 2
    assert served == [] and "not supported yet" in capsys.readouterr().err


def test_gguf_quantization_needs_a_gguf_model(tmp_path: Path):
    gguf_file = tmp_path / "model-Q8_0.gguf"
    gguf_file.touch()
    assert quantization_error("gguf", str(gguf_file)) is None
    holding_one = tmp_path / "holding-one"  # read as its GGUF file by the engine
    holding_one.mkdir()
    (holding_one / "model.gguf").touch()
    assert quantization_error("gguf", str(holding_one)) is None

    converted = tmp_path / "converted"  # `fleetlm convert-gguf`: dequantized safetensors
    converted.mkdir()
    (converted / "config.json").write_text("{}")
    (converted / "model.safetensors").touch()
    for model in (str(converted), None):
        error = quantization_error("gguf", model)
        assert error.startswith("--quantization gguf needs a .gguf file")
        assert "serve it with --quantization none" in error
    assert quantization_error("none", str(converted)) is None
    assert quantization_error("none", str(gguf_file)) is None  # GGUF is recognised anyway


# --- the Redis key prefix -----------------------------------------------------------------


def test_serve_passes_its_key_prefix_to_the_events_and_the_registration(served):
    flags = ["--kv-events-redis-url", "redis://r:6379/0", "--register-redis-url", "redis://r"]
    assert main(["serve", "/models/llama", *flags]) == 0
    assert main(["serve", "/models/llama", *flags, "--redis-key-prefix", "fleetlm:ns.m:"]) == 0
    [(default_settings, default_args), (settings, engine_args)] = served
    assert default_settings.redis_key_prefix == default_args.redis_key_prefix == "fleetlm:"
    assert settings.redis_key_prefix == engine_args.redis_key_prefix == "fleetlm:ns.m:"


def test_router_takes_its_key_prefix_from_the_flag_or_the_environment(routed, monkeypatch):
    assert main(["router", "--replicas", "http://e:8000"]) == 0
    monkeypatch.setenv("FLEETLM_ROUTER_REDIS_KEY_PREFIX", "fleetlm:env.m:")
    assert main(["router", "--replicas", "http://e:8000"]) == 0
    assert main(["router", "--replicas", "http://e:8000", "--redis-key-prefix", "m2:"]) == 0
    assert [settings.redis_key_prefix for settings in routed] == [
        "fleetlm:",
        "fleetlm:env.m:",
        "m2:",
    ]


@pytest.mark.parametrize("command", ["serve", "router"])
@pytest.mark.parametrize(
    ("prefix", "why"),
    [("", "empty"), ("team a:", "whitespace"), ("p\t", "whitespace"), ("p" * 129, "128")],
)
def test_a_bad_key_prefix_is_a_usage_error(command: str, prefix: str, why: str, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--redis-key-prefix", prefix])
    assert exit_info.value.code == 2
    assert why in capsys.readouterr().err


def test_a_bad_key_prefix_in_the_environment_is_refused(monkeypatch):
    from pydantic import ValidationError

    from fleetlm.router.settings import RouterSettings

    monkeypatch.setenv("FLEETLM_ROUTER_REDIS_KEY_PREFIX", "team a:")
    with pytest.raises(ValidationError, match="whitespace"):
        RouterSettings(replicas="http://e:8000")


def test_a_missing_extra_is_named(monkeypatch, capsys):
    """The router and operator images install fleetlm without the engine's dependencies:
    `fleetlm serve` there says which extra to install instead of a traceback."""

    def serve_without_torch(args):
        raise ModuleNotFoundError("No module named 'torch'", name="torch")

    monkeypatch.setattr(cli, "_serve", serve_without_torch)
    assert cli.main(["serve"]) == 2
    assert "pip install 'fleetlm[engine]'" in capsys.readouterr().err

    def other_failure(args):
        raise ModuleNotFoundError("No module named 'nothing_we_know'", name="nothing_we_know")

    monkeypatch.setattr(cli, "_serve", other_failure)
    with pytest.raises(ModuleNotFoundError):
        cli.main(["serve"])
