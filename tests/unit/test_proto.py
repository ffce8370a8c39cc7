"""The committed wire format agrees field by field with an independent OpAMP
implementation (the PyPI client's generated messages); tests/tools/test_gen_proto.py
checks that regenerating it changes nothing."""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from opentelemetry._opamp.proto import opamp_pb2 as theirs

from opamp_operator.opamp import wire
from opamp_operator.opamp.proto import opamp_pb2 as ours


def _field_shape(f: FieldDescriptor) -> tuple[int, int, bool, str]:
    """What decides the bytes on the wire: number, type, repeated-ness, and the short
    name of the message or enum type (package names differ on purpose)."""
    target = f.message_type or f.enum_type
    return (f.number, f.type, f.is_repeated, target.name if target else "")


def _compare_message(mine: Descriptor, other: Descriptor, path: str) -> list[str]:
    problems = []
    for name, field in other.fields_by_name.items():
        if name not in mine.fields_by_name:
            problems.append(f"{path}.{name} missing")
        elif _field_shape(mine.fields_by_name[name]) != _field_shape(field):
            problems.append(
                f"{path}.{name}: ours {_field_shape(mine.fields_by_name[name])} "
                f"theirs {_field_shape(field)}"
            )
    for nested_name, nested in other.nested_types_by_name.items():
        problems += _compare_message(
            mine.nested_types_by_name[nested_name], nested, f"{path}.{nested_name}"
        )
    return problems


def _enum_values(e: EnumDescriptor) -> dict[str, int]:
    return {v.name: v.number for v in e.values}


def test_wire_format_matches_an_independent_implementation() -> None:
    problems: list[str] = []
    for name, message in theirs.DESCRIPTOR.message_types_by_name.items():
        mine = ours.DESCRIPTOR.message_types_by_name.get(name)
        if mine is None:
            problems.append(f"message {name} missing")
            continue
        problems += _compare_message(mine, message, name)
    for name, enum in theirs.DESCRIPTOR.enum_types_by_name.items():
        mine_values = _enum_values(ours.DESCRIPTOR.enum_types_by_name[name])
        for value, number in _enum_values(enum).items():
            if mine_values.get(value) != number:
                problems.append(
                    f"enum {name}.{value}: ours {mine_values.get(value)} theirs {number}"
                )
    assert problems == []
    # Ours is the newer spec: these came after the PyPI client's copy.
    extra = set(ours.DESCRIPTOR.message_types_by_name) - set(
        theirs.DESCRIPTOR.message_types_by_name
    )
    assert extra == {"ConnectionSettingsStatus", "TLSConnectionSettings", "ProxyConnectionSettings"}


def test_bytes_cross_between_the_implementations() -> None:
    msg = ours.AgentToServer(instance_uid=bytes(range(16)), sequence_num=7, capabilities=0x1003)
    msg.health.healthy = True
    msg.remote_config_status.status = ours.RemoteConfigStatuses_FAILED
    msg.remote_config_status.error_message = "bad pipeline"
    decoded = theirs.AgentToServer.FromString(msg.SerializeToString())
    assert decoded.sequence_num == 7
    assert decoded.remote_config_status.error_message == "bad pipeline"
    assert decoded.remote_config_status.status == theirs.RemoteConfigStatuses_FAILED
    assert decoded.SerializeToString() == msg.SerializeToString()


def test_protobuf_backend_is_upb() -> None:
    assert wire.protobuf_backend() == "upb"
