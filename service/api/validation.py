"""ValidationService: the gateways' hot path."""

import functools
from datetime import datetime

import grpc

from edgekeys.v1 import validation_pb2 as vpb
from edgekeys.v1 import validation_pb2_grpc
from service.api import fields
from service.api.errors import InvalidArgument
from service.api.validator import Validator
from service.security import callers
from service.security.callers import Caller

MAX_BATCH = 1000


class ValidationService(validation_pb2_grpc.ValidationServiceServicer):
    """The gateways' hot path: memory only, no exception raised for a denial."""

    def __init__(self, validator: Validator) -> None:
        self.validator = validator

    async def ValidateApiKey(
        self, request: vpb.ValidateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> vpb.ValidateApiKeyResponse:
        fields.deployment(request.deployment)
        scope = callers.scope(request.deployment)
        if stale := self.validator.stale():
            raise stale.refusal()
        return self._validate(request, self.validator.clock(), scope)

    async def ValidateApiKeys(
        self, request: vpb.ValidateApiKeysRequest, context: grpc.aio.ServicerContext
    ) -> vpb.ValidateApiKeysResponse:
        if len(request.requests) > MAX_BATCH:
            raise InvalidArgument("requests", f"at most {MAX_BATCH} items per call")
        for i, item in enumerate(request.requests):
            fields.deployment(item.deployment, f"requests[{i}].deployment")
        scopes = [callers.scope(item.deployment) for item in request.requests]
        if stale := self.validator.stale():
            raise stale.refusal()
        now = self.validator.clock()
        return vpb.ValidateApiKeysResponse(
            responses=[
                self._validate(item, now, scope)
                for item, scope in zip(request.requests, scopes, strict=True)
            ]
        )

    def _validate(
        self, request: vpb.ValidateApiKeyRequest, now: datetime, scope: Caller | None
    ) -> vpb.ValidateApiKeyResponse:
        verdict, entry = self.validator.verdict(
            request.secret, request.deployment, request.client_address, scope, now
        )
        if entry is None:
            return _verdict(verdict, "", None)
        return _verdict(verdict, entry.name, entry.expire_time)


@functools.lru_cache(maxsize=100_000)
def _verdict(
    verdict: vpb.Verdict, key_name: str, expire_time: datetime | None
) -> vpb.ValidateApiKeyResponse:
    """Built once per distinct answer: responses are only ever serialized, never changed."""
    response = vpb.ValidateApiKeyResponse(verdict=verdict, api_key=key_name)
    if expire_time is not None:
        response.expire_time.FromDatetime(expire_time)
    return response
