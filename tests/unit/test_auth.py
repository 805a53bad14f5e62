"""Tokens files, the per-RPC rule table, and when serving beyond loopback is refused."""

from __future__ import annotations

import pytest

from kdmkb.coordinator.auth import RULES, Principal, Tokens, refusal
from kdmkb.coordinator.server import check_exposure, is_loopback
from kdmkb.protos.kdmkb.coordinator.v1 import coordinator_pb2 as pb
from kdmkb.services.errors import ConfigError
from kdmkb.services.tls import ServerTLS

ADMIN_TOKEN = "admin-0123456789abcdef"
LEFT_TOKEN = "left-0123456789abcdef"

GOOD = f"""
# the operator
[[token]]
value = "{ADMIN_TOKEN}"
role = "admin"

[[token]]
value = "{LEFT_TOKEN}"
role = "kb"
kbs = ["left", "extra"]
"""


def bearer(token: str) -> list[tuple[str, str]]:
    return [("user-agent", "test"), ("authorization", f"Bearer {token}")]


@pytest.fixture
def tokens(tmp_path) -> Tokens:
    path = tmp_path / "tokens.toml"
    path.write_text(GOOD)
    return Tokens.load(path)


def test_each_token_stands_for_its_role_and_kbs(tokens):
    assert tokens.principal(bearer(ADMIN_TOKEN)) == Principal("admin", frozenset())
    assert tokens.principal(bearer(LEFT_TOKEN)) == Principal("kb", frozenset({"left", "extra"}))


@pytest.mark.parametrize(
    "metadata",
    [[], [("authorization", "Bearer nope-0123456789abcdef")], [("authorization", LEFT_TOKEN)], [("authorization", f"Basic {LEFT_TOKEN}")], bearer(LEFT_TOKEN[:-1])],
    ids=["none", "unknown", "no-scheme", "basic", "prefix"],
)
def test_no_known_bearer_token_is_nobody(tokens, metadata):
    assert tokens.principal(metadata) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[[token]]\nvalue = "short"\nrole = "admin"\n', "line 1: token.value: must be 16 or more visible ASCII characters"),
        (f'[[token]]\nvalue = "{ADMIN_TOKEN}"\nrole = "admin"\n\n[[token]]\nvalue = "{LEFT_TOKEN}"\nrole = "root"\n', "line 5: token.role: Input should be 'admin' or 'kb'"),
        (f'[[token]]\nvalue = "{LEFT_TOKEN}"\nrole = "kb"\n', "line 1: token.kbs: a kb token must own at least one KB"),
        (f'[[token]]\nvalue = "{ADMIN_TOKEN}"\nrole = "admin"\nkbs = ["left"]\n', "line 1: token.kbs: an admin token owns every KB"),
        (f'[[token]]\nvalue = "{LEFT_TOKEN}"\nrole = "kb"\nkbs = ["no/slash"]\n', "line 1: token.kbs[0]: 'no/slash' is not a KB name"),
        (f'[[token]]\nvalue = "{LEFT_TOKEN}"\nrole = "kb"\nkbs = ["left"]\nvaule = "x"\n', "line 1: token.vaule: Extra inputs are not permitted"),
        (f'[[token]]\nvalue = "{ADMIN_TOKEN}"\nrole = "admin"\n[[token]]\nvalue = "{ADMIN_TOKEN}"\nrole = "admin"\n', "line 4: the same value as the token on line 1"),
        ('[[token]]\nvalue = "unterminated\n', "not valid TOML"),
        ('admins = ["x"]\n', "expected one or more [[token]] tables and nothing else (found admins)"),
        ("", "expected one or more [[token]] tables"),
    ],
    ids=["short", "role", "kb-without-kbs", "admin-with-kbs", "kb-name", "extra-field", "duplicate", "toml", "other-table", "empty"],
)
def test_a_bad_tokens_file_is_refused_naming_file_and_line_never_a_token(tmp_path, text, expected):
    path = tmp_path / "tokens.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        Tokens.load(path)
    message = str(raised.value)
    assert message.startswith(f"{path}") and expected in message
    assert ADMIN_TOKEN not in message and LEFT_TOKEN not in message


def test_a_missing_tokens_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="tokens.toml: cannot read the tokens file"):
        Tokens.load(tmp_path / "tokens.toml")


def test_every_rpc_of_the_service_has_a_rule():
    assert set(RULES) == set(pb.DESCRIPTOR.services_by_name["Coordinator"].methods_by_name)


class _Jobs:
    """The one coordinator method the rules consult: a job's KBs."""

    def job(self, job_id):
        from kdmkb.services.errors import NotFoundError

        if job_id != "j1":
            raise NotFoundError(job_id)
        return type("Job", (), {"kbs": ["left", "right"]})()


