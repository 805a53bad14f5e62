"""Trust over a real gRPC server: tokens and roles, TLS and mTLS, the privacy of a KB's facts, data roots.

One coordinator for the module, with a data root holding the nations KBs "left" and "right"
(registered by relative paths with the admin token) and a folder outside it; it is served three
times on 127.0.0.1:0: with tokens over plaintext, with tokens over TLS, and with mTLS.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from typer.testing import CliRunner

from kdmkb.coordinator.auth import Tokens
from kdmkb.protos.kdmkb.coordinator.v1 import coordinator_pb2 as pb
from kdmkb.services.cli import Exit, app
from kdmkb.services.client import CoordinatorClient
from kdmkb.services.tls import ClientTLS, ServerTLS
from kdmkb.services.wire import to_struct as struct

TIMEOUT = 120.0
ADMIN, LEFT, RIGHT = "admin-token-0123456789", "left-token-0123456789", "right-token-0123456789"
TOKENS = f"""
[[token]]
value = "{ADMIN}"
role = "admin"

[[token]]
value = "{LEFT}"
role = "kb"
kbs = ["left"]

[[token]]
value = "{RIGHT}"
role = "kb"
kbs = ["right"]
"""
DENIED, UNAUTHENTICATED, INVALID = grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT


# -- certificates, made for this module -----------------------------------------------------


@dataclass(frozen=True)
class Pem:
    cert: Path
    key: Path


def _certificate(folder: Path, name: str, issuer: tuple | None = None, server: bool = False, ca: bool = False) -> tuple:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_key, issuer_cert = issuer or (key, None)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    pem = Pem(folder / f"{name}.crt", folder / f"{name}.key")
    pem.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return (key, cert), pem


@dataclass(frozen=True)
class Certificates:
    ca: Pem
    server: Pem
    client: Pem
    stranger: Pem  # a client certificate no trusted CA signed


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> Certificates:
    folder = tmp_path_factory.mktemp("certificates")
    ca, ca_pem = _certificate(folder, "ca", ca=True)
    _, server = _certificate(folder, "server", issuer=ca, server=True)
    _, client = _certificate(folder, "client", issuer=ca)
    other_ca, _ = _certificate(folder, "other-ca", ca=True)
    _, stranger = _certificate(folder, "stranger", issuer=other_ca)
    return Certificates(ca_pem, server, client, stranger)


# -- the module's coordinator and servers ---------------------------------------------------


@dataclass(frozen=True)
class Served:
    root: Path  # the data root
    outside: Path  # a folder next to it, outside
    plain: str  # tokens, no TLS
    tls: str  # tokens over TLS
    mtls: str  # client certificates required, no tokens
    tokens_file: Path


@pytest.fixture(scope="module")
def served(ray_session, nations_split, tmp_path_factory, certificates):
    from kdmkb.coordinator.server import start_server
    from kdmkb.coordinator.service import Coordinator
    from kdmkb.services.data_roots import DataRoots

    base = tmp_path_factory.mktemp("trust")
    root, outside = base / "root", base / "outside"
    shutil.copytree(nations_split.out_dir, root / "kbs")
    shutil.copytree(nations_split.out_dir / "left", outside / "someone-elses-kb")
    os.symlink(outside / "someone-elses-kb", root / "escape")
    tokens_file = base / "tokens.toml"
    tokens_file.write_text(TOKENS)
    tokens = Tokens.load(tokens_file)
    tls = ServerTLS.from_files(certificates.server.cert, certificates.server.key)
    mtls = ServerTLS.from_files(certificates.server.cert, certificates.server.key, certificates.ca.cert)
    coordinator = Coordinator(data_roots=DataRoots([root]))
    servers = [start_server(coordinator, "127.0.0.1:0", tokens=tokens), start_server(coordinator, "127.0.0.1:0", tokens=tokens, tls=tls), start_server(coordinator, "127.0.0.1:0", tls=mtls)]
    yield Served(root, outside, *(f"127.0.0.1:{port}" for _, port in servers), tokens_file)
    for server, _ in servers:
        server.stop(grace=None).wait()
    coordinator.shutdown()


def _stub(address: str, token: str | None = None, tls: ClientTLS | None = None):
    return CoordinatorClient(address, timeout=TIMEOUT, token=token, tls=tls).stub


def _error(method, request, timeout: float = TIMEOUT) -> grpc.RpcError:
    """The error a call ends with (a stream's comes as it is read)."""
    with pytest.raises(grpc.RpcError) as raised:
        response = method(request, timeout=timeout)
        if not isinstance(response, Message):
            list(response)
    return raised.value


@pytest.fixture(scope="module")
def admin(served):
    return _stub(served.plain, ADMIN)


@pytest.fixture(scope="module")
def kbs(served, admin, worker_settings, job_settings) -> dict:
    """"left" and "right" registered by paths relative to the data root, with their alignment, trained by a one-round job."""
    registered = {}
    for name in ("left", "right"):
        request = pb.RegisterKBRequest(name=name, data_dir=f"kbs/{name}", settings=struct(worker_settings))
        registered[name] = admin.RegisterKB(request, timeout=TIMEOUT).kb
    admin.RegisterAlignment(
        pb.RegisterAlignmentRequest(kb_a="left", kb_b="right", entities_path="kbs/alignments/left__right.entities.tsv", relations_path="kbs/alignments/left__right.relations.tsv"),
        timeout=TIMEOUT,
    )
    settings = struct({**job_settings, "rounds": 1, "steps_per_round": 2})
    job = admin.CreateJob(pb.CreateJobRequest(strategy="none", kbs=["left", "right"], settings=settings), timeout=TIMEOUT).job
    admin.StartJob(pb.StartJobRequest(job_id=job.job_id), timeout=TIMEOUT)
    assert list(admin.WatchJob(pb.WatchJobRequest(job_id=job.job_id), timeout=TIMEOUT))[-1].state == pb.JOB_STATE_SUCCEEDED
    return {"kbs": registered, "job_id": job.job_id}


# -- authentication and roles -----------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "unknown-token-0123456789", ADMIN + "x"], ids=["none", "unknown", "longer"])
def test_without_a_known_token_every_rpc_is_unauthenticated_and_health_stays_open(served, kbs, token, caplog):
    caplog.set_level("DEBUG")
    stub = _stub(served.plain, token)
    for method, request in (
        (stub.ListKBs, pb.ListKBsRequest()),
        (stub.Predict, pb.PredictRequest(kb="left", head="usa", relation="embassy")),
        (stub.RegisterKB, pb.RegisterKBRequest(name="x", data_dir="kbs/left")),
        (stub.WatchJob, pb.WatchJobRequest(job_id=kbs["job_id"])),
        (stub.ExportEmbeddings, pb.ExportEmbeddingsRequest(kb="left")),
    ):
        error = _error(method, request)
        assert error.code() == UNAUTHENTICATED, error
        assert "authorization: Bearer" in error.details() and (token or "~") not in error.details()
    assert (token or "~") not in caplog.text and ADMIN not in caplog.text
    channel = grpc.insecure_channel(served.plain)
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="kdmkb.coordinator.v1.Coordinator"), timeout=TIMEOUT)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    answers = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=TIMEOUT)
    assert "kdmkb.coordinator.v1.Coordinator" in {service.name for answer in answers for service in answer.list_services_response.service}
    channel.close()


