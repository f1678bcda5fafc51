"""Model ids, never resource paths (aiecs_core.llm.modelid), and the operator's model policy
(aiecs_core.modelpolicy) as ``validate_input`` applies it through ``Service.check_input``."""

from __future__ import annotations

import pytest
from aiecs_core import (
    InputValidationError,
    ModelPolicy,
    Service,
    install_model_policy,
    operation,
    validate_input,
)
from aiecs_core.llm import ChatInput, ChatResult, EmbedInput, check_model_id
from pydantic import ValidationError

USER = [{"role": "user", "content": "hi"}]

REAL_IDS = ["gpt-4o-mini", "gpt-4o-2024-08-06", "ft:gpt-4o-mini:my-org:custom:abc123",
            "gemini-2.0-flash-001", "gemini-2.5-flash", "text-embedding-005", "grok-2-1212",
            "grok-4", "claude-3-5-sonnet@20240620", "llama3.1:8b", "o3"]
NAMESPACED_IDS = ["meta-llama/Llama-3.1-8B-Instruct", "openai/gpt-4o"]
#: (model, what the path rule's message names, whether the body rule refuses it too)
HOSTILE = [
    ("projects/victim-project/locations/us-central1/endpoints/999", "'/'", False),
    ("publishers/google/models/gemini-2.0-flash", "'/'", False),
    ("projects/p/locations/l/endpoints/123:undeployModel#", "'#'", True),
    ("gemini-2.0-flash?alt=sse", "'?'", True),
    ("gemini%2F..%2Fendpoints", "'%'", True),
    ("../../endpoints/1", "'..'", True),
    ("a/./b", "'.'", True),
    ("gpt-4o-mini ", "' '", True),
    ("gpt-4o-mini\n", "'\\n'", True),
    ("gpt\t4o", "'\\t'", True),
    ("gpt-4o\x00", "'\\x00'", True),
    ("a\\b", "'\\\\'", True),
    ("/gpt-4o", "'/'", True),
    ("gpt-4o/", "'/'", True),
    ("-gpt", "'-gpt'", True),
]


@pytest.mark.parametrize("model", REAL_IDS)
def test_real_model_ids_are_accepted_everywhere(model):
    assert check_model_id(model, namespaced=False) == model
    assert ChatInput(model=model, messages=USER).model == model
    assert EmbedInput(model=model, texts=["x"]).model == model


@pytest.mark.parametrize("model", NAMESPACED_IDS)
def test_namespaced_ids_pass_the_body_rule_but_not_the_path_rule(model):
    assert ChatInput(model=model, messages=USER).model == model
    with pytest.raises(InputValidationError, match="contains '/'"):
        check_model_id(model, namespaced=False)


@pytest.mark.parametrize(("model", "named", "in_body"), HOSTILE, ids=list(range(len(HOSTILE))))
def test_hostile_models_are_refused_naming_the_problem(model, named, in_body):
    with pytest.raises(InputValidationError) as caught:
        check_model_id(model, namespaced=False)
    assert caught.value.message.startswith("model: ") and named in caught.value.message, \
        caught.value.message
    assert caught.value.details["field"] == "model"
    if not in_body:
        return  # a namespaced id: the body rule takes it, the path rule (above) does not
    for build in (lambda: ChatInput(model=model, messages=USER),
                  lambda: EmbedInput(model=model, texts=["x"])):
        with pytest.raises(ValidationError, match="not a model id"):
            build()


# -- the policy, through validate_input -----------------------------------------------------
class Shouter(Service):
    mode = "llm"
    name = "shouter"
    provider = "shout"

    @operation
    async def chat(self, ctx, data: ChatInput) -> ChatResult:  # pragma: no cover - not run
        raise NotImplementedError


@pytest.fixture
def policy():
    """Install a policy for one test; the process's own (aiecs_worker's) is put back."""
    previous = install_model_policy(None)
    yield install_model_policy
    install_model_policy(previous)


def test_without_a_policy_any_model_id_passes(policy):
    spec = Shouter.operations["chat"]
    data = validate_input(spec, {"model": "anything", "messages": USER,
                                 "max_output_tokens": 10**9})
    assert data.model == "anything"


def test_the_allow_list_and_the_ceiling_apply_under_the_service_provider(policy):
    spec = Shouter.operations["chat"]
    policy(ModelPolicy.build({"shout": ["loud-1", "loud-2"], "other": []},
                             {"*": 1000, "shout": 50}))
    assert validate_input(spec, {"model": "loud-1", "messages": USER,
                                 "max_output_tokens": 50}).model == "loud-1"
    with pytest.raises(InputValidationError) as caught:
        validate_input(spec, {"model": "quiet-1", "messages": USER})
    assert caught.value.message == ("model: 'quiet-1' is not allowed for provider 'shout' "
                                    "(AIECS_MODELS); allowed: loud-1, loud-2")
    with pytest.raises(InputValidationError) as caught:
        validate_input(spec, {"model": "loud-2", "messages": USER, "max_output_tokens": 51})
    assert caught.value.message == ("max_output_tokens: 51 is above the ceiling of 50 for "
                                    "provider 'shout' (AIECS_MAX_OUTPUT_TOKENS)")
    # A provider absent from the allow-list takes any id; "*" is every other's ceiling.
    assert ModelPolicy.build({"other": []}, {"*": 1000}).ceiling("shout") == 1000
    policy(ModelPolicy.build({"other": []}, 1000))
    validate_input(spec, {"model": "quiet-1", "messages": USER, "max_output_tokens": 1000})
    with pytest.raises(InputValidationError, match="ceiling of 1000"):
        validate_input(spec, {"model": "quiet-1", "messages": USER, "max_output_tokens": 1001})


def test_an_empty_allow_list_refuses_every_model(policy):
    policy(ModelPolicy.build({"shout": []}))
    with pytest.raises(InputValidationError, match="allowed: none"):
        validate_input(Shouter.operations["chat"], {"model": "loud-1", "messages": USER})