@pytest.mark.parametrize(
    ("method", "request_", "allowed"),
    [
        ("RegisterKB", pb.RegisterKBRequest(name="left"), False),
        ("RegisterAlignment", pb.RegisterAlignmentRequest(kb_a="left", kb_b="right"), False),
        ("CreateJob", pb.CreateJobRequest(kbs=["left"]), False),
        ("StartJob", pb.StartJobRequest(job_id="j1"), False),
        ("StopJob", pb.StopJobRequest(job_id="j1"), False),
        ("Predict", pb.PredictRequest(kb="left"), True),
        ("Predict", pb.PredictRequest(kb="right"), False),
        ("Evaluate", pb.EvaluateRequest(kb="right"), False),
        ("ExportEmbeddings", pb.ExportEmbeddingsRequest(kb="right"), False),
        ("ExportEmbeddings", pb.ExportEmbeddingsRequest(kb="left"), True),
        ("GetJob", pb.GetJobRequest(job_id="j1"), True),
        ("WatchJob", pb.WatchJobRequest(job_id="j1"), True),
        ("GetJob", pb.GetJobRequest(job_id="absent"), True),  # the servicer answers NOT_FOUND
        ("ListKBs", pb.ListKBsRequest(), True),
        ("ListJobs", pb.ListJobsRequest(), True),
    ],
)
def test_a_kb_token_reads_its_own_kbs_and_runs_nothing(method, request_, allowed):
    left = Principal("kb", frozenset({"left"}))
    assert (refusal(RULES[method], method, left, _Jobs(), request_) == "") is allowed
    assert refusal(RULES[method], method, Principal("admin", frozenset()), _Jobs(), request_) == ""


def test_a_job_of_another_team_is_refused():
    other = Principal("kb", frozenset({"elsewhere"}))
    assert refusal(RULES["GetJob"], "GetJob", other, _Jobs(), pb.GetJobRequest(job_id="j1")) == "GetJob: this token owns none of 'left', 'right'"


def test_a_kb_token_sees_only_its_own_kbs_progress_and_metrics():
    left = Principal("kb", frozenset({"left"}))
    job = pb.Job(job_id="j1", kbs=["left", "right"], progress={"left": pb.KBProgress(loss=1.0), "right": pb.KBProgress(loss=2.0)})
    job.test_metrics["left"].mrr = 0.5
    job.test_metrics["right"].mrr = 0.6
    cut = RULES["GetJob"].redact(left, pb.GetJobResponse(job=job)).job
    assert list(cut.kbs) == ["left", "right"] and set(cut.progress) == set(cut.test_metrics) == {"left"}
    listed = RULES["ListJobs"].redact(left, pb.ListJobsResponse(jobs=[job, pb.Job(job_id="j2", kbs=["right"])])).jobs
    assert [j.job_id for j in listed] == ["j1"] and set(listed[0].progress) == {"left"}
    event = RULES["WatchJob"].redact(left, pb.JobEvent(progress={"left": pb.KBProgress(), "right": pb.KBProgress()}))
    assert set(event.progress) == {"left"}
    kbs = RULES["ListKBs"].redact(left, pb.ListKBsResponse(kbs=[pb.KB(name="left"), pb.KB(name="right")])).kbs
    assert [kb.name for kb in kbs] == ["left"]


@pytest.mark.parametrize(
    ("address", "loopback"),
    [("127.0.0.1:50051", True), ("127.8.9.1:0", True), ("localhost:1", True), ("[::1]:50051", True), ("0.0.0.0:50051", False), ("[::]:1", False), ("10.0.0.5:1", False), ("example.org:1", False)],
)
def test_loopback_addresses(address, loopback):
    assert is_loopback(address) is loopback


def test_beyond_loopback_needs_tls_and_tokens_or_insecure(tokens):
    tls = ServerTLS(b"cert", b"key")
    with pytest.raises(ConfigError, match="without --tls-cert/--tls-key and --tokens needs --insecure"):
        check_exposure("0.0.0.0:50051", None, None, insecure=False)
    with pytest.raises(ConfigError, match="without --tokens needs --insecure"):
        check_exposure("0.0.0.0:50051", tls, None, insecure=False)
    with pytest.raises(ConfigError, match="without --tls-cert/--tls-key needs --insecure"):
        check_exposure("0.0.0.0:50051", None, tokens, insecure=False)
    check_exposure("0.0.0.0:50051", tls, tokens, insecure=False)
    check_exposure("0.0.0.0:50051", None, None, insecure=True)
    check_exposure("127.0.0.1:50051", None, None, insecure=False)
