"""The contract's annotations, read back from the generated descriptors as the HTTP
transcoder and client tooling read them: HTTP rules, field behaviour, resources."""

import re

import pytest
from google.api import annotations_pb2, field_behavior_pb2, http_pb2, resource_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor

from edgekeys.v1 import api_keys_pb2, audit_pb2, replication_pb2, validation_pb2

SERVICES = [
    api_keys_pb2.DESCRIPTOR.services_by_name["ApiKeyService"],
    validation_pb2.DESCRIPTOR.services_by_name["ValidationService"],
    audit_pb2.DESCRIPTOR.services_by_name["AuditService"],
]
METHODS = [method for service in SERVICES for method in service.methods]
FILES = [api_keys_pb2, audit_pb2, validation_pb2, replication_pb2]
API_KEY = api_keys_pb2.DESCRIPTOR.message_types_by_name["ApiKey"]

# (request message, field) pairs that must be set, else INVALID_ARGUMENT. Pinned both
# ways: a field may not lose REQUIRED, nor gain it, without this list changing too.
REQUIRED = {
    ("ApiKey", "display_name"),
    ("CreateApiKeyRequest", "parent"),
    ("CreateApiKeyRequest", "api_key"),
    ("GetApiKeyRequest", "name"),
    ("ListApiKeysRequest", "parent"),
    ("UpdateApiKeyRequest", "api_key"),
    ("AttachDeploymentRequest", "name"),
    ("AttachDeploymentRequest", "deployment"),
    ("DetachDeploymentRequest", "name"),
    ("DetachDeploymentRequest", "deployment"),
    ("DeleteApiKeyRequest", "name"),
    ("PurgeApiKeyRequest", "name"),
    ("RotateApiKeyRequest", "name"),
    ("LookupApiKeyRequest", "secret"),
    ("ValidateApiKeyRequest", "deployment"),
    ("ListApiKeyEventsRequest", "name"),
    ("GetApiKeyRevisionRequest", "name"),
    ("ListEventsRequest", "parent"),
    ("WatchEventsRequest", "parent"),
    ("Checkpoint", "position"),
    ("Checkpoint", "digest"),
}
OUTPUT_ONLY = {
    "state",
    "create_time",
    "update_time",
    "delete_time",
    "secret_hint",
    "purge_time",
    "last_use_time",
    "previous_secret_expire_time",
}


def http_rule(method: MethodDescriptor) -> http_pb2.HttpRule:
    options = method.GetOptions()
    assert options.HasExtension(annotations_pb2.http), f"{method.full_name} has no HTTP rule"
    return options.Extensions[annotations_pb2.http]


def path_of(rule: http_pb2.HttpRule) -> str:
    kind = rule.WhichOneof("pattern")
    assert kind in {"get", "post", "patch", "delete"}, kind
    path: str = getattr(rule, kind)
    return path


def path_variables(path: str) -> list[str]:
    return re.findall(r"\{([a-z_.]+)(?:=[^}]*)?\}", path)


def field_at(message: Descriptor, dotted: str) -> FieldDescriptor:
    """The (possibly nested) field a path variable or body names."""
    field = None
    for part in dotted.split("."):
        assert part in message.fields_by_name, f"{message.full_name} has no field {part}"
        field = message.fields_by_name[part]
        if field.message_type is not None:
            message = field.message_type
    assert field is not None
    return field


def leaf_paths(message: Descriptor, prefix: str = "") -> list[str]:
    """Every scalar field path of a message, nested messages followed (not recursively
    into well-known types, whose fields are not query parameters of their own)."""
    paths = []
    for field in message.fields:
        name = prefix + field.name
        nested = field.message_type
        if nested is not None and not nested.full_name.startswith("google.protobuf."):
            paths += leaf_paths(nested, name + ".")
        else:
            paths.append(name)
    return paths


def behaviors(field: FieldDescriptor) -> list[int]:
    return list(field.GetOptions().Extensions[field_behavior_pb2.field_behavior])


