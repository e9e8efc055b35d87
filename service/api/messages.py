"""Messages built from what the service holds: an ApiKey from the aggregate or a
catalog row, timestamps."""

from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

from edgekeys.v1 import api_keys_pb2 as pb
from projections.catalog import KeyRecord
from service.domain.api_key import ApiKey
from service.write.keystore import etag_of

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def api_key_message(key: ApiKey | KeyRecord, last_use: datetime | None = None) -> pb.ApiKey:
    """The ApiKey message of a key: from the aggregate, or a catalog row."""
    if isinstance(key, ApiKey):
        key = KeyRecord.of(key)
    message = pb.ApiKey(
        name=key.name,
        display_name=key.display_name,
        description=key.description,
        deployments=key.deployments,
        state=pb.ApiKey.STATE_DELETED if key.delete_time else pb.ApiKey.STATE_ACTIVE,
        create_time=timestamp(key.created_on),
        update_time=timestamp(key.modified_on),
        secret_hint=key.secret_hint,
        etag=etag_of(key.version),
    )
    if key.expire_time is not None:
        message.expire_time.CopyFrom(timestamp(key.expire_time))
    if key.delete_time is not None:
        message.delete_time.CopyFrom(timestamp(key.delete_time))
    if key.purge_time is not None:
        message.purge_time.CopyFrom(timestamp(key.purge_time))
    if key.previous_secret_until is not None:
        message.previous_secret_expire_time.CopyFrom(timestamp(key.previous_secret_until))
    if last_use is not None:
        message.last_use_time.CopyFrom(timestamp(last_use))
    return message


def micros(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


def from_micros(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


def timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp
