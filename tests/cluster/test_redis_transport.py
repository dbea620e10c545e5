"""The cluster transport against a real redis-server: one synchronous client per pool, and every
kombu operation that borrows it still works (publish to a queue and a fanout, get, ack)."""

from __future__ import annotations

import base64
import json

import redis
from kombu import Connection, Exchange, Queue

from celery_selfheal.cluster.redis_transport import Transport


def test_one_client_per_pool_and_a_new_one_after_a_new_pool(redis_url: str) -> None:
    with Connection(redis_url, transport=Transport) as conn:
        channel = conn.default_channel
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
            assert first.connection_pool is channel.pool
        given = object()
        with channel.conn_or_acquire(given) as passed:  # a caller's own client is used as it is
            assert passed is given
        channel._disconnect_pools()  # what a reconnect does
        with channel.conn_or_acquire() as third:
            assert third is not first
            assert third.connection_pool is channel.pool


def test_queue_and_fanout_messages_go_through_the_shared_client(redis_url: str) -> None:
    with Connection(redis_url, transport=Transport) as conn:
        channel = conn.default_channel
        queue = Queue("t-transport", Exchange("t-transport"), routing_key="t-transport", channel=channel)
        queue.declare()
        fan = Exchange("t-fan", type="fanout", channel=channel)
        fan.declare()
        # kombu's Redis fanout is a PUBLISH: listen as its consumers do, with a subscription
        pubsub = redis.Redis.from_url(redis_url).pubsub(ignore_subscribe_messages=True)
        pubsub.psubscribe("*t-fan*")
        assert pubsub.get_message(timeout=5) is None  # the subscription confirmation, skipped
        producer = conn.Producer(channel)
        for n in range(3):
            producer.publish({"n": n}, exchange=queue.exchange, routing_key="t-transport", serializer="json")
        producer.publish({"fan": True}, exchange=fan, serializer="json")
        got = []
        for _ in range(3):
            message = queue.get(no_ack=False)
            assert message is not None
            got.append(message.decode()["n"])
            message.ack()
        assert got == [0, 1, 2]
        assert queue.get() is None  # acknowledged: nothing comes back
        fanned = pubsub.get_message(timeout=10)
        pubsub.close()
        assert fanned is not None
        envelope = json.loads(fanned["data"])
        assert envelope["properties"]["body_encoding"] == "base64"
        assert json.loads(base64.b64decode(envelope["body"])) == {"fan": True}
