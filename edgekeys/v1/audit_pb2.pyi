import datetime

from edgekeys.v1 import api_keys_pb2 as _api_keys_pb2
from google.api import annotations_pb2 as _annotations_pb2
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

class AuditEvent(_message.Message):
    __slots__ = ("position", "api_key", "version", "event_type", "occur_time", "actor", "request_id", "hash", "personal_data_erased", "key_created", "details_changed", "deployment_attached", "deployment_detached", "expiry_changed", "key_deleted", "personal_data_purged", "secret_rotated")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    OCCUR_TIME_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    PERSONAL_DATA_ERASED_FIELD_NUMBER: _ClassVar[int]
    KEY_CREATED_FIELD_NUMBER: _ClassVar[int]
    DETAILS_CHANGED_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_ATTACHED_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_DETACHED_FIELD_NUMBER: _ClassVar[int]
    EXPIRY_CHANGED_FIELD_NUMBER: _ClassVar[int]
    KEY_DELETED_FIELD_NUMBER: _ClassVar[int]
    PERSONAL_DATA_PURGED_FIELD_NUMBER: _ClassVar[int]
    SECRET_ROTATED_FIELD_NUMBER: _ClassVar[int]
    position: int
    api_key: str
    version: int
    event_type: str
    occur_time: _timestamp_pb2.Timestamp
    actor: str
    request_id: str
    hash: str
    personal_data_erased: bool
    key_created: KeyCreatedValues
    details_changed: DetailsChangedValues
    deployment_attached: DeploymentValues
    deployment_detached: DeploymentValues
    expiry_changed: ExpiryChangedValues
    key_deleted: NoValues
    personal_data_purged: NoValues
    secret_rotated: SecretRotatedValues
    def __init__(self, position: _Optional[int] = ..., api_key: _Optional[str] = ..., version: _Optional[int] = ..., event_type: _Optional[str] = ..., occur_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., actor: _Optional[str] = ..., request_id: _Optional[str] = ..., hash: _Optional[str] = ..., personal_data_erased: _Optional[bool] = ..., key_created: _Optional[_Union[KeyCreatedValues, _Mapping]] = ..., details_changed: _Optional[_Union[DetailsChangedValues, _Mapping]] = ..., deployment_attached: _Optional[_Union[DeploymentValues, _Mapping]] = ..., deployment_detached: _Optional[_Union[DeploymentValues, _Mapping]] = ..., expiry_changed: _Optional[_Union[ExpiryChangedValues, _Mapping]] = ..., key_deleted: _Optional[_Union[NoValues, _Mapping]] = ..., personal_data_purged: _Optional[_Union[NoValues, _Mapping]] = ..., secret_rotated: _Optional[_Union[SecretRotatedValues, _Mapping]] = ...) -> None: ...

