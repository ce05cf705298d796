"""The same scenarios as tests/operator (which run against an API emulator), on a real cluster:
helm install → kubectl apply the CPU SmolLM2 example → Ready → an OpenAI client gets an answer
through the router → a spec change rolls the engine → delete leaves nothing behind."""

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import ROOT, tool

NAMESPACE = "fleetlm-e2e"
RELEASE = "fleetlm"
EXAMPLE = ROOT / "charts" / "fleetlm" / "examples" / "smollm2-cpu.yaml"


def kubectl(*args: str, check: bool = True) -> str:
    command = [tool("kubectl"), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(command)}: {done.stderr}")
    return done.stdout


def get(kind: str, name: str) -> dict:
    return json.loads(kubectl("get", kind, name, "-n", NAMESPACE, "-o", "json"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def platform():
    subprocess.run(
        [
            tool("helm"),
            "upgrade",
            "--install",
            RELEASE,
            str(ROOT / "charts" / "fleetlm"),
            "--namespace",
            "fleetlm-system",
            "--create-namespace",
            "--wait",
            "--timeout",
            "5m",
        ],
        check=True,
        timeout=400,
    )
    kubectl("create", "namespace", NAMESPACE, check=False)
    yield
    kubectl("delete", "namespace", NAMESPACE, "--wait=true", check=False)


def model_name() -> str:
    import yaml

    return yaml.safe_load(Path(EXAMPLE).read_text())["metadata"]["name"]


def test_apply_ready_serve_update_delete(platform):
    name = model_name()
    kubectl("apply", "-n", NAMESPACE, "-f", str(EXAMPLE))
    kubectl(
        "wait", f"inferencemodel/{name}", "-n", NAMESPACE, "--for=condition=Ready", "--timeout=10m"
    )
    body = get("inferencemodel", name)
    assert body["status"]["replicas"] == body["status"]["desiredReplicas"] >= 1

    # an OpenAI client through the router's Service
    port = free_port()
    forward = subprocess.Popen(
        [tool("kubectl"), "port-forward", "-n", NAMESPACE, f"service/{name}", f"{port}:80"]
    )
    try:
        import openai

        time.sleep(2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        served = client.models.list().data[0].id
        answer = client.chat.completions.create(
            model=served, messages=[{"role": "user", "content": "Say hi"}], max_tokens=8
        )
        assert answer.choices[0].message.content
    finally:
        forward.terminate()

    # a spec change rolls the engine Deployment
    before = get("deployment", f"{name}-serve")["spec"]["template"]
    kubectl(
        "patch", "inferencemodel", name, "-n", NAMESPACE, "--type=merge",
        "-p", json.dumps({"spec": {"model": {"engineArgs": ["--seed", "7"]}}}),
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while get("deployment", f"{name}-serve")["spec"]["template"] == before:
        assert time.monotonic() < deadline, "the engine Deployment was not updated"
        time.sleep(2)
    kubectl(
        "wait", f"inferencemodel/{name}", "-n", NAMESPACE, "--for=condition=Ready", "--timeout=10m"
    )

    # delete: nothing of the model is left
    kubectl("delete", "-n", NAMESPACE, "-f", str(EXAMPLE), "--wait=true")
    deadline = time.monotonic() + 120
    selector = f"fleetlm.dev/model={name}"
    while kubectl(
        "get", "all,pdb,sa,role,rolebinding", "-n", NAMESPACE, "-l", selector, "-o", "name"
    ).strip():
        assert time.monotonic() < deadline, "children left behind"
        time.sleep(2)


def test_invalid_resource_is_refused_by_the_schema(platform):
    bad = {
        "apiVersion": "fleetlm.dev/v1alpha1",
        "kind": "InferenceModel",
        "metadata": {"name": "bad", "namespace": NAMESPACE},
        "spec": {
            "model": {"source": {"path": "/m", "hub": "org/m"}},
            "parallelism": {"expert": True},
        },
    }
    done = subprocess.run(
        [tool("kubectl"), "apply", "-f", "-"], input=json.dumps(bad), capture_output=True, text=True
    )
    assert done.returncode != 0 and "Invalid" in done.stderr
