"""aiecs_core's import structure: ``import aiecs_core`` is cheap (PEP 562 lazy names), every
public name still resolves, and importing a provider plugin imports no SDK.

No timing here (see the commit messages for numbers): what is checked is *which modules*
an import loads, in a fresh interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys

import aiecs_core
import pytest


def loaded_after(code: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running ``code``."""
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True, text=True, check=True,
    )
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_every_public_name_resolves():
    for name in aiecs_core.__all__:
        assert getattr(aiecs_core, name) is not None, name
    namespace: dict = {}
    exec("from aiecs_core import *", namespace)  # noqa: S102
    assert set(aiecs_core.__all__) <= set(namespace)
    assert set(aiecs_core.__all__) <= set(dir(aiecs_core))


def test_the_name_table_matches_the_submodules():
    from aiecs_core import errors, models

    assert set(aiecs_core._ERRORS) == set(errors.__all__)
    assert set(aiecs_core._MODELS) == set(models.__all__)
    for name, module in aiecs_core._WHERE.items():
        sub = getattr(aiecs_core, module)
        assert getattr(sub, name) is getattr(aiecs_core, name), name


def test_submodules_are_attributes_and_unknown_names_fail():
    assert aiecs_core.llm.ChatInput.__name__ == "ChatInput"
    assert aiecs_core.testing.EchoService.name == "echo"
    with pytest.raises(AttributeError, match="no_such_name"):
        aiecs_core.no_such_name  # noqa: B018
    with pytest.raises(ImportError):
        exec("from aiecs_core import no_such_name", {})  # noqa: S102


def test_import_aiecs_core_loads_no_submodule_nor_pydantic():
    mods = loaded_after("import aiecs_core")
    assert not {m for m in mods if m.startswith("aiecs_core.")}
    assert "pydantic" not in mods and "pluggy" not in mods


def test_the_errors_need_no_pydantic():
    mods = loaded_after("from aiecs_core import AiecsError, RateLimitError, error_info")
    assert "pydantic" not in mods and "pluggy" not in mods
    assert "aiecs_core.models" not in mods


#: Empty namespace packages that google-cloud-aiplatform's ``*-nspkg.pth`` file creates
#: as every interpreter of the environment starts: they import no code.
NAMESPACES = {"google", "google.cloud"}


def test_the_llm_helpers_import_no_sdk():
    mods = loaded_after("import aiecs_core.llm") - NAMESPACES
    assert not {m for m in mods if m.split(".")[0] in ("openai", "google", "httpx", "httpx2")}


@pytest.mark.parametrize(
    ("plugin", "sdk"),
    [("aiecs_providers_openai.plugin", "openai"), ("aiecs_providers_xai.plugin", "openai"),
     ("aiecs_providers_vertex.plugin", "google.genai"),
     ("aiecs_providers_vertex.plugin", "google.cloud.aiplatform")],
)
def test_loading_a_provider_plugin_imports_no_sdk(plugin, sdk):
    pytest.importorskip(plugin)
    mods = loaded_after(f"import {plugin}")
    assert sdk not in mods
