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