def test_the_admin_registered_kbs_by_paths_relative_to_the_first_data_root(served, kbs):
    for name, kb in kbs["kbs"].items():
        assert kb.data_dir == str((served.root / "kbs" / name).resolve())


def test_a_kb_token_reads_its_own_kb_only(served, kbs):
    left = _stub(served.plain, LEFT)
    assert [kb.name for kb in left.ListKBs(pb.ListKBsRequest(), timeout=TIMEOUT).kbs] == ["left"]
    assert left.Predict(pb.PredictRequest(kb="left", head="usa", relation="embassy", k=3), timeout=TIMEOUT).predictions
    assert left.Evaluate(pb.EvaluateRequest(kb="left", split="valid"), timeout=TIMEOUT).metrics.num_queries > 0
    assert {chunk.kind for chunk in left.ExportEmbeddings(pb.ExportEmbeddingsRequest(kb="left"), timeout=TIMEOUT)} == {"entity", "relation"}
    job = left.GetJob(pb.GetJobRequest(job_id=kbs["job_id"]), timeout=TIMEOUT).job
    assert list(job.kbs) == ["left", "right"]
    assert [event.kind for event in left.WatchJob(pb.WatchJobRequest(job_id=kbs["job_id"]), timeout=TIMEOUT)] == ["state"]
    for method, request in (
        (left.Predict, pb.PredictRequest(kb="right", head="usa", relation="embassy")),
        (left.Evaluate, pb.EvaluateRequest(kb="right", split="test")),
        (left.ExportEmbeddings, pb.ExportEmbeddingsRequest(kb="right")),
    ):
        error = _error(method, request)
        assert (error.code(), error.details().split(":")[1].strip()) == (DENIED, "this token owns none of 'right'"), error


