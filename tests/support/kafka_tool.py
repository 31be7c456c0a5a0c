"""Independent Kafka client for the tests (PyPI confluent-kafka, not Weir's rdkafka).

    kafka_tool.py BOOTSTRAP create TOPIC PARTITIONS
    kafka_tool.py BOOTSTRAP produce TOPIC COUNT [--start N] [--poison-every K]
        message n: key "k{n % 100}", value {"n": n}, header h = "v{n}", timestamp 1767225600000 + n;
        every K-th message (n % K == K - 1) has a value that is not JSON: "not json {n}"
    kafka_tool.py BOOTSTRAP consume TOPIC EXPECTED
        prints every message as a JSON line (topic, partition, offset, timestamp, key, value, headers),
        stopping once EXPECTED messages were read or 30 s passed without one
"""
import json
import sys
import time

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic


def create(bootstrap, topic, partitions):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, num_partitions=int(partitions), replication_factor=1)]).values():
        future.result()


def produce(bootstrap, topic, count, start=0, poison_every=0):
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "enable.idempotence": True})
    for n in range(start, start + count):
        value = f"not json {n}" if poison_every and n % poison_every == poison_every - 1 else json.dumps({"n": n})
        while True:
            try:
                producer.produce(topic, key=f"k{n % 100}", value=value, headers=[("h", f"v{n}".encode())],
                                 timestamp=1767225600000 + n)
                break
            except BufferError:
                producer.poll(0.1)
        if n % 5000 == 0:
            producer.poll(0)
    if producer.flush(60) != 0:
        sys.exit("messages left undelivered")


def consume(bootstrap, topic, expected):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{time.time_ns()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "session.timeout.ms": 2000, "heartbeat.interval.ms": 500})
    consumer.subscribe([topic])
    seen, last = 0, time.time()
    while seen < expected and time.time() - last < 30:
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            continue
        last = time.time()
        seen += 1
        print(json.dumps({
            "topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset(),
            "timestamp": msg.timestamp()[1],
            "key": msg.key().decode() if msg.key() is not None else None,
            "value": msg.value().decode(errors="replace"),
            "headers": {k: v.decode(errors="replace") for k, v in (msg.headers() or [])},
        }))
    consumer.close()


if __name__ == "__main__":
    bootstrap, command, topic, *rest = sys.argv[1:]
    if command == "create":
        create(bootstrap, topic, rest[0])
    elif command == "produce":
        args = {"start": 0, "poison_every": 0}
        count = int(rest[0])
        for flag, value in zip(rest[1::2], rest[2::2]):
            args[flag.lstrip("-").replace("-", "_")] = int(value)
        produce(bootstrap, topic, count, **args)
    elif command == "consume":
        consume(bootstrap, topic, int(rest[0]))
    else:
        sys.exit(f"unknown command {command}")
