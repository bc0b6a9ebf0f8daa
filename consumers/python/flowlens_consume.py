#!/usr/bin/env python3
"""flowlens_consume.py - read a flowlens topic from Python: confluent-kafka + fastavro.

Every message value is one Avro single-object message: C3 01, the 8-byte CRC-64-AVRO
fingerprint of the writer schema, the binary datum. This script

  1. loads every schema version from the schemas directory (the current `avro/*.avsc` and the
     older ones in `avro/history/*.avsc`) and indexes them by fingerprint,
  2. reads every partition of the topic from the beginning to its end without a consumer group
     (partitions assigned, nothing committed; a service would subscribe with a group and commit
     after its own work),
  3. looks each message's writer schema up by its fingerprint, decodes the datum with it and
     resolves it to the current version of the record (fields added since take their defaults),
  4. prints one JSON line per record: {"partition", "offset", "writer": {"record", "file",
     "fingerprint"}, "record": {...every field...}} with addresses (IPv6Address) as IP text,
     IPv4-mapped ones as dotted quads, other fixed/bytes values as hex, enums as symbols.

A message that is not single-object encoded, has an unknown fingerprint, or does not decode is
reported on stderr with its partition and offset, and the exit code is 3 at the end (nothing is
skipped silently).

    flowlens_consume.py --brokers 127.0.0.1:9092 --topic flowlens.flows.enriched
"""

import argparse
import io
import ipaddress
import json
import os
import sys

import fastavro
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from fastavro.schema import fingerprint, to_parsing_canonical_form

MAGIC = b"\xc3\x01"
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SCHEMAS = os.path.join(HERE, "..", "..", "schemas", "avro")


def load_schemas(directory):
    """{fingerprint hex (header byte order): (full name, file, parsed writer schema)} and
    {full name: parsed current schema} from DIR/*.avsc (current) and DIR/history/*.avsc."""
    writers, current = {}, {}
    for sub, is_current in (("", True), ("history", False)):
        folder = os.path.join(directory, sub)
        for name in sorted(os.listdir(folder)):
            if not name.endswith(".avsc"):
                continue
            path = os.path.join(folder, name)
            with open(path) as f:
                schema = fastavro.parse_schema(json.load(f))
            fp = fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO")
            full_name = schema["name"]
            writers[fp] = (full_name, os.path.relpath(path, os.path.dirname(directory)), schema)
            if is_current:
                current[full_name] = schema
    return writers, current


def named_types(schema, named):
    """Registers every named type defined in `schema` (records, enums, fixed) by full name."""
    if isinstance(schema, list):
        for branch in schema:
            named_types(branch, named)
    elif isinstance(schema, dict):
        if schema["type"] in ("record", "enum", "fixed"):
            named[schema["name"]] = schema
        for field in schema.get("fields", []):
            named_types(field["type"], named)
        for key in ("items", "values"):
            if key in schema:
                named_types(schema[key], named)
    return named


def to_json(schema, value, named):
    """`value` (as fastavro read it with `schema`) as JSON-ready Python values; flowlens unions
    are all ["null", T]."""
    if isinstance(schema, str):
        if schema in named:
            return to_json(named[schema], value, named)
        return value.hex() if isinstance(value, bytes) else value
    if isinstance(schema, list):
        if value is None:
            return None
        (branch,) = [b for b in schema if b != "null"]
        return to_json(branch, value, named)
    kind = schema["type"]
    if kind == "record":
        return {f["name"]: to_json(f["type"], value[f["name"]], named) for f in schema["fields"]}
    if kind == "fixed":
        if schema["name"].rsplit(".", 1)[-1] == "IPv6Address":
            addr = ipaddress.IPv6Address(value)
            return str(addr.ipv4_mapped or addr)
        return value.hex()
    if kind == "enum":
        return value
    if kind == "array":
        return [to_json(schema["items"], v, named) for v in value]
    if kind == "map":
        return {k: to_json(schema["values"], v, named) for k, v in value.items()}
    return to_json(kind, value, named)


def decode(message, writers, current):
    """(writer info, record as JSON) for one single-object message; ValueError names the problem."""
    if message[:2] != MAGIC:
        raise ValueError(f"not an Avro single-object message (starts with {message[:2].hex()})")
    if len(message) < 10:
        raise ValueError(f"truncated header ({len(message)} bytes)")
    fp = message[2:10].hex()
    if fp not in writers:
        raise ValueError(f"unknown writer schema fingerprint {fp}: fetch the newer .avsc")
    full_name, path, writer = writers[fp]
    reader = current[full_name]
    body = io.BytesIO(message[10:])
    record = fastavro.schemaless_reader(body, writer, reader)
    left = len(message) - 10 - body.tell()
    if left:
        raise ValueError(f"{left} trailing bytes after the datum")
    info = {"record": full_name, "file": path, "fingerprint": fp}
    return info, to_json(reader, record, named_types(reader, {}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--brokers", default="127.0.0.1:9092")
    ap.add_argument("--topic", default="flowlens.flows.enriched")
    ap.add_argument("--schemas", default=DEFAULT_SCHEMAS, help="the schemas/avro directory")
    args = ap.parse_args()

    writers, current = load_schemas(args.schemas)
    consumer = Consumer({
        "bootstrap.servers": args.brokers,
        # assign() needs a group id; it is never joined and nothing is committed.
        "group.id": f"flowlens-consume-{os.getpid()}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": True,
    })
    metadata = consumer.list_topics(args.topic, timeout=10)
    topic = metadata.topics.get(args.topic)
    if topic is None or topic.error is not None or not topic.partitions:
        sys.exit(f"flowlens_consume: topic {args.topic} not found at {args.brokers}: {topic and topic.error}")
    partitions = sorted(topic.partitions)
    consumer.assign([TopicPartition(args.topic, p, 0) for p in partitions])
    open_partitions = set(partitions)
    bad = 0
    try:
        while open_partitions:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    open_partitions.discard(msg.partition())
                    continue
                raise KafkaException(msg.error())
            try:
                info, record = decode(msg.value() or b"", writers, current)
            except Exception as exc:  # noqa: BLE001  (reported with its position, counted)
                bad += 1
                print(f"flowlens_consume: {args.topic}/{msg.partition()}@{msg.offset()}: {exc}", file=sys.stderr)
                continue
            print(json.dumps({"partition": msg.partition(), "offset": msg.offset(),
                              "writer": info, "record": record}), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    sys.exit(3 if bad else 0)


if __name__ == "__main__":
    main()