def test_a_kb_token_registers_nothing_and_runs_no_job(served, kbs):
    left = _stub(served.plain, LEFT)
    for method, request in (
        ("RegisterKB", pb.RegisterKBRequest(name="left", data_dir="kbs/left")),
        ("RegisterAlignment", pb.RegisterAlignmentRequest(kb_a="left", kb_b="right")),
        ("CreateJob", pb.CreateJobRequest(strategy="none", kbs=["left"])),
        ("StartJob", pb.StartJobRequest(job_id=kbs["job_id"])),
        ("StopJob", pb.StopJobRequest(job_id=kbs["job_id"])),
    ):
        error = _error(getattr(left, method), request)
        assert (error.code(), error.details()) == (DENIED, f"{method} needs an admin token")
    assert {kb.name for kb in _stub(served.plain, ADMIN).ListKBs(pb.ListKBsRequest(), timeout=TIMEOUT).kbs} == {"left", "right"}


# -- privacy of a KB's facts ------------------------------------------------------------------


def rebuild_triples(stub, kb: str, entities: list[str], relations: list[str]) -> set[tuple[str, str, str]]:
    """The attack: every (head, relation) asked for all tails; the `known` flags give the KB's triples away."""
    triples = set()
    for head in entities:
        for relation in relations:
            try:
                answer = stub.Predict(pb.PredictRequest(kb=kb, head=head, relation=relation, k=len(entities)), timeout=TIMEOUT)
            except grpc.RpcError as error:
                assert error.code() == DENIED, error
                return triples
            triples.update((head, relation, p.entity) for p in answer.predictions if p.known)
    return triples


def test_a_kb_cannot_be_rebuilt_from_predict_with_another_kbs_token(served, kbs, kb_triples, vocabulary_names):
    folder = served.root / "kbs" / "left"
    entities, relations = vocabulary_names(folder / "entities.tsv"), vocabulary_names(folder / "relations.tsv")[:8]  # 8 of 55 relations: enough to show it
    facts = {triple for triple in kb_triples(folder) if triple[1] in relations}
    started = time.perf_counter()
    assert rebuild_triples(_stub(served.plain, LEFT), "left", entities, relations) == facts  # the owner may
    print(f"owner rebuilt left's {len(facts)} triples of {len(relations)} relations in {time.perf_counter() - started:.1f} s")
    assert rebuild_triples(_stub(served.plain, RIGHT), "left", entities, relations) == set()


# -- TLS ---------------------------------------------------------------------------------------


def test_tls_serves_a_client_that_trusts_its_ca_and_nobody_in_plaintext(served, kbs, certificates):
    trusting = _stub(served.tls, LEFT, ClientTLS.from_files(certificates.ca.cert))
    assert [kb.name for kb in trusting.ListKBs(pb.ListKBsRequest(), timeout=TIMEOUT).kbs] == ["left"]
    assert _error(_stub(served.tls, LEFT).ListKBs, pb.ListKBsRequest(), timeout=10).code() == grpc.StatusCode.UNAVAILABLE
    assert _error(_stub(served.tls, LEFT, ClientTLS()).ListKBs, pb.ListKBsRequest(), timeout=10).code() == grpc.StatusCode.UNAVAILABLE  # system roots
    assert _error(_stub(served.tls, None, ClientTLS.from_files(certificates.ca.cert)).ListKBs, pb.ListKBsRequest()).code() == UNAUTHENTICATED


def test_mtls_needs_a_client_certificate_its_ca_signed(served, kbs, certificates):
    ca = certificates.ca.cert
    with_certificate = _stub(served.mtls, tls=ClientTLS.from_files(ca, certificates.client.cert, certificates.client.key))
    assert {kb.name for kb in with_certificate.ListKBs(pb.ListKBsRequest(), timeout=TIMEOUT).kbs} == {"left", "right"}
    for tls in (ClientTLS.from_files(ca), ClientTLS.from_files(ca, certificates.stranger.cert, certificates.stranger.key)):
        assert _error(_stub(served.mtls, tls=tls).ListKBs, pb.ListKBsRequest(), timeout=10).code() == grpc.StatusCode.UNAVAILABLE


def compose_health_check() -> str:
    """The program docker-compose.yml's coordinator health check runs with ``python3 -c``."""
    compose = yaml.safe_load((Path(__file__).resolve().parents[2] / "docker-compose.yml").read_text())
    *command, program = compose["services"]["coordinator"]["healthcheck"]["test"]
    assert command == ["CMD", "python3", "-c"]
    return program


