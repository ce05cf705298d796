"""e2e: the operator, the chart and an InferenceModel on a real Kubernetes cluster (kind, or any
kubeconfig), through helm and kubectl as a user would. Skipped, saying why, when no cluster is
reachable (CI has none).

What the cluster needs: the images of docker/ built and reachable by its nodes, e.g. for kind:

    docker build -f docker/operator.Dockerfile -t ghcr.io/fleetlm/operator:0.1.0 .
    docker build -f docker/engine-cpu.Dockerfile -t ghcr.io/fleetlm/engine-cpu:0.1.0 .
    docker build -f docker/router.Dockerfile -t ghcr.io/fleetlm/router:0.1.0 .
    kind load docker-image ghcr.io/fleetlm/operator:0.1.0 ghcr.io/fleetlm/engine-cpu:0.1.0 \\
        ghcr.io/fleetlm/router:0.1.0
    .venv/bin/pytest e2e
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / ".tools" / "bin"


def tool(name: str) -> str | None:
    local = TOOLS / name
    return str(local) if local.exists() else shutil.which(name)


def cluster_problem() -> str | None:
    """Why there is no cluster to test on, or None."""
    kubectl, helm = tool("kubectl"), tool("helm")
    if kubectl is None or helm is None:
        return "kubectl and helm are needed (scripts/install_helm.sh installs both)"
    if not os.environ.get("KUBECONFIG") and not Path("~/.kube/config").expanduser().exists():
        return "no kubeconfig ($KUBECONFIG or ~/.kube/config): no cluster to test on"
    try:
        probe = subprocess.run(
            [kubectl, "version", "--request-timeout=5s", "-o", "json"],
            capture_output=True,
            text=True,
            timeout=15,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"kubectl could not reach a cluster: {e!r}"
    if probe.returncode != 0 or "serverVersion" not in probe.stdout:
        return f"no Kubernetes cluster reachable: {probe.stderr.strip()[:200]}"
    return None


def pytest_collection_modifyitems(config, items):
    problem = cluster_problem()
    if problem is None:
        return
    skip = pytest.mark.skip(reason=f"e2e: {problem}")
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(skip)
