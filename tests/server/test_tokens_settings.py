"""Tokens (sign, verify, fail closed) and the server's settings."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from aiecs_core import ConfigurationError
from aiecs_worker.server.settings import load_server_settings
from aiecs_worker.server.tokens import TokenError, issue_token, verify_token

SECRET = "k" * 40


def test_roundtrip_carries_user_and_expiry():
    now = time.time()
    token = issue_token("alice", SECRET, ttl=120)
    identity = verify_token(token, SECRET)
    assert identity.user_id == "alice"
    assert now + 110 < identity.expires_at <= now + 121


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (None, "missing token"),
        ("", "missing token"),
        (12345, "malformed token"),
        ({"sub": "alice"}, "malformed token"),
        ("not-a-jwt", "malformed token"),
        ("a.b.c", "malformed token"),
        ("x" * 5000, "malformed token"),
    ],
)
def test_missing_or_malformed_refused(token, reason):
    with pytest.raises(TokenError, match=reason):
        verify_token(token, SECRET)


def test_wrong_secret_refused():
    with pytest.raises(TokenError, match="invalid token signature"):
        verify_token(issue_token("alice", "o" * 40), SECRET)


def test_tampered_payload_refused():
    head, _payload, sig = issue_token("alice", SECRET).split(".")
    forged = base64.urlsafe_b64encode(
        json.dumps({"sub": "bob", "aud": "aiecs", "exp": int(time.time()) + 60}).encode()
    ).rstrip(b"=").decode()
    with pytest.raises(TokenError, match="signature"):
        verify_token(f"{head}.{forged}.{sig}", SECRET)


def test_expired_refused():
    token = issue_token("alice", SECRET, ttl=10, now=time.time() - 60)
    with pytest.raises(TokenError, match="token expired"):
        verify_token(token, SECRET)


def test_unsigned_alg_none_refused():
    token = jwt.encode({"sub": "alice", "aud": "aiecs", "exp": int(time.time()) + 60}, key=None,
                       algorithm="none")
    with pytest.raises(TokenError):
        verify_token(token, SECRET)


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "alice", "aud": "other", "exp": 10**10},  # someone else's token
        {"sub": "alice", "aud": "aiecs"},  # no expiry
        {"aud": "aiecs", "exp": 10**10},  # no subject
        {"sub": "al:ice", "aud": "aiecs", "exp": 10**10},  # not a valid user id
        {"sub": ["alice"], "aud": "aiecs", "exp": 10**10},
    ],
)
def test_incomplete_or_foreign_claims_refused(claims):
    with pytest.raises(TokenError):
        verify_token(jwt.encode(claims, SECRET, algorithm="HS256"), SECRET)


def test_issue_rejects_invalid_user_ids():
    for bad in ("", "a:b", "a/b", "x" * 200):
        with pytest.raises(ValueError):
            issue_token(bad, SECRET)


def test_secret_required_outside_dev_mode(monkeypatch):
    settings = load_server_settings()
    with pytest.raises(ConfigurationError) as info:
        settings.secret()
    assert info.value.env_var == "AIECS_SECRET_KEY"


def test_short_secret_rejected(monkeypatch):
    monkeypatch.setenv("AIECS_SECRET_KEY", "short")
    with pytest.raises(ConfigurationError, match="at least 32 characters"):
        load_server_settings()


def test_dev_mode_generates_a_secret_per_process(monkeypatch):
    monkeypatch.setenv("AIECS_DEV", "1")
    a, b = load_server_settings(), load_server_settings()
    assert len(a.secret()) >= 32 and a.secret() != b.secret()


@pytest.mark.parametrize("value", ["*", "http://a.example,*", "https://*.example.com"])
def test_wildcard_origins_rejected(monkeypatch, value):
    monkeypatch.setenv("CORS_ALLOWED_ORIGINS", value)
    with pytest.raises(ConfigurationError, match="CORS_ALLOWED_ORIGINS"):
        load_server_settings()


def test_origins_are_explicit_and_include_the_page(monkeypatch):
    monkeypatch.setenv("CORS_ALLOWED_ORIGINS", "http://localhost:3000, https://app.example/")
    monkeypatch.setenv("AIECS_PORT", "8123")
    settings = load_server_settings()
    assert settings.cors_allowed_origins == ["http://localhost:3000", "https://app.example"]
    assert settings.allowed_origins() == [
        "http://127.0.0.1:8123", "http://localhost:8123", "http://localhost:3000",
        "https://app.example",
    ]


def test_path_in_origin_rejected(monkeypatch):
    monkeypatch.setenv("CORS_ALLOWED_ORIGINS", "http://localhost:3000/app")
    with pytest.raises(ConfigurationError, match="not an origin"):
        load_server_settings()


def test_a_verified_token_is_checked_once_and_still_expires(monkeypatch):
    """The HMAC and claims checks run once per token (the revocation gate and the route
    both verify it); its expiry is still checked at every call, and another secret does
    not find it."""
    import aiecs_worker.server.tokens as tokens

    decoded = []
    real = jwt.decode
    monkeypatch.setattr(tokens.jwt, "decode", lambda *a, **k: decoded.append(1) or real(*a, **k))
    token = issue_token("alice", "s" * 32, ttl=60)
    first = verify_token(token, "s" * 32)
    assert verify_token(token, "s" * 32) == first and len(decoded) == 1
    with pytest.raises(TokenError, match="signature"):
        verify_token(token, "t" * 32)
    monkeypatch.setattr(tokens.time, "time", lambda: first.expires_at)
    with pytest.raises(TokenError, match="expired"):
        verify_token(token, "s" * 32)
