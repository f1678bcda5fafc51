"""aiecs_core.redaction: the registry of secrets, redaction of text, data and JSON, the log
filter, and where core applies it (errors, service registration)."""

from __future__ import annotations

import io
import json
import logging

import pytest
from aiecs_core import (
    AuthenticationError,
    OperationContext,
    ProviderError,
    Service,
    ServiceRegistry,
    StreamInterruptedError,
    operation,
)
from aiecs_core.redaction import (
    REDACTED,
    RedactingFilter,
    forget_secrets,
    install_log_redaction,
    redact,
    redact_data,
    redact_json,
    register_env_secrets,
    register_secret,
    registered_secrets,
)
from pydantic import BaseModel

from tests.support.plugins import ServicesPlugin

SECRET = "plain-0123456789abcdef"  # no key shape: only the registry knows it


@pytest.fixture(autouse=True)
def _no_secrets():
    forget_secrets()
    yield
    forget_secrets()


# --- the registry --------------------------------------------------------------------------


def test_a_registered_secret_is_removed_exactly_wherever_it_appears():
    assert redact(f"id={SECRET}") == f"id={SECRET}"
    assert register_secret(SECRET)
    assert redact(f"id={SECRET};x{SECRET}y") == f"id={REDACTED};x{REDACTED}y"
    assert SECRET in registered_secrets()


def test_short_blank_and_non_string_values_are_not_registered():
    for value in (None, "", "   ", "short", 12345678, "redacted"):
        assert not register_secret(value)  # type: ignore[arg-type]
    assert registered_secrets() == frozenset()
    assert redact("a short word") == "a short word"


def test_a_secret_is_removed_in_its_json_escaped_and_url_encoded_forms():
    odd = 'key/with"quote+plus'
    register_secret(odd)
    assert redact(json.dumps({"k": odd})) == json.dumps({"k": REDACTED})
    assert redact("?key=key%2Fwith%22quote%2Bplus&x=1") == f"?key={REDACTED}&x=1"


def test_the_longer_of_two_overlapping_secrets_is_removed_whole():
    register_secret("abcdefgh")
    register_secret("abcdefgh-and-more")
    assert redact("abcdefgh-and-more") == REDACTED


def test_env_secrets_by_name_and_by_suffix():
    env = {"OPENAI_API_KEY": "o" * 20, "XAI_API_KEY": "x" * 20, "AIECS_SECRET_KEY": "s" * 40,
           "DB_PASSWORD": "p" * 12, "SOME_TOKEN": "t" * 10, "MY_VAR": "v" * 20,
           "EMPTY_API_KEY": "", "MY_SETTING": "m" * 20}
    assert sorted(register_env_secrets(environ=env)) == [
        "AIECS_SECRET_KEY", "DB_PASSWORD", "OPENAI_API_KEY", "SOME_TOKEN", "XAI_API_KEY"]
    assert register_env_secrets(["MY_VAR", "UNSET"], environ=env) == ["MY_VAR"]
    assert "m" * 20 not in registered_secrets()


# --- shapes --------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "sk-proj-abcdefghijklmnop", "sk-canary-0123456789", "sk_live_0123456789",
    "xai-ABCDEFGH1234", "AIzaSyA1234567890abcdefghijklmnopqrstuv", "ya29.a0AfH6SMBx-token",
    "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJ4In0.c2lnbmF0dXJlLXNpZ25hdHVyZQ",
])
def test_key_shapes_are_removed(text):
    assert redact(f"key {text} here") == f"key {REDACTED} here"


def test_a_bearer_token_is_removed_and_the_scheme_kept():
    assert redact("Authorization: Bearer abc.def-ghi_jkl==") == f"Authorization: Bearer {REDACTED}"
    assert redact("x-echo: bearer opaque0123456789") == f"x-echo: bearer {REDACTED}"


def test_ordinary_words_are_left_alone():
    text = "skateboarding skills: skip the sketchy xaitest, AIza bearer of news"
    assert redact(text) == text


def test_redaction_is_idempotent():
    register_secret(SECRET)
    once = redact(f"Bearer {SECRET} sk-abcdefghijkl {SECRET}")
    assert redact(once) == once


