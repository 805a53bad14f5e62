"""A KB's queries per chosen teacher subset (the dsom combination's choices) on the wire: KBProgress, `--json` output, `kdmkb watch` and report.json."""

from __future__ import annotations

from kdmkb.coordinator.jobs import Job
from kdmkb.coordinator.servicer import job_message, progress_message
from kdmkb.services.api import subsets_text
from kdmkb.services.cli import _message
from kdmkb.services.client import job_report

CHOSEN = {"text": 3, "numeric+text": 5_000_000_000}  # beyond int32: the field is int64


def dsom_job() -> Job:
    job = Job(strategy="dsom", kbs=["student", "text", "numeric"], settings={"rounds": 2}, state="SUCCEEDED", round=2)
    job.progress = {kb: job.new_progress() for kb in job.kbs}
    job.progress["student"]["teacher_subsets"] = dict(CHOSEN)
    return job


def test_the_progress_message_carries_the_chosen_subsets():
    assert dict(progress_message({"teacher_subsets": CHOSEN}).teacher_subsets) == CHOSEN
    assert not progress_message({}).teacher_subsets  # a KB whose combination chooses none


def test_json_output_writes_the_counts_as_numbers():
    progress = _message(job_message(dsom_job()))["progress"]
    assert progress["student"]["teacher_subsets"] == CHOSEN  # not protobuf's JSON strings for int64
    assert progress["text"]["teacher_subsets"] == {}


def test_the_report_lists_the_subsets_of_the_kbs_that_chose_some():
    assert job_report(job_message(dsom_job()))["teacher_subsets"] == {"student": {"numeric+text": 5_000_000_000, "text": 3}}
    plain = dsom_job()
    plain.progress["student"].pop("teacher_subsets")
    assert "teacher_subsets" not in job_report(job_message(plain))  # other strategies' reports are unchanged


def test_watch_shows_each_subsets_share_largest_first():
    shares = progress_message({"teacher_subsets": {"text": 1, "numeric+text": 3, "numeric": 1}})
    assert subsets_text(shares) == "teachers numeric+text 60%, numeric 20%, text 20%"
    assert subsets_text(progress_message({})) == ""
