"""The one conversion point between typed settings and the wire's ``google.protobuf.Struct``.

Settings travel typed (pydantic models) from a job file to the worker; they become a ``Struct``
only in a request, and are typed again where it is read (``services.config.validate``, whose errors
name the request field).
"""

from __future__ import annotations

from google.protobuf import json_format, struct_pb2
from pydantic import BaseModel


def to_struct(settings: BaseModel | dict | None) -> struct_pb2.Struct:
    """The settings a user set (defaults stay implicit, so the server's defaults apply)."""
    values = settings.model_dump(mode="json", exclude_unset=True) if isinstance(settings, BaseModel) else dict(settings or {})
    message = struct_pb2.Struct()
    message.update(values)
    return message


def from_struct(struct: struct_pb2.Struct | None) -> dict:
    """A request's ``Struct`` as plain values (validated by whoever owns their model)."""
    return json_format.MessageToDict(struct) if struct is not None else {}
