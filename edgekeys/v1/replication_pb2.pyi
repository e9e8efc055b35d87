import datetime

from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.api import resource_pb2 as _resource_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StreamIndexRequest(_message.Message):
    __slots__ = ("after_position",)
    AFTER_POSITION_FIELD_NUMBER: _ClassVar[int]
    after_position: int
    def __init__(self, after_position: _Optional[int] = ...) -> None: ...

class StreamIndexResponse(_message.Message):
    __slots__ = ("reset", "changes", "position", "snapshot_complete")
    RESET_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_COMPLETE_FIELD_NUMBER: _ClassVar[int]
    reset: bool
    changes: _containers.RepeatedCompositeFieldContainer[IndexChange]
    position: int
    snapshot_complete: bool
    def __init__(self, reset: _Optional[bool] = ..., changes: _Optional[_Iterable[_Union[IndexChange, _Mapping]]] = ..., position: _Optional[int] = ..., snapshot_complete: _Optional[bool] = ...) -> None: ...

class IndexChange(_message.Message):
    __slots__ = ("position", "api_key", "secret_sha256", "deployments", "expire_time", "state", "previous_secret_sha256", "previous_secret_expire_time")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[IndexChange.State]
        STATE_ACTIVE: _ClassVar[IndexChange.State]
        STATE_DELETED: _ClassVar[IndexChange.State]
    STATE_UNSPECIFIED: IndexChange.State
    STATE_ACTIVE: IndexChange.State
    STATE_DELETED: IndexChange.State
    POSITION_FIELD_NUMBER: _ClassVar[int]
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    SECRET_SHA256_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENTS_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_SECRET_SHA256_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_SECRET_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    position: int
    api_key: str
    secret_sha256: bytes
    deployments: _containers.RepeatedScalarFieldContainer[str]
    expire_time: _timestamp_pb2.Timestamp
    state: IndexChange.State
    previous_secret_sha256: bytes
    previous_secret_expire_time: _timestamp_pb2.Timestamp
    def __init__(self, position: _Optional[int] = ..., api_key: _Optional[str] = ..., secret_sha256: _Optional[bytes] = ..., deployments: _Optional[_Iterable[str]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state: _Optional[_Union[IndexChange.State, str]] = ..., previous_secret_sha256: _Optional[bytes] = ..., previous_secret_expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetReplicaStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetReplicaStatusResponse(_message.Message):
    __slots__ = ("role", "serving", "position", "head_position", "lag", "last_sync_time", "upstream")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    HEAD_POSITION_FIELD_NUMBER: _ClassVar[int]
    LAG_FIELD_NUMBER: _ClassVar[int]
    LAST_SYNC_TIME_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_FIELD_NUMBER: _ClassVar[int]
    role: str
    serving: bool
    position: int
    head_position: int
    lag: int
    last_sync_time: _timestamp_pb2.Timestamp
    upstream: str
    def __init__(self, role: _Optional[str] = ..., serving: _Optional[bool] = ..., position: _Optional[int] = ..., head_position: _Optional[int] = ..., lag: _Optional[int] = ..., last_sync_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., upstream: _Optional[str] = ...) -> None: ...
