"""``AIECS_MODELS`` and ``AIECS_MAX_OUTPUT_TOKENS``: read, validated (a bad value names its
variable), and applied in this process by the policy ``aiecs_worker`` installs, following
the settings as ``get_settings`` reloads them."""

from __future__ import annotations

import pytest
from aiecs_core import ConfigurationError, InputValidationError, load_plugins, validate_input
from aiecs_worker.settings import get_settings, load_settings

USER = [{"role": "user", "content": "hi"}]


@pytest.fixture
def reload_settings():
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_values_are_parsed(monkeypatch):
    s = load_settings()
    assert s.aiecs_models is None and s.aiecs_max_output_tokens == 131_072
    monkeypatch.setenv("AIECS_MODELS", '{"openai": ["gpt-4o-mini", "org/m"], "xai": []}')
    monkeypatch.setenv("AIECS_MAX_OUTPUT_TOKENS", '{"*": 4096, "vertex": 65536}')
    s = load_settings()
    assert s.aiecs_models == {"openai": ["gpt-4o-mini", "org/m"], "xai": []}
    assert s.aiecs_max_output_tokens == {"*": 4096, "vertex": 65536}
    monkeypatch.setenv("AIECS_MAX_OUTPUT_TOKENS", " 2048 ")
    assert load_settings().aiecs_max_output_tokens == 2048


@pytest.mark.parametrize(("env", "value", "needle"), [
    ("AIECS_MODELS", "gpt-4o-mini", "AIECS_MODELS"),
    ("AIECS_MODELS", '["gpt-4o-mini"]', "AIECS_MODELS"),
    ("AIECS_MODELS", '{"vertex": ["projects/p/locations/l/endpoints/1#"]}', "not a model id"),
    ("AIECS_MAX_OUTPUT_TOKENS", "lots", "AIECS_MAX_OUTPUT_TOKENS"),
    ("AIECS_MAX_OUTPUT_TOKENS", "0", "at least 1"),
    ("AIECS_MAX_OUTPUT_TOKENS", '{"openai": -5}', "at least 1"),
])
def test_a_bad_value_names_its_variable(monkeypatch, env, value, needle):
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigurationError, match=needle) as info:
        load_settings()
    assert info.value.details["env_var"] == env


def test_the_installed_policy_follows_the_settings(monkeypatch, reload_settings):
    spec = load_plugins().operation("llm", "openai", "chat")
    validate_input(spec, {"model": "gpt-4o", "messages": USER, "max_output_tokens": 131_072})
    with pytest.raises(InputValidationError, match="ceiling of 131072"):
        validate_input(spec, {"model": "gpt-4o", "messages": USER,
                              "max_output_tokens": 131_073})
    monkeypatch.setenv("AIECS_MODELS", '{"openai": ["gpt-4o-mini"]}')
    get_settings.cache_clear()
    with pytest.raises(InputValidationError, match="allowed: gpt-4o-mini"):
        validate_input(spec, {"model": "gpt-4o", "messages": USER})
    validate_input(spec, {"model": "gpt-4o-mini", "messages": USER})
    # Another provider is not listed: any model id.
    validate_input(load_plugins().operation("llm", "xai", "chat"),
                   {"model": "gpt-4o", "messages": USER})
