"""The processor's producer gives up on an unanswered request (BoundedRequestProducer): against a
"broker" that accepts connections and reads requests but never answers, starting the producer
fails after the bounded request timeout instead of waiting Faust's 20 minutes, while a record's
time to live stays Faust's."""
from __future__ import annotations

import asyncio
import time

import faust
import pytest
from aiokafka.errors import KafkaConnectionError

from streams.faust_overrides import BoundedRequestProducer


class FastGivingUpProducer(BoundedRequestProducer):
    request_timeout_ms = 300


async def silent_broker() -> tuple[asyncio.Server, int]:
    """Accepts, reads everything, answers nothing: a connection whose broker never replies."""
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            pass
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def producer_for(port: int, producer_class: type) -> object:
    app = faust.App("bounded-request-test", broker=f"kafka://127.0.0.1:{port}")
    app.transport.Producer = producer_class
    return app.producer._new_producer()


async def test_an_unanswered_request_fails_after_the_bounded_timeout_not_faust_s_20_minutes() -> None:
    server, port = await silent_broker()
    try:
        producer = producer_for(port, FastGivingUpProducer)
        assert producer._message_accumulator._batch_ttl == 1200  # records still outlive an outage
        started = time.monotonic()
        with pytest.raises(KafkaConnectionError):
            await asyncio.wait_for(producer.start(), 10)  # bootstrap's metadata request is never answered
        assert time.monotonic() - started < 5
        await producer.stop()
    finally:
        server.close()
        await server.wait_closed()


async def test_faust_s_own_producer_still_waits_there() -> None:
    """The control: without the override the same start is still waiting after 3 s."""
    from faust.transport.drivers.aiokafka import Producer

    server, port = await silent_broker()
    try:
        producer = producer_for(port, Producer)
        start = asyncio.ensure_future(producer.start())
        done, _ = await asyncio.wait({start}, timeout=3)
        assert not done
        start.cancel()
        await asyncio.gather(start, return_exceptions=True)
        await producer.stop()
    finally:
        server.close()
        await server.wait_closed()
