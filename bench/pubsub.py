"""Pub/Sub benchmark: publish throughput and publish-to-push-delivery latency.

Usage: python pubsub.py HOST:PORT N  (PUBSUB_EMULATOR_HOST-style target, message count)

Publishes N small messages (each carries its publish-call time, in ns since the epoch, as its
data) to a new topic with Google's client library (default batching) and receives them on a
push subscription whose endpoint is a sink on loopback, in a process of its own (a minimal
asyncio HTTP/1.1 keep-alive responder answering 204). Prints one JSON line: publish_per_s (N
divided by the seconds from the first publish call until every publish future resolved),
delivered (distinct message ids the sink got), p50_ms and p99_ms (publish call to push
received) and elapsed_s (first publish call to last delivery). The same script runs against
Skiff and against Google's emulator.
"""
import asyncio
import base64
import json
import multiprocessing
import os
import sys
import time


def sink(n, port_out, result_out):
    latencies = []
    seen = set()
    done = None

    async def handle(reader, writer):
        nonlocal done
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                now = time.time_ns()
                msg = json.loads(body)["message"]
                if msg["messageId"] not in seen:
                    seen.add(msg["messageId"])
                    latencies.append((now - int(base64.b64decode(msg["data"]))) / 1e6)
                    if len(seen) >= n:
                        done.set()
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main():
        nonlocal done
        done = asyncio.Event()
        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
        port_out.send(server.sockets[0].getsockname()[1])
        try:
            await asyncio.wait_for(done.wait(), timeout=900)
        except asyncio.TimeoutError:
            pass
        last = time.time()
        lat = sorted(latencies)
        result_out.send((lat, last))
        # Leave at once: the connections still open would each complain when the loop closes.
        os._exit(0)

    asyncio.run(main())


def main():
    host, n = sys.argv[1], int(sys.argv[2])
    os.environ["PUBSUB_EMULATOR_HOST"] = host
    from google.cloud import pubsub_v1

    port_in, port_out = multiprocessing.Pipe(duplex=False)
    result_in, result_out = multiprocessing.Pipe(duplex=False)
    proc = multiprocessing.Process(target=sink, args=(n, port_out, result_out), daemon=True)
    proc.start()
    endpoint = f"http://127.0.0.1:{port_in.recv()}/push"

    project = "bench"
    suffix = str(time.time_ns())
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    topic = publisher.topic_path(project, "t" + suffix)
    sub = subscriber.subscription_path(project, "s" + suffix)
    publisher.create_topic(request={"name": topic})
    subscriber.create_subscription(
        request={"name": sub, "topic": topic, "push_config": {"push_endpoint": endpoint}}
    )

    start = time.time()
    futures = [publisher.publish(topic, str(time.time_ns()).encode()) for _ in range(n)]
    for f in futures:
        f.result(timeout=600)
    published = time.time()
    lat, last = result_in.recv()
    proc.join()

    def pct(p):
        return round(lat[min(len(lat) - 1, int(len(lat) * p))], 1) if lat else None

    print(json.dumps({
        "messages": n,
        "publish_per_s": round(n / (published - start)),
        "delivered": len(lat),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "elapsed_s": round(last - start, 2),
    }))
    subscriber.delete_subscription(request={"subscription": sub})
    publisher.delete_topic(request={"topic": topic})


if __name__ == "__main__":
    main()