@pytest.mark.parametrize(
    ("server", "files", "healthy"),
    [
        ("plain", (), True),
        ("tls", ("CA",), True),
        ("tls", (), False),  # plaintext to a TLS port
        ("mtls", ("CA", "CERT", "KEY"), True),
        ("mtls", ("CA",), False),  # no client certificate
    ],
)
def test_the_compose_health_check_speaks_the_coordinator_s_security_mode(served, certificates, server, files, healthy):
    """What compose runs, against this module's servers: its port 50051 becomes theirs."""
    program = compose_health_check()
    port = getattr(served, server).rsplit(":", 1)[1]
    assert program.count(":50051") == 2
    paths = {"CA": certificates.ca.cert, "CERT": certificates.client.cert, "KEY": certificates.client.key}
    env = {name: value for name, value in os.environ.items() if not name.startswith("KDMKB_HEALTH_TLS_")}
    env |= {f"KDMKB_HEALTH_TLS_{part}": str(paths[part]) for part in files}
    done = subprocess.run([sys.executable, "-c", program.replace(":50051", f":{port}")], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode == 0) == healthy, done.stderr[-2000:]


# -- data roots --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "given"),
    [
        ("data_dir", "../outside/someone-elses-kb"),
        ("data_dir", "escape"),  # a symlink in the root to a folder outside it
        ("data_dir", "/proc/self"),
        ("entities_path", "/proc/self/status"),
        ("relations_path", "escape/train.tsv"),
    ],
)
def test_paths_leaving_the_data_roots_are_refused_naming_the_field_and_nothing_outside(served, admin, kbs, field, given):
    if field == "data_dir":
        error = _error(admin.RegisterKB, pb.RegisterKBRequest(name="intruder", data_dir=given))
    else:
        error = _error(admin.RegisterAlignment, pb.RegisterAlignmentRequest(kb_a="left", kb_b="right", **{field: given}))
    assert error.code() == INVALID and error.details().startswith(f"{field}: {given!r} is not inside a data root"), error
    assert str(served.outside) not in error.details() and "Name:" not in error.details()
    assert {kb.name for kb in admin.ListKBs(pb.ListKBsRequest(), timeout=TIMEOUT).kbs} == {"left", "right"}


def test_a_kb_folder_with_a_symlink_out_of_the_roots_is_refused_by_its_worker(served, admin, kbs):
    folder = served.root / "linked-kb"
    shutil.copytree(served.root / "kbs" / "left", folder)
    (folder / "train.tsv").unlink()
    os.symlink(served.outside / "someone-elses-kb" / "train.tsv", folder / "train.tsv")
    error = _error(admin.RegisterKB, pb.RegisterKBRequest(name="linked", data_dir="linked-kb"))
    assert error.code() == INVALID
    assert error.details() == f"data_dir: {folder.resolve() / 'train.tsv'}: a symbolic link that leads out of the data roots"


# -- the command line --------------------------------------------------------------------------


def test_the_cli_sends_its_token_and_speaks_tls(served, kbs, certificates, monkeypatch):
    runner = CliRunner()
    tls = ["--tls-ca", str(certificates.ca.cert)]
    result = runner.invoke(app, ["predict", "left", "usa", "embassy", "-k", "2", "-c", served.tls, "--token", LEFT, *tls])
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 2, result.output
    monkeypatch.setenv("KDMKB_TOKEN", RIGHT)
    result = runner.invoke(app, ["predict", "left", "usa", "embassy", "-c", served.tls, *tls])
    assert result.exit_code == Exit.ERROR and "PERMISSION_DENIED: Predict: this token owns none of 'left'" in result.stderr, result.output
    monkeypatch.delenv("KDMKB_TOKEN")
    result = runner.invoke(app, ["status", "-c", served.plain])
    assert result.exit_code == Exit.ERROR and "UNAUTHENTICATED" in result.stderr, result.output


def test_serve_refuses_before_starting_anything(served, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["serve", "--address", "0.0.0.0:0", "--data-dir", str(tmp_path / "state")])
    assert result.exit_code == Exit.BAD_INPUT and "without --tls-cert/--tls-key and --tokens needs --insecure" in result.stderr, result.output
    result = runner.invoke(app, ["serve", "--address", "0.0.0.0:0", "--tokens", str(served.tokens_file), "--data-dir", str(tmp_path / "state")])
    assert result.exit_code == Exit.BAD_INPUT and "without --tls-cert/--tls-key needs --insecure" in result.stderr, result.output
    bad = tmp_path / "tokens.toml"
    bad.write_text(TOKENS.replace('role = "kb"\nkbs = ["right"]', 'role = "kb"'))
    result = runner.invoke(app, ["serve", "--tokens", str(bad), "--data-dir", str(tmp_path / "state")])
    assert result.exit_code == Exit.BAD_INPUT and f"{bad} line 11: token.kbs: a kb token must own at least one KB" in result.stderr, result.output
    assert RIGHT not in result.output
    result = runner.invoke(app, ["serve", "--data-root", str(tmp_path / "missing"), "--data-dir", str(tmp_path / "state")])
    assert result.exit_code == Exit.USAGE and "--data-root" in result.stderr and "not a directory" in result.stderr, result.output
    assert not (tmp_path / "state").exists()
