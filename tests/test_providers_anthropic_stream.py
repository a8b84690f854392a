"""The Anthropic provider's lean reader of server-sent events reads a stream exactly as the SDK's
own decoder does, however the bytes are cut into chunks."""

import random

from anthropic._streaming import SSEDecoder

from harness.providers.anthropic import _READ_DONE, _server_sent_events

STREAMS = [
    b'event: message_start\ndata: {"type":"message_start"}\n\nevent: ping\ndata: {"type": "ping"}\n\n',
    b'event: content_block_delta\r\ndata: {"a":\r\ndata: 1}\r\n\r\n: a comment\r\n\r\nevent: x\r\n\r\n',
    b"event: e\rdata: one\rdata:two\rid: 7\rretry: 10\r\rdata\r\r",
    b'data: {"no": "name"}\n\nevent:error\ndata: {"type":"error","error":{"type":"overloaded_error"}}\n\n',
    b"event: tail\ndata: without the blank line",  # nothing: an event ends at its blank line
    "event: t\ndata: caf\u00e9 \u2713\n\n".encode(),
]


def _sdk(chunks: list[bytes]) -> list[tuple[str | None, str]]:
    return [(sse.event, sse.data) for sse in SSEDecoder().iter_bytes(iter(chunks))]


def _cut(data: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 8))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def test_the_lean_reader_yields_what_the_sdk_decoder_yields_for_any_chunking() -> None:
    rng = random.Random(14)
    for stream in STREAMS:
        whole = _sdk([stream])
        for _ in range(200):
            chunks = _cut(stream, rng)
            read = list(_server_sent_events(iter(chunks)))
            assert [e for e in read if e[0] is not _READ_DONE] == _sdk(chunks) == whole, chunks
            # A marker after what each chunk brought, and one at the end.
            assert [e for e in read if e[0] is _READ_DONE] == [(_READ_DONE, "")] * (len(chunks) + 1)
    assert [len(_sdk([stream])) for stream in STREAMS] == [2, 2, 2, 2, 0, 1]


def _complete(server, reply):  # type: ignore[no-untyped-def]
    from harness.providers.anthropic import AnthropicProvider
    from harness.providers.base import CancelToken, ModelRequest

    class Listener:
        def __init__(self) -> None:
            self.seen: list[tuple[str, int, str]] = []

        def block_start(self, index: int, block_type: str) -> None:
            self.seen.append(("start", index, block_type))

        def text_delta(self, index: int, text: str) -> None:
            self.seen.append(("delta", index, text))

    server.push(reply)
    provider = AnthropicProvider(api_key="sk-test", base_url=server.base_url)
    request = ModelRequest(
        model="claude-sonnet-4-6",
        system="Be terse.",
        tools=[],
        messages=[{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        max_tokens=64,
    )
    listener = Listener()
    return provider.complete(request, listener=listener, cancel=CancelToken()), listener


def test_an_error_event_in_the_stream_is_the_error_the_sdk_raises_for_it() -> None:
    import pytest

    from harness.providers.base import ModelError
    from tests.model_server import Reply, scripted_model

    with scripted_model() as server:
        with pytest.raises(ModelError) as caught:
            _complete(server, Reply(blocks=[{"type": "text", "text": "x"}], stream_error="overloaded_error"))
    assert caught.value.kind == "overloaded" and caught.value.retryable
    assert caught.value.message == "The model is overloaded: scripted error"


def test_a_streamed_answer_keeps_its_blocks_deltas_usage_and_stop_reason() -> None:
    from tests.model_server import Reply, scripted_model

    blocks = [
        {"type": "thinking", "thinking": "hmm"},
        {"type": "text", "text": "Let me look that up for you."},
        {"type": "tool_use", "name": "lookup", "input": {"topic": "caf\u00e9", "n": [1, 2]}},
    ]
    with scripted_model() as server:
        answer, listener = _complete(server, Reply(blocks=blocks, usage={"cache_read_input_tokens": 5}))
    assert [b["type"] for b in answer.blocks] == ["thinking", "text", "tool_use"]
    assert answer.blocks[0] == {"type": "thinking", "thinking": "hmm", "signature": "sig"}
    assert answer.blocks[1] == {"type": "text", "text": "Let me look that up for you."}
    assert answer.blocks[2]["input"] == {"topic": "caf\u00e9", "n": [1, 2]}
    assert answer.blocks[2]["id"].startswith("toolu_") and answer.blocks[2]["name"] == "lookup"
    assert answer.stop_reason == "tool_use" and answer.model == "claude-sonnet-4-6"
    assert answer.usage.cache_read_input_tokens == 5 and answer.usage.output_tokens > 0
    assert listener.seen[:3] == [("start", 0, "thinking"), ("start", 1, "text"), ("delta", 1, "Let me ")]
    assert "".join(t for kind, i, t in listener.seen if kind == "delta") == blocks[1]["text"]
    assert listener.seen[-1] == ("start", 2, "tool_use")
