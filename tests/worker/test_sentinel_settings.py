"""Redis Sentinel settings (issue 19, item 1): Celery's ``sentinel://`` form accepted in
CELERY_BROKER_URL and REDIS_URL, the master's name required, one-line errors that name
the variable and never show a password, and what Celery, kombu and celery-redbeat are
handed. The deployment itself: tests/server/test_sentinel.py and the fault suite."""

from __future__ import annotations

import pytest
from aiecs_core import ConfigurationError
from aiecs_worker.app import create_app
from aiecs_worker.runner.poison import Connection
from aiecs_worker.settings import load_settings

URL = "sentinel://:masterpw@10.0.0.1:26379/2;sentinel://10.0.0.2:26380;sentinel://10.0.0.3"


def _error(**kw) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as info:
        load_settings(**kw)
    return info.value


def test_the_sentinel_form_is_accepted_and_parsed():
    s = load_settings(celery_broker_url=URL, redis_url=URL, aiecs_sentinel_master="main",
                      aiecs_sentinel_password="sentinelpw")
    target = s.redis_target(s.state_redis_url)
    assert target.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("10.0.0.3", 26379))
    assert (target.master, target.db, target.password, target.sentinel_password) == (
        "main", 2, "masterpw", "sentinelpw")
    assert "masterpw" not in repr(target) and "sentinelpw" not in repr(target)


@pytest.mark.parametrize("env,name,needle", [
    ({"celery_broker_url": URL}, "AIECS_SENTINEL_MASTER", "CELERY_BROKER_URL is a sentinel"),
    ({"redis_url": URL}, "AIECS_SENTINEL_MASTER", "REDIS_URL is a sentinel"),
    ({"celery_broker_url": "sentinel://:masterpw@h:port", "aiecs_sentinel_master": "m"},
     "CELERY_BROKER_URL", "sentinel 1: the port is not a number"),
    ({"redis_url": "sentinel://h:1;redis://:masterpw@h:2", "aiecs_sentinel_master": "m"},
     "REDIS_URL", "sentinel 2 is not a sentinel:// URL"),
    ({"redis_url": "sentinel://:masterpw@h:1/zero", "aiecs_sentinel_master": "m"},
     "REDIS_URL", "the path must be a database number"),
])
def test_bad_sentinel_settings_fail_in_one_line_naming_the_variable(env, name, needle):
    err = _error(**env)
    assert err.env_var == name
    assert needle in err.message and "\n" not in err.message
    assert "masterpw" not in err.message


def test_the_broker_may_be_another_master_of_the_same_sentinels():
    s = load_settings(celery_broker_url=URL, redis_url=URL.replace("/2;", "/3;"),
                      aiecs_sentinel_master="state", aiecs_broker_sentinel_master="mq")
    assert s.redis_target(s.celery_broker_url).master == "mq"
    assert s.redis_target(s.result_backend).master == "mq"  # the broker's URL
    assert s.redis_target(s.state_redis_url).master == "state"


def test_celery_kombu_and_redbeat_are_handed_the_master():
    s = load_settings(celery_broker_url=URL, redis_url=URL, aiecs_sentinel_master="main",
                      aiecs_sentinel_password="sentinelpw")
    conf = create_app(s).conf
    for options in (conf.broker_transport_options, conf.result_backend_transport_options):
        assert options["master_name"] == "main"
        assert options["sentinel_kwargs"] == {"password": "sentinelpw"}
        assert options["visibility_timeout"] == s.celery_visibility_timeout
    assert conf.redbeat_redis_url.startswith("redis-sentinel")
    assert conf.redbeat_redis_options["service_name"] == "main"
    assert conf.redbeat_redis_options["sentinels"][1] == ("10.0.0.2", 26380)
    assert conf.redbeat_redis_options["password"] == "masterpw"
    # the worker's malformed-message screening sits on kombu's Sentinel transport too
    transport = Connection(URL).get_transport_cls()
    from kombu.transport.redis import SentinelTransport

    assert issubclass(transport, SentinelTransport) and transport is not SentinelTransport
    assert transport.Channel.__name__ == "SentinelChannel" and hasattr(transport.Channel, "_admit")
