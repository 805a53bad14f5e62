"""`kdmkb cluster down` stops what cluster.json records, children included; `up` refuses bad input before starting anything."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from kdmkb.services.cluster import STATE_FILE, _session_members, _start_time, cluster_down, cluster_up
from kdmkb.services.errors import ConfigError, PreconditionError


def test_down_stops_a_recorded_process_and_what_it_left_behind(tmp_path):
    leader = subprocess.Popen(["bash", "-c", "sleep 300 & wait"], start_new_session=True)  # bash ends on SIGTERM, its sleep stays
    ray_temp = tmp_path / "ray-temp"
    ray_temp.mkdir()
    record = {"name": "node", "pid": leader.pid, "start_time": _start_time(leader.pid), "log": ""}
    (tmp_path / STATE_FILE).write_text(json.dumps({"processes": [record], "ray_temp_dir": str(ray_temp)}))
    try:
        deadline = time.monotonic() + 10
        while len(_session_members(leader.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # until bash has started its sleep
        assert len(_session_members(leader.pid)) == 2
        assert cluster_down(tmp_path, timeout=1) == []
        assert leader.wait(timeout=10) is not None and _session_members(leader.pid) == []
        assert not (tmp_path / STATE_FILE).exists() and not ray_temp.exists()
    finally:
        for pid in _session_members(leader.pid):
            subprocess.run(["kill", "-9", str(pid)], check=False)


def test_down_without_a_cluster_says_so(tmp_path):
    with pytest.raises(PreconditionError, match="no cluster is recorded"):
        cluster_down(tmp_path)


@pytest.mark.parametrize(("kbs", "message"), [([], "distinct"), (["a", "a"], "distinct"), (["a b"], "not a KB name")])
def test_up_refuses_bad_kb_names(tmp_path, kbs, message):
    with pytest.raises(ConfigError, match=message):
        cluster_up(tmp_path, kbs)


def test_up_refuses_a_state_dir_that_holds_a_cluster(tmp_path):
    (tmp_path / STATE_FILE).write_text("{}")
    with pytest.raises(PreconditionError, match="cluster down"):
        cluster_up(tmp_path, ["west"])
