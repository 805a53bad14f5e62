"""Who may call what: bearer tokens from a TOML file, and one rule per Coordinator RPC.

An ``admin`` token does everything. A ``kb`` token reads only its own KBs (their status,
metrics, predictions with their ``known`` flags, embeddings, evaluations) and the jobs they
are in, cut down to those KBs; it registers nothing and runs no job. Health and reflection
stay open. Tokens are compared in constant time and never logged or echoed.
"""

from __future__ import annotations

import hmac
import re
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import grpc
from pydantic import Field, model_validator

from kdmkb.coordinator.service import Coordinator
from kdmkb.protos.kdmkb.coordinator.v1 import coordinator_pb2 as pb
from kdmkb.services import metrics
from kdmkb.services.config import KB_NAME_PATTERN, Strict, validate
from kdmkb.services.errors import ConfigError, KdmkbError

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Coordinator"].full_name
TOKEN_PATTERN = re.compile(r"[\x21-\x7e]{16,}")  # what an HTTP/2 header carries unchanged


class TokenEntry(Strict):
    """One ``[[token]]`` of a tokens file."""

    value: str = Field(description="The secret a client sends as 'authorization: Bearer <value>': 16 or more visible ASCII characters.")
    role: Literal["admin", "kb"] = Field(description="admin: everything; kb: reads its own KBs only.")
    kbs: list[str] = Field(default_factory=list, description="The KBs a kb token owns (at least one); none for admin.")

    @model_validator(mode="after")
    def _consistent(self) -> TokenEntry:
        if not TOKEN_PATTERN.fullmatch(self.value):
            raise ConfigError("value: must be 16 or more visible ASCII characters (no spaces)")
        if self.role == "kb" and not self.kbs:
            raise ConfigError("kbs: a kb token must own at least one KB")
        if self.role == "admin" and self.kbs:
            raise ConfigError("kbs: an admin token owns every KB; list none")
        for index, name in enumerate(self.kbs):
            if not KB_NAME_PATTERN.fullmatch(name):
                raise ConfigError(f"kbs[{index}]: {name!r} is not a KB name")
        return self


@dataclass(frozen=True)
class Principal:
    """The caller a token stands for."""

    role: str
    kbs: frozenset[str]

    @property
    def admin(self) -> bool:
        return self.role == "admin"

    def owns(self, kb: str) -> bool:
        return self.admin or kb in self.kbs


def _table_lines(text: str) -> list[int]:
    """Line numbers of the ``[[token]]`` headers, in order."""
    return [number for number, line in enumerate(text.splitlines(), start=1) if re.fullmatch(r"\s*\[\[\s*token\s*\]\]\s*(#.*)?", line)]


class Tokens:
    """The tokens of a ``--tokens`` file."""

    def __init__(self, entries: Iterable[TokenEntry]) -> None:
        self._entries = [(entry.value.encode(), Principal(entry.role, frozenset(entry.kbs))) for entry in entries]

    @classmethod
    def load(cls, path: Path | str) -> Tokens:
        """Reads a TOML list of ``[[token]]`` tables; errors name the file and the line, never a token."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
            raw = tomllib.loads(text)
        except OSError as error:
            raise ConfigError(f"{path}: cannot read the tokens file ({error.strerror})") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path}: not valid TOML ({error})") from None
        unknown = sorted(set(raw) - {"token"})
        if unknown or not isinstance(raw.get("token"), list) or not raw["token"]:
            raise ConfigError(f"{path}: expected one or more [[token]] tables and nothing else" + (f" (found {', '.join(unknown)})" if unknown else ""))
        lines = _table_lines(text)
        entries, first = [], {}
        for index, table in enumerate(raw["token"]):
            where = f"{path} line {lines[index]}" if index < len(lines) else f"{path} token[{index}]"
            try:
                entry = validate(TokenEntry, table, prefix="token")
            except ConfigError as error:
                raise ConfigError(f"{where}: {error}") from None
            if entry.value in first:
                raise ConfigError(f"{where}: the same value as the token on line {first[entry.value]}")
            first[entry.value] = lines[index] if index < len(lines) else index
            entries.append(entry)
        return cls(entries)

    def principal(self, metadata: Iterable[tuple[str, str | bytes]]) -> Principal | None:
        """The caller of an ``authorization: Bearer <token>`` header, or None."""
        header = next((value for key, value in metadata if key == "authorization"), None)
        if not isinstance(header, str) or not header.startswith("Bearer "):
            return None
        offered = header.removeprefix("Bearer ").strip().encode()
        found = None
        for value, principal in self._entries:  # every comparison runs: the time says nothing about which token matched
            if hmac.compare_digest(value, offered):
                found = principal
        return found


# -- the rules, one per RPC ----------------------------------------------------------------


def _request_kb(coordinator: Coordinator, request) -> list[str]:
    return [request.kb]


def _job_kbs(coordinator: Coordinator, request) -> list[str] | None:
    """The job's KBs; None for a job that does not exist (the servicer answers that)."""
    try:
        return coordinator.job(request.job_id).kbs
    except KdmkbError:
        return None


