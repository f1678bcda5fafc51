"""aiecs_core.llm: the SDK-agnostic chat lifecycle (stream_chat, chat_result) and the
request helpers every LLM provider shares, with a scripted stream instead of an SDK."""

from __future__ import annotations

import asyncio

import pytest
from aiecs_core import (
    ConfigurationError,
    ProviderConnectionError,
    ProviderServerError,
    RecordingContext,
    StreamInterruptedError,
    Usage,
)
from aiecs_core.llm import (
    ChatDelta,
    ChatInput,
    EmbedBatch,
    EmbedInput,
    ToolCallDelta,
    embed_batched,
    embed_batches,
    estimate_tokens,
    rate_limit_key,
    request_timeout,
    stream_chat,
    timeout_setting,
)
from aiecs_core.testing import make_request

DATA = ChatInput(model="m", messages=[{"role": "user", "content": "hello there"}])


class SdkError(Exception):
    """What a provider SDK raises."""


def convert(exc: Exception) -> ProviderServerError | None:
    return ProviderServerError("acme: boom", provider="acme") if isinstance(exc, SdkError) else None


def usage(model: str, report: dict) -> Usage:
    return Usage(provider="acme", model=model, input_tokens=report["in"], output_tokens=9)


def finish_reason(raw: str, tool_calls: list) -> str:
    return "tool_calls" if tool_calls else raw


class Script:
    """An async generator of deltas that records whether it was closed."""

    def __init__(self, *deltas: ChatDelta, then: BaseException | None = None, hang=False):
        self.deltas, self.then, self.hang, self.closed = deltas, then, hang, False

    async def __call__(self):
        try:
            for delta in self.deltas:
                await asyncio.sleep(0)
                yield delta
            if self.hang:
                await asyncio.Event().wait()
            if self.then is not None:
                raise self.then
        finally:
            self.closed = True


def run(script: Script, data: ChatInput = DATA, **kw):
    ctx = RecordingContext(make_request("llm", "acme", "chat", data.model_dump()))

    async def main():
        try:
            return await stream_chat(
                ctx,
                data,
                script(),
                provider="acme",
                convert_error=convert,
                usage=usage,
                finish_reason=finish_reason,
                **kw,
            ), ctx
        except BaseException as exc:  # returned for the assertions
            return exc, ctx

    return asyncio.run(main())


def streamed(ctx: RecordingContext) -> list[str]:
    return [e.delta for e in ctx.events if e.type == "stream"]


def test_text_is_pushed_and_the_result_built_with_reported_usage():
    script = Script(
        ChatDelta(model="m-001", text="the"),
        ChatDelta(text=" fox"),
        ChatDelta(usage={"in": 3}, finish="stop"),
    )
    result, ctx = run(script)
    assert streamed(ctx) == ["the", " fox"]
    assert (result.text, result.finish_reason, result.model) == ("the fox", "stop", "m-001")
    assert result.usage == ctx.usage[0] and result.usage.input_tokens == 3
    assert len(ctx.usage) == 1 and script.closed


def test_tool_call_fragments_are_joined_by_index():
    script = Script(
        ChatDelta(tool_calls=[ToolCallDelta(1, "b", "second", '{"x"'), ToolCallDelta(0, "a")]),
        ChatDelta(tool_calls=[ToolCallDelta(1, None, "", ": 1}"), ToolCallDelta(0, "", "f")]),
        ChatDelta(finish="stop"),
    )
    result, ctx = run(script)
    assert [c.model_dump() for c in result.tool_calls] == [
        {"id": "a", "name": "f", "arguments": ""},
        {"id": "b", "name": "second", "arguments": '{"x": 1}'},
    ]
    assert result.finish_reason == "tool_calls"
    assert ctx.usage[0].cost is None  # nothing reported: an estimate


def test_structured_output_is_parsed():
    data = ChatInput.model_validate(
        {**DATA.model_dump(), "response_format": {"json_schema": {"type": "object"}}}
    )
    result, _ = run(Script(ChatDelta(text='{"a": 1}', finish="stop")), data)
    assert result.parsed == {"a": 1}


def test_an_error_before_output_is_the_converted_error():
    error, ctx = run(Script(then=SdkError()))
    assert isinstance(error, ProviderServerError) and isinstance(error.__cause__, SdkError)
    assert ctx.usage == []


def test_an_error_after_output_is_a_stream_interruption():
    script = Script(ChatDelta(text="partial"), then=SdkError())
    error, ctx = run(script)
    assert isinstance(error, StreamInterruptedError) and not error.is_retryable
    assert error.partial_output == "partial" and "ProviderServerError" in error.message
    assert len(ctx.usage) == 1 and script.closed


def test_an_error_that_is_not_the_sdks_propagates_as_it_is():
    error, _ = run(Script(ChatDelta(text="x"), then=KeyError("bug")))
    assert type(error) is KeyError


@pytest.mark.parametrize(
    ("deltas", "cls"),
    [((ChatDelta(text="half"),), StreamInterruptedError), ((), ProviderConnectionError)],
)
def test_a_stream_ending_without_a_finish_reason_is_cut(deltas, cls):
    error, ctx = run(Script(*deltas))
    assert type(error) is cls and "the stream ended before" in error.message
    assert len(ctx.usage) == 1


