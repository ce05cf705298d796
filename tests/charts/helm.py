"""Runs the real helm (./.tools/bin/helm, installed by scripts/install_helm.sh) on the chart."""

import functools
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "fleetlm"
HELM = REPO / ".tools" / "bin" / "helm"
RELEASE = "fleet"
NAMESPACE = "fleetlm-system"

requires_helm = pytest.mark.skipif(
    not HELM.is_file(),
    reason=f"{HELM.relative_to(REPO)} is missing: run scripts/install_helm.sh "
    "(scripts/setup.sh does)",
)


def helm(*args: str) -> subprocess.CompletedProcess:
    """`helm ARGS`, offline; the caller checks returncode."""
    return subprocess.run(
        [str(HELM), *args], capture_output=True, text=True, timeout=60, check=False
    )


def set_args(values: tuple[str, ...]) -> list[str]:
    return [arg for value in values for arg in ("--set", value)]


@functools.cache
def render(*values: str, include_crds: bool = False) -> tuple[dict[str, Any], ...]:
    """The manifests `helm template` renders with these `--set` values."""
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, *set_args(values)]
    result = helm(*args, *(["--include-crds"] if include_crds else []))
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def find(manifests: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    (match,) = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    return match


def kinds(manifests: tuple[dict[str, Any], ...]) -> list[tuple[str, str]]:
    return sorted((m["kind"], m["metadata"]["name"]) for m in manifests)
