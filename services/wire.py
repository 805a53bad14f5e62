"""The one conversion point between typed settings and the wire's ``google.protobuf.Struct``.

Settings travel typed (pydantic models) from a job file to the worker; they become a ``Struct``
only in a request, and are typed again where it is read (``services.config.validate``, whose errors
name the request field).
"""

from __future__ import annotations

import math

from google.protobuf import json_format, struct_pb2
from pydantic import BaseModel

from kdmkb.services.errors import ConfigError


def to_struct(settings: BaseModel | dict | None) -> struct_pb2.Struct:
    """The settings a user set (defaults stay implicit, so the server's defaults apply)."""
    values = settings.model_dump(mode="json", exclude_unset=True) if isinstance(settings, BaseModel) else dict(settings or {})
    message = struct_pb2.Struct()
    message.update(values)
    return message


def from_struct(struct: struct_pb2.Struct | None, field: str = "settings") -> dict:
    """A request's ``Struct`` (its field ``field``) as plain values, validated by whoever owns their model.

    A number that is not finite (NaN, Infinity: a Struct can carry them, JSON cannot) raises
    :class:`ConfigError` naming its path in ``field``.
    """
    if struct is None:
        return {}
    _check_finite(struct, field)
    return json_format.MessageToDict(struct)


def _check_finite(value: struct_pb2.Struct | struct_pb2.ListValue | struct_pb2.Value, path: str) -> None:
    if isinstance(value, struct_pb2.Struct):
        for key, item in value.fields.items():
            _check_finite(item, f"{path}.{key}")
    elif isinstance(value, struct_pb2.ListValue):
        for index, item in enumerate(value.values):
            _check_finite(item, f"{path}[{index}]")
    elif value.WhichOneof("kind") in ("struct_value", "list_value"):
        _check_finite(getattr(value, value.WhichOneof("kind")), path)
    elif value.WhichOneof("kind") == "number_value" and not math.isfinite(value.number_value):
        raise ConfigError(f"{path}: must be a finite number, got {value.number_value}")
