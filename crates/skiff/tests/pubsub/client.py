"""Google's Python client (google-cloud-pubsub) against a Pub/Sub endpoint named by
PUBSUB_EMULATOR_HOST: Skiff's listener or Google's own emulator, so both behave alike.
Usage: client.py PROJECT. Exits non-zero (with the failed check) on any difference."""
import sys
import time

from google.api_core import exceptions
from google.cloud import pubsub_v1

project = sys.argv[1]
publisher = pubsub_v1.PublisherClient(
    publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True)
)
subscriber = pubsub_v1.SubscriberClient()
topic = publisher.topic_path(project, "orders")
plain = subscriber.subscription_path(project, "plain")
ordered = subscriber.subscription_path(project, "ordered")
streamed = subscriber.subscription_path(project, "streamed")


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def pull_all(sub, want, limit=60):
    """Synchronous pulls until `want` messages came or the time is up."""
    got = []
    deadline = time.time() + limit
    while len(got) < want and time.time() < deadline:
        resp = subscriber.pull(request={"subscription": sub, "max_messages": 100}, timeout=30)
        got.extend(resp.received_messages)
    return got


publisher.create_topic(request={"name": topic})
try:
    publisher.create_topic(request={"name": topic})
    check(False, "a second create_topic must fail")
except exceptions.AlreadyExists:
    pass
try:
    publisher.create_topic(request={"name": publisher.topic_path(project, "goog-x")})
    check(False, "a topic named goog-x must be refused")
except exceptions.InvalidArgument:
    pass
subscriber.create_subscription(request={"name": plain, "topic": topic, "ack_deadline_seconds": 10})
subscriber.create_subscription(
    request={"name": ordered, "topic": topic, "enable_message_ordering": True}
)
subscriber.create_subscription(request={"name": streamed, "topic": topic})
check(subscriber.get_subscription(request={"subscription": plain}).ack_deadline_seconds == 10, "ack deadline")
try:
    subscriber.get_subscription(request={"subscription": subscriber.subscription_path(project, "nope")})
    check(False, "an unknown subscription must be NotFound")
except exceptions.NotFound:
    pass

# Publish: attributes and ordering keys.
futures = []
for i in range(6):
    key = "a" if i % 2 == 0 else "b"
    futures.append(publisher.publish(topic, f"m{i}".encode(), ordering_key=key, n=str(i)))
ids = [f.result(timeout=60) for f in futures]
check(len(set(ids)) == 6 and all(i.isdigit() for i in ids), f"message ids {ids}")

# Synchronous pull: every message, attributes kept; ack them all.
got = pull_all(plain, 6)
check(sorted(m.message.data for m in got) == [f"m{i}".encode() for i in range(6)], "plain pull")
check(all(m.message.attributes["n"] == m.message.data.decode()[1:] for m in got), "attributes")
check(all(m.message.publish_time.timestamp() > 0 for m in got), "publish time")
subscriber.acknowledge(request={"subscription": plain, "ack_ids": [m.ack_id for m in got]})

# Ordering: per key in publish order, acking as we go.
seen = {"a": [], "b": []}
deadline = time.time() + 60
while sum(len(v) for v in seen.values()) < 6 and time.time() < deadline:
    resp = subscriber.pull(request={"subscription": ordered, "max_messages": 10}, timeout=30)
    for m in resp.received_messages:
        seen[m.message.ordering_key].append(int(m.message.attributes["n"]))
    if resp.received_messages:
        subscriber.acknowledge(
            request={"subscription": ordered, "ack_ids": [m.ack_id for m in resp.received_messages]}
        )
check(seen == {"a": [0, 2, 4], "b": [1, 3, 5]}, f"ordered delivery {seen}")

# Nack (deadline 0) gives the message again.
publisher.publish(topic, b"again", ordering_key="c").result(timeout=60)
first = pull_all(plain, 1)
check(len(first) == 1 and first[0].message.data == b"again", "pull before nack")
subscriber.modify_ack_deadline(
    request={"subscription": plain, "ack_ids": [first[0].ack_id], "ack_deadline_seconds": 0}
)
second = pull_all(plain, 1)
check(len(second) == 1 and second[0].message.message_id == first[0].message.message_id, "redelivery after nack")
subscriber.acknowledge(request={"subscription": plain, "ack_ids": [second[0].ack_id]})
after = subscriber.pull(request={"subscription": plain, "max_messages": 10, "return_immediately": True}, timeout=30)
check(len(after.received_messages) == 0, "nothing left after ack")

# Streaming pull with flow control: every message of the stream subscription, acked.
received = []


def callback(message):
    received.append(message.data)
    message.ack()


flow = pubsub_v1.types.FlowControl(max_messages=2)
future = subscriber.subscribe(streamed, callback=callback, flow_control=flow)
deadline = time.time() + 60
while len(received) < 7 and time.time() < deadline:
    time.sleep(0.2)
future.cancel()
try:
    future.result(timeout=30)
except Exception:
    pass
check(sorted(received) == sorted([f"m{i}".encode() for i in range(6)] + [b"again"]), f"streaming pull {received}")

# Acked through the stream: nothing comes back.
time.sleep(1)
left = subscriber.pull(request={"subscription": streamed, "max_messages": 10, "return_immediately": True}, timeout=30)
check(len(left.received_messages) == 0, f"streamed messages acked, left {len(left.received_messages)}")

names = [t.name for t in publisher.list_topics(request={"project": f"projects/{project}"})]
check(topic in names, f"list topics {names}")
subs = list(publisher.list_topic_subscriptions(request={"topic": topic}))
check(sorted(subs) == sorted([plain, ordered, streamed]), f"topic subscriptions {subs}")
subscriber.delete_subscription(request={"subscription": streamed})
publisher.delete_topic(request={"topic": topic})
print("ok")
