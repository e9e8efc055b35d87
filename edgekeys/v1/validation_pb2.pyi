import datetime

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

class Verdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERDICT_UNSPECIFIED: _ClassVar[Verdict]
    VERDICT_ALLOWED: _ClassVar[Verdict]
    VERDICT_MALFORMED: _ClassVar[Verdict]
    VERDICT_NOT_FOUND: _ClassVar[Verdict]
    VERDICT_EXPIRED: _ClassVar[Verdict]
    VERDICT_DEPLOYMENT_NOT_ALLOWED: _ClassVar[Verdict]
    VERDICT_RATE_LIMITED: _ClassVar[Verdict]
VERDICT_UNSPECIFIED: Verdict
VERDICT_ALLOWED: Verdict
VERDICT_MALFORMED: Verdict
VERDICT_NOT_FOUND: Verdict
VERDICT_EXPIRED: Verdict
VERDICT_DEPLOYMENT_NOT_ALLOWED: Verdict
VERDICT_RATE_LIMITED: Verdict

class ValidateApiKeyRequest(_message.Message):
    __slots__ = ("secret", "deployment", "client_address")
    SECRET_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    secret: str
    deployment: str
    client_address: str
    def __init__(self, secret: _Optional[str] = ..., deployment: _Optional[str] = ..., client_address: _Optional[str] = ...) -> None: ...

class ValidateApiKeyResponse(_message.Message):
    __slots__ = ("verdict", "api_key", "expire_time")
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    verdict: Verdict
    api_key: str
    expire_time: _timestamp_pb2.Timestamp
    def __init__(self, verdict: _Optional[_Union[Verdict, str]] = ..., api_key: _Optional[str] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ValidateApiKeysRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[ValidateApiKeyRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[ValidateApiKeyRequest, _Mapping]]] = ...) -> None: ...

class ValidateApiKeysResponse(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[ValidateApiKeyResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[ValidateApiKeyResponse, _Mapping]]] = ...) -> None: ...