@pytest.mark.parametrize(
    ("finished", "cumulative", "reported"),
    [(False, False, True), (False, True, False), (True, True, True)],
)
def test_cancelling_records_usage_so_far(finished, cumulative, reported):
    deltas = [ChatDelta(text="so far", usage={"in": 70})]
    if finished:
        deltas.append(ChatDelta(finish="stop"))
    script = Script(*deltas, hang=True)
    ctx = RecordingContext(make_request("llm", "acme", "chat", DATA.model_dump()))

    async def main():
        task = asyncio.ensure_future(
            stream_chat(
                ctx,
                DATA,
                script(),
                provider="acme",
                convert_error=convert,
                usage=usage,
                finish_reason=finish_reason,
                usage_is_cumulative=cumulative,
            )
        )
        while not ctx.events:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    (recorded,) = ctx.usage
    assert (recorded.input_tokens == 70) == reported
    assert script.closed


def test_timeout_setting(monkeypatch):
    assert timeout_setting("acme", "ACME_TIMEOUT", 120.0) == 120.0
    assert timeout_setting("acme", None, 5.0) == 5.0
    monkeypatch.setenv("ACME_TIMEOUT", " 2.5 ")
    assert timeout_setting("acme", "ACME_TIMEOUT", 120.0) == 2.5
    for bad in ("0", "-1", "soon", "nan"):
        monkeypatch.setenv("ACME_TIMEOUT", bad)
        with pytest.raises(ConfigurationError, match="ACME_TIMEOUT must be a positive") as info:
            timeout_setting("acme", "ACME_TIMEOUT", 120.0)
        assert info.value.env_var == "ACME_TIMEOUT"


def test_request_timeout_follows_the_deadline():
    assert request_timeout(120.0, None, 1.0) == 120.0
    assert request_timeout(120.0, 10.0, 1.0) == 11.0
    assert request_timeout(5.0, 10.0, 1.0) == 5.0
    assert request_timeout(5.0, -3.0, 1.0) == 0.05


def test_embed_batches_bound_items_and_tokens():
    assert list(embed_batches(["a"] * 5, 2, 100)) == [["a", "a"], ["a", "a"], ["a"]]
    assert list(embed_batches(["x" * 40, "y" * 40, "z"], 10, 15)) == [
        ["x" * 40],
        ["y" * 40, "z"],
    ]


def test_rate_limit_key():
    chat = rate_limit_key("acme", DATA.model_copy(update={"max_output_tokens": 100}))
    assert (chat.provider, chat.model) == ("acme", "m") and chat.tokens > 100
    embed = rate_limit_key("acme", EmbedInput(model="e", texts=["x" * 40, "y" * 40]))
    assert embed.tokens == 20
    assert rate_limit_key("acme", Usage(provider="p", model="m")) is None


# -- embed_batched --------------------------------------------------------------------------
EMBED = EmbedInput(model="e", texts=["one two", "three", "four five six"])


def run_embed(call, batches, data: EmbedInput = EMBED):
    ctx = RecordingContext(make_request("llm", "acme", "embed", data.model_dump()))

    async def main():
        return await embed_batched(ctx, data, batches, call, provider="acme",
                                   convert_error=convert)

    try:
        return asyncio.run(main()), ctx
    except BaseException as exc:  # noqa: BLE001 - the test inspects it
        return exc, ctx


def test_embed_batched_keeps_order_records_usage_and_progress():
    async def call(batch):
        return EmbedBatch(vectors=[[float(len(t))] for t in batch], model="e-002",
                          tokens=10 * len(batch) if len(batch) > 1 else None)

    result, ctx = run_embed(call, [["one two", "three"], ["four five six"]])
    assert result.vectors == [[7.0], [5.0], [13.0]]
    assert result.model == "e-002"
    guess = estimate_tokens("four five six")
    assert [u.input_tokens for u in ctx.usage] == [20, guess]  # reported, then estimated
    assert result.usage.input_tokens == 20 + guess
    assert [e.progress for e in ctx.events if e.type == "progress"] == [0.5, 1.0]


def test_embed_batched_wrong_count_is_a_server_error():
    async def call(batch):
        return EmbedBatch(vectors=[[1.0]])

    error, _ = run_embed(call, [["a", "b"]])
    assert isinstance(error, ProviderServerError)
    assert error.message == "acme: asked for 2 embeddings, got 1"


def test_embed_batched_converts_sdk_errors_and_reraises_bugs():
    async def sdk(batch):
        raise SdkError("503")

    async def bug(batch):
        raise KeyError("oops")

    error, ctx = run_embed(sdk, [["a"]])
    assert isinstance(error, ProviderServerError) and error.retryable
    assert isinstance(error.__cause__, SdkError) and ctx.usage == []
    assert isinstance(run_embed(bug, [["a"]])[0], KeyError)


def test_embed_batched_cancelled_records_the_batch_as_estimated():
    async def call(batch):
        if batch == ["second batch"]:
            raise asyncio.CancelledError
        return EmbedBatch(vectors=[[0.0]], tokens=4)

    error, ctx = run_embed(call, [["first"], ["second batch"]])
    assert isinstance(error, asyncio.CancelledError)
    # the finished batch as reported, the cancelled one as estimated
    assert [u.input_tokens for u in ctx.usage] == [4, estimate_tokens("second batch")]
