"""Faults the coordinator survives, each injected into a real local cluster: damaged state files and checkpoints, dead KB actors, busy ports."""

from __future__ import annotations

import logging

from kdmkb.coordinator.service import Coordinator

TIMEOUT = 180.0


def _register(coordinator: Coordinator, nations_split, kb_names, alignment_files, settings: dict) -> None:
    for name in kb_names:
        coordinator.register_kb(name, str(nations_split.out_dir / name), "transe", settings)
    coordinator.register_alignment(*kb_names, *map(str, alignment_files))


def test_a_corrupt_state_file_is_set_aside_and_the_rest_served(ray_session, tmp_path, nations_split, kb_names, alignment_files, worker_settings, job_settings, caplog):
    data = tmp_path / "state"
    first = Coordinator(data)
    try:
        _register(first, nations_split, kb_names, alignment_files, worker_settings)
        kept = first.create_job("none", [kb_names[0]], job_settings)
        damaged = first.create_job("none", [kb_names[1]], job_settings)
    finally:
        first.shutdown()
    record = data / "jobs" / f"{damaged.job_id}.json"
    record.write_bytes(record.read_bytes()[:40])
    (data / "kbs.json").write_text('{"left": {"name": "left", "data_dir"', encoding="utf-8")

    with caplog.at_level(logging.ERROR, logger="kdmkb.coordinator.store"):
        second = Coordinator(data)
    try:
        assert [job.job_id for job in second.list_jobs()] == [kept.job_id]
        assert second.list_kbs() == []  # its registrations were in the damaged file
        assert second._alignments == {}  # alignments of KBs that are gone are not restored
        assert not record.exists() and not (data / "kbs.json").exists()
        for name in (record.name, "kbs.json"):
            assert any(name in message and "set aside" in message for message in caplog.messages), caplog.messages
        assert len(list(record.parent.glob(f"{record.name}.corrupt-*"))) == 1
        assert len(list(data.glob("kbs.json.corrupt-*"))) == 1
        # it serves: a KB registered again runs the job that survived
        _register(second, nations_split, kb_names, alignment_files, worker_settings)
        second.start_job(kept.job_id)
        assert second.wait(kept.job_id, TIMEOUT).state == "SUCCEEDED"
    finally:
        second.shutdown()


def _metrics(job) -> dict:
    """A job's test metrics without their timing."""
    return {kb: {key: value for key, value in metrics.items() if key != "seconds"} for kb, metrics in job.test_metrics.items()}


def _follow(coordinator: Coordinator, job_id: str, rounds: int) -> None:
    events = coordinator.watch_job(job_id, poll_seconds=0.05)
    try:
        for event in events:
            if event.round >= rounds:
                break
    finally:
        events.close()


def test_a_stopped_job_resumes_and_ends_as_an_uninterrupted_one(ray_session, tmp_path, nations_split, kb_names, alignment_files, worker_settings, job_settings):
    """StopJob checkpoints the round it stopped at; StartJob resumes from there, and every random draw is the one an uninterrupted run makes."""
    coordinator = Coordinator(tmp_path / "state")
    try:
        _register(coordinator, nations_split, kb_names, alignment_files, worker_settings)
        settings = {**job_settings, "rounds": 12, "eval_every": 0, "checkpoint_every": 5}
        whole = coordinator.create_job("cooperative", list(kb_names), settings)
        coordinator.start_job(whole.job_id)
        assert coordinator.wait(whole.job_id, TIMEOUT).state == "SUCCEEDED", whole.error

        stopped = coordinator.create_job("cooperative", list(kb_names), settings)
        coordinator.start_job(stopped.job_id)
        _follow(coordinator, stopped.job_id, 2)
        assert coordinator.stop_job(stopped.job_id).state == "STOPPED"
        assert 2 <= stopped.checkpoint_round == stopped.round < settings["rounds"]
        coordinator.start_job(stopped.job_id)
        resumed = coordinator.wait(stopped.job_id, TIMEOUT)
        assert resumed.state == "SUCCEEDED", resumed.error
        assert _metrics(resumed) == _metrics(whole)
    finally:
        coordinator.shutdown()