# --- data and JSON -------------------------------------------------------------------------


def test_redact_data_walks_dicts_lists_and_tuples_keys_included():
    register_secret(SECRET)
    data = {"a": [SECRET, 1, None, 2.5, True], SECRET: ("x", f"<{SECRET}>"), "n": {"m": SECRET}}
    assert redact_data(data) == {
        "a": [REDACTED, 1, None, 2.5, True], REDACTED: ("x", f"<{REDACTED}>"),
        "n": {"m": REDACTED},
    }


@pytest.mark.parametrize("credential", [
    SECRET, "sk-proj-abcdefghijklmnop", "xai-ABCDEFGH1234",
    "AIzaSyA1234567890abcdefghijklmnopqrstuv", "ya29.a0AfH6SMBx-token",
    "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJ4In0.c2lnbmF0dXJlLXNpZ25hdHVyZQ", "Bearer abcdefghijkl",
])
def test_redact_data_finds_a_credential_wherever_it_sits_in_a_container(credential):
    """redact_data tests a container's strings joined before redacting them one by one:
    a credential alone in a string, at a string's start or end, in a key, in a tuple, or
    beside a string ending like a word (the shapes' lookbehinds), is found all the same;
    a container with none comes back equal, as a copy."""
    register_secret(SECRET)
    clean = {"task_id": "t-1", "usage": [{"model": "m", "n": 3}], "t": ("a", 1), 5: None}
    out = redact_data(clean)
    assert out == clean and out is not clean and out["usage"][0] is not clean["usage"][0]
    for place in (credential, f"{credential} end", f"start {credential}", f"x\x00{credential}"):
        for data in ({"k": place}, {place: 1}, ["word", place, "sk"], ("abc", (place,)),
                     {"a": ["Bear", {"b": place}]}):
            out = redact_data(data)
            assert "abcdefghijkl" not in repr(out) and "0123456789" not in repr(out) and \
                "ABCDEFGH1234" not in repr(out) and "SMBx" not in repr(out) and \
                "c2lnbmF0dXJl" not in repr(out) and "A1234567890" not in repr(out), (data, out)
            assert REDACTED in repr(out)
    # a word ending right before a separator does not make a shape out of the next string
    assert redact_data(["Bearer", "abcdefghijkl"]) == ["Bearer", "abcdefghijkl"]
    assert redact_data(["xsk", "-abcdefghijkl"]) == ["xsk", "-abcdefghijkl"]


def test_redact_json_keeps_valid_json_and_leaves_clean_text_untouched():
    register_secret('tricky"secret,1')
    clean = '{"a":1,"b":"text"}'
    assert redact_json(clean) is clean
    text = json.dumps({"a": 'x tricky"secret,1 y', "b": [1, 2]}, separators=(",", ":"))
    out = redact_json(text)
    assert json.loads(out) == {"a": f"x {REDACTED} y", "b": [1, 2]}
    assert out.startswith('{"a":')  # the event encoder relies on the leading '{'
    assert redact_json(f"not json {SECRET} sk-abcdefghijkl") == f"not json {SECRET} {REDACTED}"


# --- errors --------------------------------------------------------------------------------


def test_an_error_redacts_its_message_and_details_when_built():
    register_secret(SECRET)
    error = AuthenticationError(f"HTTP 401: bad key {SECRET}", provider="openai",
                                request_id=SECRET, headers={"x-request-id": SECRET})
    assert error.message == f"HTTP 401: bad key {REDACTED}"
    assert error.details == {"provider": "openai", "request_id": REDACTED,
                             "headers": {"x-request-id": REDACTED}}
    assert SECRET not in repr(error) and SECRET not in str(error.to_info().model_dump())
    rebuilt = type(error)(*error.args)  # Celery's round trip is unchanged
    assert rebuilt.args == error.args


def test_partial_output_is_redacted_in_a_stream_error():
    error = StreamInterruptedError("cut", partial_output="the key is sk-abcdefghijkl")
    assert error.partial_output == f"the key is {REDACTED}"


# --- services declare their secrets ----------------------------------------------------------


