"""The `fleetlm` command."""

import argparse
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return args.handler(args)


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

    chat = commands.add_parser("chat", help="answer one message with the model's chat template")
    chat.add_argument("message", help="the user message")
    _add_generation_args(chat)
    chat.set_defaults(handler=_chat)

    generate = commands.add_parser("generate", help="complete prompts (one per argument)")
    generate.add_argument("prompts", nargs="+")
    _add_generation_args(generate)
    generate.set_defaults(handler=_generate)
    return parser


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
