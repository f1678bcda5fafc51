"""deploy/compose.sentinel.yml (issue 19, item 7: aiecs on Sentinel, documented and
tested): the override parses, names every aiecs service of compose.yaml, gives them
sentinel:// URLs the settings accept with the master name the sentinels monitor, and
runs three sentinels with a quorum of two. (Docker does not run here: checked statically,
through the same Settings every aiecs process builds.)"""

from __future__ import annotations

import pytest

yaml = pytest.importorskip("yaml")

from aiecs_worker.settings import Settings  # noqa: E402

from tests.support.deploy_files import DEPLOY, compose  # noqa: E402


def _override() -> dict:
    return yaml.safe_load((DEPLOY / "compose.sentinel.yml").read_text())


def _aiecs_services(doc: dict) -> set[str]:
    return {name for name, svc in doc["services"].items()
            if str(svc.get("image", "")).startswith("aiecs:")}


def test_every_aiecs_service_is_configured_for_sentinel():
    base, over = compose(), _override()
    names = _aiecs_services(base)
    assert names and names <= set(over["services"]), names - set(over["services"])
    for name in names:
        env = {**base["services"][name]["environment"], **over["services"][name]["environment"]}
        settings = Settings(**{k.lower(): v for k, v in env.items()
                               if k.lower() in Settings.model_fields})
        assert settings.celery_broker_url.startswith("sentinel://")
        assert settings.redis_url.startswith("sentinel://")
        assert settings.aiecs_sentinel_master == "aiecs"


def test_three_sentinels_monitor_the_master_aiecs_names():
    over = _override()
    sentinels = [svc for name, svc in over["services"].items() if name.startswith("sentinel-")]
    assert len(sentinels) == 3
    master = over["services"]["server"]["environment"]["AIECS_SENTINEL_MASTER"]
    for svc in sentinels:
        script = " ".join(svc["command"])
        assert f"sentinel monitor {master} redis 6379 2" in script
    hosts = over["services"]["server"]["environment"]["REDIS_URL"]
    assert sorted(h.split("//")[1].split(":")[0] for h in hosts.split(";")) == [
        "sentinel-1", "sentinel-2", "sentinel-3"]
    assert "--replicaof" in over["services"]["redis-replica"]["command"]


def test_the_kubernetes_overlay_names_the_master_the_settings_read():
    kust = yaml.safe_load((DEPLOY / "k8s" / "sentinel" / "kustomization.yaml").read_text())
    assert kust["resources"] == ["../"]
    [patch] = kust["patches"]
    assert patch["target"] == {"kind": "ConfigMap", "name": "aiecs-config"}
    [op] = yaml.safe_load(patch["patch"])
    assert op["op"] == "add" and op["path"] == "/data/AIECS_SENTINEL_MASTER"
    assert "aiecs_sentinel_master" in Settings.model_fields
    url = ";".join(f"sentinel://redis-sentinel-{i}.redis-sentinel:26379" for i in range(3))
    settings = Settings(celery_broker_url=url, redis_url=url, aiecs_sentinel_master=op["value"])
    assert settings.aiecs_sentinel_master == "aiecs"
