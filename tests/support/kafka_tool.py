"""Independent Kafka client for the tests (PyPI confluent-kafka, not Weir's rdkafka).

    kafka_tool.py BOOTSTRAP create TOPIC PARTITIONS
    kafka_tool.py BOOTSTRAP produce TOPIC COUNT [--start N] [--poison-every K] [--pad BYTES]
        message n: key "k{n % 100}", value {"n": n} (with --pad, {"n": n, "pad": "xxx…"} of that
        many x), header h = "v{n}", timestamp 1767225600000 + n;
        every K-th message (n % K == K - 1) has a value that is not JSON: "not json {n}"
    kafka_tool.py BOOTSTRAP produce-avro TOPIC COUNT SCHEMA.avsc [--schema-id N] [--poison-every K]
        message n: the Binance-style trade trade(n) below, Avro-encoded with SCHEMA (extra fields
        of the schema are filled by field_value), key = its symbol, timestamp = its trade time;
        with --schema-id, in the Confluent wire format (zero byte, 4-byte id, datum); every K-th
        message is not Avro: b"\\x07 not avro {n}"
    kafka_tool.py BOOTSTRAP consume TOPIC EXPECTED
        prints every message as a JSON line (topic, partition, offset, timestamp, key, value, headers),
        stopping once EXPECTED messages were read or 30 s passed without one
"""
import io
import json
import struct
import sys
import time

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic


def create(bootstrap, topic, partitions):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, num_partitions=int(partitions), replication_factor=1)]).values():
        future.result()


def produce(bootstrap, topic, count, start=0, poison_every=0, pad=0):
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "enable.idempotence": True})
    for n in range(start, start + count):
        body = {"n": n, "pad": "x" * pad} if pad else {"n": n}
        value = f"not json {n}" if poison_every and n % poison_every == poison_every - 1 else json.dumps(body)
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


SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]


def trade(n):
    """The n-th trade, in the field order of pipelines/schemas/trade.avsc."""
    time_ms = 1767225600000 + n * 1000
    return {"e": "trade", "E": time_ms + 1, "s": SYMBOLS[n % 3], "t": n,
            "p": f"{100 + n % 1000}.50000000", "q": "0.01000000", "T": time_ms,
            "m": n % 2 == 0, "M": True}


def produce_avro(bootstrap, topic, count, schema_file, schema_id=None, poison_every=0):
    import fastavro
    with open(schema_file) as f:
        schema = fastavro.parse_schema(json.load(f))
    extra = [f["name"] for f in schema["fields"] if f["name"] not in trade(0)]
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "enable.idempotence": True})
    for n in range(count):
        record = trade(n)
        if poison_every and n % poison_every == poison_every - 1:
            value = f"\x07 not avro {n}".encode()
        else:
            for name in extra:
                record[name] = f"extra-{n}"
            buf = io.BytesIO()
            if schema_id is not None:
                buf.write(b"\x00" + struct.pack(">I", schema_id))
            fastavro.schemaless_writer(buf, schema, record)
            value = buf.getvalue()
        while True:
            try:
                producer.produce(topic, key=record["s"], value=value, timestamp=record["T"])
                break
            except BufferError:
                producer.poll(0.1)
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
        args = {"start": 0, "poison_every": 0, "pad": 0}
        count = int(rest[0])
        for flag, value in zip(rest[1::2], rest[2::2]):
            args[flag.lstrip("-").replace("-", "_")] = int(value)
        produce(bootstrap, topic, count, **args)
    elif command == "produce-avro":
        args = {"schema_id": None, "poison_every": 0}
        for flag, value in zip(rest[2::2], rest[3::2]):
            args[flag.lstrip("-").replace("-", "_")] = int(value)
        produce_avro(bootstrap, topic, int(rest[0]), rest[1], **args)
    elif command == "consume":
        consume(bootstrap, topic, int(rest[0]))
    else:
        sys.exit(f"unknown command {command}")