class KeyCreatedValues(_message.Message):
    __slots__ = ("display_name", "description", "deployments", "expire_time", "secret_hint")
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENTS_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    SECRET_HINT_FIELD_NUMBER: _ClassVar[int]
    display_name: str
    description: str
    deployments: _containers.RepeatedScalarFieldContainer[str]
    expire_time: _timestamp_pb2.Timestamp
    secret_hint: str
    def __init__(self, display_name: _Optional[str] = ..., description: _Optional[str] = ..., deployments: _Optional[_Iterable[str]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., secret_hint: _Optional[str] = ...) -> None: ...

class DetailsChangedValues(_message.Message):
    __slots__ = ("display_name", "description")
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    display_name: str
    description: str
    def __init__(self, display_name: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class DeploymentValues(_message.Message):
    __slots__ = ("deployment",)
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    def __init__(self, deployment: _Optional[str] = ...) -> None: ...

class ExpiryChangedValues(_message.Message):
    __slots__ = ("expire_time",)
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    expire_time: _timestamp_pb2.Timestamp
    def __init__(self, expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SecretRotatedValues(_message.Message):
    __slots__ = ("secret_hint", "previous_secret_expire_time")
    SECRET_HINT_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_SECRET_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    secret_hint: str
    previous_secret_expire_time: _timestamp_pb2.Timestamp
    def __init__(self, secret_hint: _Optional[str] = ..., previous_secret_expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class NoValues(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("position", "digest")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    position: int
    digest: str
    def __init__(self, position: _Optional[int] = ..., digest: _Optional[str] = ...) -> None: ...

class ListApiKeyEventsRequest(_message.Message):
    __slots__ = ("name", "page_size", "page_token")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    name: str
    page_size: int
    page_token: str
    def __init__(self, name: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListApiKeyEventsResponse(_message.Message):
    __slots__ = ("events", "next_page_token")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[AuditEvent]
    next_page_token: str
    def __init__(self, events: _Optional[_Iterable[_Union[AuditEvent, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetApiKeyRevisionRequest(_message.Message):
    __slots__ = ("name", "version", "as_of_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    AS_OF_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    as_of_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., as_of_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetApiKeyRevisionResponse(_message.Message):
    __slots__ = ("api_key",)
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    api_key: _api_keys_pb2.ApiKey
    def __init__(self, api_key: _Optional[_Union[_api_keys_pb2.ApiKey, _Mapping]] = ...) -> None: ...

class ListEventsRequest(_message.Message):
    __slots__ = ("parent", "after_position", "page_size", "event_types", "start_time", "end_time", "page_token")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    AFTER_POSITION_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPES_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parent: str
    after_position: int
    page_size: int
    event_types: _containers.RepeatedScalarFieldContainer[str]
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    page_token: str
    def __init__(self, parent: _Optional[str] = ..., after_position: _Optional[int] = ..., page_size: _Optional[int] = ..., event_types: _Optional[_Iterable[str]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListEventsResponse(_message.Message):
    __slots__ = ("events", "next_page_token")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[AuditEvent]
    next_page_token: str
    def __init__(self, events: _Optional[_Iterable[_Union[AuditEvent, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("parent", "after_position")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    AFTER_POSITION_FIELD_NUMBER: _ClassVar[int]
    parent: str
    after_position: int
    def __init__(self, parent: _Optional[str] = ..., after_position: _Optional[int] = ...) -> None: ...

class WatchEventsResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: AuditEvent
    def __init__(self, event: _Optional[_Union[AuditEvent, _Mapping]] = ...) -> None: ...

class VerifyAuditLogRequest(_message.Message):
    __slots__ = ("parent", "checkpoint", "scope")
    class Scope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        SCOPE_UNSPECIFIED: _ClassVar[VerifyAuditLogRequest.Scope]
        SCOPE_FULL: _ClassVar[VerifyAuditLogRequest.Scope]
        SCOPE_SINCE_STORED_CHECKPOINT: _ClassVar[VerifyAuditLogRequest.Scope]
    SCOPE_UNSPECIFIED: VerifyAuditLogRequest.Scope
    SCOPE_FULL: VerifyAuditLogRequest.Scope
    SCOPE_SINCE_STORED_CHECKPOINT: VerifyAuditLogRequest.Scope
    PARENT_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    parent: str
    checkpoint: Checkpoint
    scope: VerifyAuditLogRequest.Scope
    def __init__(self, parent: _Optional[str] = ..., checkpoint: _Optional[_Union[Checkpoint, _Mapping]] = ..., scope: _Optional[_Union[VerifyAuditLogRequest.Scope, str]] = ...) -> None: ...

class VerifyAuditLogResponse(_message.Message):
    __slots__ = ("ok", "first_bad_position", "events_checked", "checkpoint", "problem", "verified_from")
    OK_FIELD_NUMBER: _ClassVar[int]
    FIRST_BAD_POSITION_FIELD_NUMBER: _ClassVar[int]
    EVENTS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_FROM_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    first_bad_position: int
    events_checked: int
    checkpoint: Checkpoint
    problem: str
    verified_from: int
    def __init__(self, ok: _Optional[bool] = ..., first_bad_position: _Optional[int] = ..., events_checked: _Optional[int] = ..., checkpoint: _Optional[_Union[Checkpoint, _Mapping]] = ..., problem: _Optional[str] = ..., verified_from: _Optional[int] = ...) -> None: ...