class Ping(BaseModel):
    text: str = ""


class KeyedService(Service):
    mode = "test"
    name = "keyed"
    secret_env = ("KEYED_PROVIDER_CREDENTIAL",)

    @operation
    async def ping(self, ctx: OperationContext, data: Ping) -> str:
        return "pong"


def test_a_services_declared_secret_env_is_registered_with_it(monkeypatch):
    monkeypatch.setenv("KEYED_PROVIDER_CREDENTIAL", SECRET)
    registry = ServiceRegistry()
    registry.register_plugin(ServicesPlugin(KeyedService), "keyed")
    assert SECRET in registered_secrets()
    forget_secrets()
    registry.instance("test", "keyed")  # and again when it is instantiated
    assert SECRET in registered_secrets()
    assert redact(f"x {SECRET}") == f"x {REDACTED}"


def test_a_malformed_secret_env_fails_the_plugin():
    class Bad(KeyedService):
        name = "bad"
        secret_env = "KEYED_PROVIDER_CREDENTIAL"  # type: ignore[assignment]

    registry = ServiceRegistry()
    assert registry.register_plugin(ServicesPlugin(Bad), "bad") is None
    assert "PluginError" in registry.failures[0].reason
    assert "secret_env" in registry.failures[0].reason


def test_openai_compat_services_declare_their_api_key_env():
    from aiecs_providers_openai.plugin import OpenAIService
    from aiecs_providers_xai.plugin import XAIService

    assert OpenAIService.secret_env == ("OPENAI_API_KEY",)
    assert XAIService.secret_env == ("XAI_API_KEY",)


# --- logging -------------------------------------------------------------------------------


@pytest.fixture
def captured():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s %(detail)s"))
    logger = logging.getLogger("aiecs.test.redaction")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, handler, stream
    logger.removeHandler(handler)


def test_the_filter_redacts_messages_arguments_tracebacks_and_extras(captured):
    logger, handler, stream = captured
    register_secret(SECRET)
    assert install_log_redaction(logger) >= 1
    assert install_log_redaction(logger) == 0  # once per handler
    logger.debug("headers %s", {"x-request-id": SECRET}, extra={"detail": SECRET})
    try:
        raise ProviderError(f"boom {SECRET}") from KeyError(SECRET)
    except ProviderError:
        logger.exception("failed with %r", f"Bearer {SECRET}", extra={"detail": "-"})
    text = stream.getvalue()
    assert SECRET not in text
    assert f"headers {{'x-request-id': '{REDACTED}'}} {REDACTED}" in text
    assert "Traceback" in text and f"KeyError: '{REDACTED}'" in text


def test_the_filter_keeps_a_record_whose_format_is_broken(captured):
    logger, handler, stream = captured
    handler.addFilter(RedactingFilter())
    record = logging.LogRecord("x", logging.INFO, "f", 1, "%d", ("not a number",), None)
    assert handler.filters[0].filter(record) is True


def _access_record(path: str) -> logging.LogRecord:
    # what uvicorn's access logger emits: a format string and five arguments
    return logging.LogRecord("uvicorn.access", logging.INFO, "h11_impl.py", 1,
                             '%s - "%s %s HTTP/%s" %d',
                             ("127.0.0.1:5000", "GET", path, "1.1", 200), None)


def test_formatters_that_unpack_args_still_work_after_redaction():
    # uvicorn's AccessFormatter unpacks record.args: the filter keeps them a tuple
    from uvicorn.logging import AccessFormatter

    formatter = AccessFormatter('%(client_addr)s "%(request_line)s" %(status_code)s',
                                use_colors=False)
    clean = _access_record("/config")
    assert RedactingFilter().filter(clean) and clean.args[2] == "/config"
    assert formatter.format(clean) == '127.0.0.1:5000 "GET /config HTTP/1.1" 200 OK'
    register_secret(SECRET)
    leaky = _access_record(f"/tasks?key={SECRET}")
    assert RedactingFilter().filter(leaky) and isinstance(leaky.args, tuple)
    line = formatter.format(leaky)
    assert SECRET not in line and f"/tasks?key={REDACTED}" in line
