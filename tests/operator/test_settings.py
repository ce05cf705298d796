import pytest
from pydantic import ValidationError

from fleetlm.operator.settings import OperatorSettings


def test_defaults():
    settings = OperatorSettings()
    assert settings.engine_image == "ghcr.io/fleetlm/engine-cuda:0.1.0"
    assert settings.engine_cpu_image == "ghcr.io/fleetlm/engine-cpu:0.1.0"
    assert settings.router_image == "ghcr.io/fleetlm/router:0.1.0"
    assert settings.image_pull_policy == "IfNotPresent"
    assert settings.redis_url is None
    assert (settings.router_strategy, settings.router_replicas) == ("prefix", 1)
    assert settings.cluster_domain == "cluster.local"
    assert settings.resync_interval_s == 30.0
    assert settings.master_port == 29500


def test_environment(monkeypatch):
    monkeypatch.setenv("FLEETLM_OPERATOR_REDIS_URL", "redis://redis:6379/0")
    monkeypatch.setenv("FLEETLM_OPERATOR_ROUTER_REPLICAS", "3")
    monkeypatch.setenv("FLEETLM_OPERATOR_IMAGE_PULL_POLICY", "Always")
    settings = OperatorSettings()
    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.router_replicas == 3
    assert settings.image_pull_policy == "Always"


@pytest.mark.parametrize(
    "changes",
    [
        {"router_replicas": -1},
        {"resync_interval_s": 0},
        {"router_strategy": "random"},
        {"image_pull_policy": "Sometimes"},
        {"master_port": 0},
        {"unknown_setting": 1},
    ],
)
def test_invalid(changes):
    with pytest.raises(ValidationError):
        OperatorSettings(**changes)
