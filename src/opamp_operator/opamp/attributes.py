"""AnyValue ↔ plain Python values, for agent attributes and component metadata."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeAlias

from opamp_operator.opamp.proto import anyvalue_pb2 as av

Value: TypeAlias = str | bool | int | float | bytes | list["Value"] | dict[str, "Value"] | None


def to_python(value: av.AnyValue) -> Value:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [to_python(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return to_dict(value.kvlist_value.values)
    result: Value = getattr(value, kind)
    return result


def from_python(value: Value) -> av.AnyValue:
    out = av.AnyValue()
    if value is None:
        return out
    if isinstance(value, bool):  # before int: bool is an int
        out.bool_value = value
    elif isinstance(value, int):
        out.int_value = value
    elif isinstance(value, float):
        out.double_value = value
    elif isinstance(value, str):
        out.string_value = value
    elif isinstance(value, bytes):
        out.bytes_value = value
    elif isinstance(value, list):
        out.array_value.values.extend(from_python(v) for v in value)
    else:
        out.kvlist_value.values.extend(from_dict(value))
    return out


def to_dict(kvs: Iterable[av.KeyValue]) -> dict[str, Value]:
    """Later duplicates win, as a map would have it."""
    return {kv.key: to_python(kv.value) for kv in kvs}


def from_dict(values: Mapping[str, Value]) -> list[av.KeyValue]:
    return [av.KeyValue(key=k, value=from_python(v)) for k, v in values.items()]


def to_text(value: Value) -> str:
    """A display form for selectors and labels: strings as they are, the rest as repr."""
    return value if isinstance(value, str) else repr(value)
