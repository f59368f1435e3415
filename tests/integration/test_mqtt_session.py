"""MqttSession against the real broker: a cancelled receive leaves nothing behind."""

from __future__ import annotations

import asyncio

import pytest

from aggregator.config import MqttSettings
from aggregator.mqtt_session import MqttSession
from tests.conftest import SERVICE_ACCOUNT, Broker
from tests.integration.aggregator_helpers import Device

pytestmark = pytest.mark.integration


def test_cancelled_next_message_does_not_swallow_the_next_update(broker: Broker, task: str) -> None:
    """A next_message() cancelled while waiting (as when an ingest of the same connection
    fails) must not leave a receiver behind that takes the next delivery from the queue:
    nobody would ack or answer it, and asyncio would log its disconnect error as never
    retrieved."""
    settings = MqttSettings(
        host=broker.host,
        port=broker.port,
        username=SERVICE_ACCOUNT,
        password=broker.passwords[SERVICE_ACCOUNT],
        client_id=f"agg-{task}",
    )

    async def scenario() -> bytes | None:
        stop = asyncio.Event()
        async with MqttSession(settings, share_group="test-group") as session:
            await session.subscribe(session.update_filter(task))
            waiting = asyncio.create_task(session.next_message(stop))
            await asyncio.sleep(0.2)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            device = Device(broker, "dev-a", task)
            try:
                device.publish(b"after the cancel")
                message = await asyncio.wait_for(session.next_message(stop), 5.0)
            finally:
                device.close()
            assert message is not None
            session.ack(message)
            return message.payload if isinstance(message.payload, bytes) else None

    assert asyncio.run(scenario()) == b"after the cancel"