def _own_kbs(principal: Principal, response: pb.ListKBsResponse) -> pb.ListKBsResponse:
    return pb.ListKBsResponse(kbs=[kb for kb in response.kbs if principal.owns(kb.name)])


def _cut_job(principal: Principal, job: pb.Job) -> pb.Job:
    """The job with other KBs' progress and test metrics left out (their names stay)."""
    cut = pb.Job()
    cut.CopyFrom(job)
    for field in (cut.progress, cut.test_metrics):
        for kb in [kb for kb in field if not principal.owns(kb)]:
            del field[kb]
    return cut


def _own_jobs(principal: Principal, response: pb.ListJobsResponse) -> pb.ListJobsResponse:
    return pb.ListJobsResponse(jobs=[_cut_job(principal, job) for job in response.jobs if any(principal.owns(kb) for kb in job.kbs)])


def _own_job(principal: Principal, response: pb.GetJobResponse) -> pb.GetJobResponse:
    return pb.GetJobResponse(job=_cut_job(principal, response.job))


def _own_event(principal: Principal, event: pb.JobEvent) -> pb.JobEvent:
    cut = pb.JobEvent()
    cut.CopyFrom(event)
    for kb in [kb for kb in cut.progress if not principal.owns(kb)]:
        del cut.progress[kb]
    return cut


@dataclass(frozen=True)
class Rule:
    """Who may call one RPC.

    ``admin_only``: an admin token only. Otherwise a kb token may call it too: when ``kbs``
    names the KBs the request reads, it must own one of them; ``redact`` cuts its response (each
    message of a stream) down to its own KBs.
    """

    admin_only: bool = False
    kbs: Callable[[Coordinator, object], list[str] | None] | None = None
    redact: Callable[[Principal, object], object] | None = None


ADMIN = Rule(admin_only=True)
RULES: dict[str, Rule] = {
    "RegisterKB": ADMIN,
    "ListKBs": Rule(redact=_own_kbs),
    "RegisterAlignment": ADMIN,
    "CreateJob": ADMIN,
    "StartJob": ADMIN,
    "GetJob": Rule(kbs=_job_kbs, redact=_own_job),
    "ListJobs": Rule(redact=_own_jobs),
    "WatchJob": Rule(kbs=_job_kbs, redact=_own_event),
    "StopJob": ADMIN,
    "Evaluate": Rule(kbs=_request_kb),
    "Predict": Rule(kbs=_request_kb),
    "ExportEmbeddings": Rule(kbs=_request_kb),
}


def refusal(rule: Rule, method: str, principal: Principal, coordinator: Coordinator, request) -> str:
    """Why ``principal`` may not make this call, or "" when it may."""
    if principal.admin:
        return ""
    if rule.admin_only:
        return f"{method} needs an admin token"
    kbs = rule.kbs(coordinator, request) if rule.kbs else None
    if kbs is not None and not any(principal.owns(kb) for kb in kbs):
        return f"{method}: this token owns none of {', '.join(repr(kb) for kb in kbs)}"
    return ""


class AuthInterceptor(grpc.ServerInterceptor):
    """Checks every Coordinator call against :data:`RULES`; other services (health, reflection) pass."""

    def __init__(self, tokens: Tokens, coordinator: Coordinator) -> None:
        self.tokens = tokens
        self.coordinator = coordinator

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        service, _, method = details.method.lstrip("/").partition("/")
        if handler is None or service != SERVICE_NAME:
            return handler
        principal = self.tokens.principal(details.invocation_metadata)
        rule = RULES.get(method, ADMIN)

        def check(request, context) -> None:
            if principal is None:
                _deny(context, method, grpc.StatusCode.UNAUTHENTICATED, "send a known token as 'authorization: Bearer <token>' metadata")
            reason = refusal(rule, method, principal, self.coordinator, request)
            if reason:
                _deny(context, method, grpc.StatusCode.PERMISSION_DENIED, reason)

        def redact(response):
            return rule.redact(principal, response) if rule.redact and not principal.admin else response

        if handler.unary_stream:

            def stream(request, context):
                check(request, context)
                for response in handler.unary_stream(request, context):
                    yield redact(response)

            return grpc.unary_stream_rpc_method_handler(stream, handler.request_deserializer, handler.response_serializer)

        def unary(request, context):
            check(request, context)
            return redact(handler.unary_unary(request, context))

        return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer, handler.response_serializer)


def _deny(context, method: str, code: grpc.StatusCode, message: str) -> None:
    metrics.RPC_REQUESTS.labels(method, code.name).inc()
    context.abort(code, message)
