"""The queue record as stored in a Redis stream entry, and priority lanes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from oss_serve.protos import inference_pb2, replica_link_pb2
from oss_serve.streams.keys import LANES

RECORD_FIELD = b"record"
INTERACTIVE, BATCH = LANES

_LANE_OF_ENUM: dict[int, str] = {
    inference_pb2.LANE_UNSPECIFIED: INTERACTIVE,
    inference_pb2.LANE_INTERACTIVE: INTERACTIVE,
    inference_pb2.LANE_BATCH: BATCH,
}


def lane_name(lane: int) -> str:
    """The stream lane of a request's `RequestOptions.lane` enum value."""
    try:
        return _LANE_OF_ENUM[lane]
    except KeyError:
        raise ValueError(f"unknown lane {lane}") from None


def encode_record(record: replica_link_pb2.QueueRecord) -> dict[bytes, bytes]:
    return {RECORD_FIELD: record.SerializeToString()}


def decode_record(fields: Mapping[Any, Any] | None) -> replica_link_pb2.QueueRecord | None:
    """The record of a stream entry; None for an entry deleted since it was delivered."""
    if not fields:
        return None
    raw = fields.get(RECORD_FIELD)
    if raw is None:
        raw = fields.get(RECORD_FIELD.decode())
    if raw is None:
        return None
    record = replica_link_pb2.QueueRecord()
    record.ParseFromString(raw)
    return record
