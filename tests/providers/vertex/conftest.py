"""Fixtures of the Vertex provider tests: the local Vertex AI endpoints server, and the
environment pointing the ``vertex/endpoint`` service at it."""

from __future__ import annotations

import pytest

from tests.support.fake_vertex_endpoints import FakeVertexEndpoints


@pytest.fixture
def endpoints():
    with FakeVertexEndpoints() as server:
        yield server


@pytest.fixture
def endpoints_env(endpoints, monkeypatch, tmp_path):
    for name, value in endpoints.env(endpoints.write_credentials(tmp_path)).items():
        monkeypatch.setenv(name, value)