def messages() -> list[Descriptor]:
    found: list[Descriptor] = []

    def walk(message: Descriptor) -> None:
        found.append(message)
        for nested in message.nested_types:
            walk(nested)

    for module in FILES:
        for message in module.DESCRIPTOR.message_types_by_name.values():
            walk(message)
    return found


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_every_public_rpc_has_an_http_rule_whose_path_names_request_fields(
    method: MethodDescriptor,
) -> None:
    rule = http_rule(method)
    path = path_of(rule)
    assert path.startswith("/v1/")
    for variable in path_variables(path):
        assert field_at(method.input_type, variable).type == FieldDescriptor.TYPE_STRING
    if rule.body not in ("", "*"):
        assert field_at(method.input_type, rule.body).message_type is not None


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_no_secret_travels_in_a_url(method: MethodDescriptor) -> None:
    """Whatever is neither in the path nor the body is a query parameter, and URLs end
    up in access logs: a method whose request carries a secret takes it in the body."""
    rule = http_rule(method)
    in_url = path_variables(path_of(rule))
    if rule.body != "*":
        in_url += [
            p
            for p in leaf_paths(method.input_type)
            if not (rule.body and (p == rule.body or p.startswith(rule.body + ".")))
        ]
    assert not [p for p in in_url if p.split(".")[-1] == "secret"], method.full_name


def test_the_replication_service_has_no_http_rules() -> None:
    service = replication_pb2.DESCRIPTOR.services_by_name["ReplicationService"]
    for method in service.methods:
        assert not method.GetOptions().HasExtension(annotations_pb2.http), method.name


def test_the_required_fields_are_exactly_those_listed() -> None:
    marked = {
        (message.name, field.name)
        for message in messages()
        for field in message.fields
        if field_behavior_pb2.REQUIRED in behaviors(field)
    }
    assert marked == REQUIRED


def test_output_only_fields_of_a_key_are_marked_and_its_name_is_its_identifier() -> None:
    fields = API_KEY.fields_by_name
    assert behaviors(fields["name"]) == [field_behavior_pb2.IDENTIFIER]
    for name in OUTPUT_ONLY:
        assert field_behavior_pb2.OUTPUT_ONLY in behaviors(fields[name]), name
    for name in set(fields) - OUTPUT_ONLY:
        assert field_behavior_pb2.OUTPUT_ONLY not in behaviors(fields[name]), name


def test_a_key_is_a_resource_with_its_documented_pattern() -> None:
    options = API_KEY.GetOptions()
    resource = options.Extensions[resource_pb2.resource]
    assert resource.type == "edgekeys.io/ApiKey"
    assert list(resource.pattern) == ["projects/{project}/apiKeys/{api_key}"]
    assert (resource.plural, resource.singular) == ("apiKeys", "apiKey")


def test_every_resource_reference_names_a_defined_resource() -> None:
    defined = {
        d.type: list(d.pattern)
        for d in api_keys_pb2.DESCRIPTOR.GetOptions().Extensions[resource_pb2.resource_definition]
    }
    assert defined == {
        "edgekeys.io/Project": ["projects/{project}"],
        "edgekeys.io/Deployment": ["projects/{project}/deployments/{deployment}"],
    }
    defined["edgekeys.io/ApiKey"] = ["projects/{project}/apiKeys/{api_key}"]
    referenced = 0
    for message in messages():
        for field in message.fields:
            options = field.GetOptions()
            names_a_resource = field.name in {"name", "parent", "deployment", "deployments"} or (
                field.name == "api_key" and field.type == FieldDescriptor.TYPE_STRING
            )
            if names_a_resource and (message.name, field.name) != ("ApiKey", "name"):
                assert options.HasExtension(resource_pb2.resource_reference), field.full_name
            if options.HasExtension(resource_pb2.resource_reference):
                reference = options.Extensions[resource_pb2.resource_reference]
                assert (reference.type or reference.child_type) in defined, field.full_name
                referenced += 1
    assert referenced > 20
