"""The cluster topology as local processes, without Docker: a Ray head, one Ray node per KB that
offers the resource ``kb:<name>``, the coordinator and Prometheus, all on 127.0.0.1.

``cluster_up`` records every process it starts in ``STATE_DIR/cluster.json`` as soon as it runs,
so ``cluster_down`` stops exactly those (each in its own session, with everything it spawned),
even after a start that failed halfway.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from kdmkb.services.config import KB_NAME_PATTERN
from kdmkb.services.errors import ConfigError, PreconditionError
from kdmkb.services.prometheus import ALERT_RULES, prometheus_config, prometheus_tool
from kdmkb.services.ray_runtime import WORKER_ENV

HOST = "127.0.0.1"
STATE_FILE = "cluster.json"
# Ray's dashboard keeps this file (Prometheus file_sd form) in the temp dir: every node's metrics agent.
RAY_METRICS_TARGETS = "prom_metrics_service_discovery.json"
RAY_STARTED = "Ray runtime started"
COORDINATOR_STARTED = "coordinator listening on"


def free_port() -> int:
    """A port nothing listens on now (the OS's pick), for the services asked to start on port 0."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def _ray_command() -> str:
    beside = Path(sys.executable).with_name("ray")
    found = str(beside) if beside.is_file() else shutil.which("ray")
    if not found:
        raise ConfigError("the `ray` command is not installed next to this Python or on the PATH")
    return found


def _session_members(session: int) -> list[int]:
    """Live processes of a session: a Ray node's raylet, agents and workers stay in the session of its `ray start`."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        if fields[0] != "Z" and int(fields[3]) == session:
            members.append(int(entry.name))
    return members


def _start_time(pid: int) -> str:
    """The kernel's start time of a process: a pid in cluster.json is ours only if it still matches."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[19]
    except OSError:
        return ""


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


class _Launcher:
    """Starts processes, each in a new session with its log in ``logs/``, and keeps cluster.json current."""

    def __init__(self, state_dir: Path, state: dict) -> None:
        self.state_dir = state_dir
        self.state = state
        (state_dir / "logs").mkdir(parents=True, exist_ok=True)

    def save(self) -> None:
        path = self.state_dir / STATE_FILE
        temporary = path.with_name(f".{STATE_FILE}.tmp")
        temporary.write_text(json.dumps(self.state, indent=1), encoding="utf-8")
        os.replace(temporary, path)

    def log(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    def start(self, name: str, command: list[str], env: dict | None = None) -> subprocess.Popen:
        log = self.log(name)
        with log.open("wb") as output:  # a fresh log: readiness is read from it
            process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env={**os.environ, **(env or {})})
        self.state["processes"].append({"name": name, "pid": process.pid, "start_time": _start_time(process.pid), "log": str(log)})
        self.save()
        return process

    def wait_for(self, name: str, process: subprocess.Popen, ready, timeout: float) -> None:
        """Polls ``ready()`` until it holds; a process that ends first fails the start with its log's tail."""
        log = self.log(name)
        deadline = time.monotonic() + timeout
        while not ready():
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:] if log.is_file() else ""
                status = f"ended with code {process.returncode}" if process.returncode is not None else f"not ready after {timeout:.0f} s"
                raise PreconditionError(f"{name} {status}; its log {log} ends with:\n{tail}")
            time.sleep(0.2)


def _log_says(path: Path, text: str):
    return lambda: path.is_file() and text in path.read_text(errors="replace")


def _http_ok(url: str):
    def ready() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    return ready


def cluster_up(
    state_dir: Path,
    kbs: list[str],
    ray_port: int = 6379,
    coordinator_port: int = 50051,
    metrics_port: int = 9400,
    prometheus_port: int = 9090,
    dashboard_port: int = 8265,
    scrape_interval: str = "5s",
    object_store_mb: int = 200,
    timeout: float = 120.0,
    data_roots: list[Path] | None = None,
) -> dict:
    """Starts the Ray head, a Ray node per KB, the coordinator and Prometheus; returns what cluster.json holds.

    A port of 0 is replaced by a free one. On any failure everything started so far is stopped.
    The coordinator reads KB folders and alignment files only under ``data_roots`` (default: the
    current directory).
    """
    if not kbs or len(set(kbs)) != len(kbs):
        raise ConfigError(f"kbs: give distinct KB names, one Ray node each; got {kbs}")
    for name in kbs:
        if not KB_NAME_PATTERN.fullmatch(name):
            raise ConfigError(f"kbs: {name!r} is not a KB name (letters, digits, '.', '_' or '-')")
    state_dir = Path(state_dir).resolve()
    if (state_dir / STATE_FILE).is_file():
        raise PreconditionError(f"a cluster is recorded in {state_dir / STATE_FILE}; run `kdmkb cluster down --state-dir {state_dir}` first")
    prometheus = prometheus_tool("prometheus")
    if not ALERT_RULES.is_file():
        raise ConfigError(f"the alert rules {ALERT_RULES} are missing: this kdmkb installation lacks the data of kdmkb.deploy; reinstall kdmkb")
    ray = _ray_command()
    ports = {key: port or free_port() for key, port in (("ray", ray_port), ("coordinator", coordinator_port), ("metrics", metrics_port), ("prometheus", prometheus_port), ("dashboard", dashboard_port))}
    state = {
        "ray_address": f"{HOST}:{ports['ray']}",
        "coordinator": f"{HOST}:{ports['coordinator']}",
        "coordinator_metrics": f"{HOST}:{ports['metrics']}",
        "prometheus": f"http://{HOST}:{ports['prometheus']}",
        "ray_dashboard": f"http://{HOST}:{ports['dashboard']}",
        "data_dir": str(state_dir / "coordinator"),
        "data_roots": [str(Path(root).resolve()) for root in data_roots or [Path.cwd()]],
        # Short: Ray's unix socket paths under it must stay below 108 characters.
        "ray_temp_dir": tempfile.mkdtemp(prefix="kdmkb-ray-"),
        "resources": {name: f"kb:{name}" for name in kbs},
        "processes": [],
    }
    launcher = _Launcher(state_dir, state)
    launcher.save()
    try:
        _start_ray_nodes(launcher, ray, object_store_mb, timeout)
        _start_coordinator(launcher, timeout)
        _start_prometheus(launcher, prometheus, scrape_interval, timeout)
    except BaseException:
        cluster_down(state_dir)
        raise
    return state


def _start_ray_nodes(launcher: _Launcher, ray: str, object_store_mb: int, timeout: float) -> None:
    """The head, then one node per KB, one at a time: nodes that start together on one machine
    can pick the same socket file or port. Fixed default ports (client server, dashboard agent)
    are replaced by free ones so several nodes fit on one machine."""
    state = launcher.state
    env = {**WORKER_ENV, "KDMKB_METRICS_HOST": HOST}
    head_port = state["ray_address"].rsplit(":", 1)[1]
    common = ["--block", f"--node-ip-address={HOST}", "--num-cpus=1", f"--object-store-memory={object_store_mb * 2**20}", "--disable-usage-stats"]
    nodes = [("ray-head", ["--head", f"--port={head_port}", "--include-dashboard=true", f"--dashboard-host={HOST}", f"--dashboard-port={state['ray_dashboard'].rsplit(':', 1)[1]}", f"--ray-client-server-port={free_port()}", f"--temp-dir={state['ray_temp_dir']}"])]
    nodes += [(f"ray-node-{name}", [f"--address={state['ray_address']}", f"--resources={json.dumps({resource: 1})}"]) for name, resource in state["resources"].items()]
    for name, own in nodes:
        process = launcher.start(name, [ray, "start", *own, *common, f"--dashboard-agent-listen-port={free_port()}"], env)
        launcher.wait_for(name, process, _log_says(launcher.log(name), RAY_STARTED), timeout)


def _start_coordinator(launcher: _Launcher, timeout: float) -> None:
    state = launcher.state
    command = [
        sys.executable, "-m", "kdmkb", "serve",
        "--address", state["coordinator"],
        "--data-dir", state["data_dir"],
        "--ray-address", state["ray_address"],
        "--metrics-port", state["coordinator_metrics"].rsplit(":", 1)[1],
        *(argument for root in state["data_roots"] for argument in ("--data-root", root)),
    ]  # fmt: skip
    process = launcher.start("coordinator", command, {"KDMKB_METRICS_HOST": HOST})
    launcher.wait_for("coordinator", process, _log_says(launcher.log("coordinator"), COORDINATOR_STARTED), timeout)


def _start_prometheus(launcher: _Launcher, binary: Path, scrape_interval: str, timeout: float) -> None:
    """Scrapes the coordinator, the workers through the targets file the coordinator keeps in its
    data dir, and the Ray nodes through the one Ray's dashboard keeps in its temp dir."""
    state = launcher.state
    ray_targets = str(Path(state["ray_temp_dir"]) / RAY_METRICS_TARGETS)
    config = prometheus_config(state["coordinator_metrics"], str(Path(state["data_dir"]) / "prometheus_targets.json"), [str(ALERT_RULES)], scrape_interval, ray_targets)
    config_file = launcher.state_dir / "prometheus.yml"
    config_file.write_text(json.dumps(config, indent=1), encoding="utf-8")  # JSON is YAML
    command = [
        str(binary),
        f"--config.file={config_file}",
        f"--storage.tsdb.path={launcher.state_dir / 'prometheus-data'}",
        f"--web.listen-address={state['prometheus'].removeprefix('http://')}",
    ]
    process = launcher.start("prometheus", command)
    launcher.wait_for("prometheus", process, _http_ok(f"{state['prometheus']}/-/ready"), timeout)


def cluster_down(state_dir: Path, timeout: float = 60.0) -> list[int]:
    """Stops every process cluster.json records and returns the pids that survived.

    Prometheus first, then the coordinator (it ends its KB actors, so Ray must still run), then
    every Ray node at once. Each gets SIGTERM (a Ray node then ends its raylet and workers);
    whatever is left of its session after ``timeout`` gets SIGKILL.
    """
    state_dir = Path(state_dir).resolve()
    path = state_dir / STATE_FILE
    if not path.is_file():
        raise PreconditionError(f"no cluster is recorded in {state_dir} ({STATE_FILE} is missing)")
    state = json.loads(path.read_text(encoding="utf-8"))
    processes = state["processes"]
    ray_nodes = [p for p in processes if p["name"].startswith("ray-")]
    for wave in [[p] for p in reversed(processes) if p not in ray_nodes] + [ray_nodes]:
        _stop(wave, timeout)
    survivors = [pid for process in processes for pid in _session_members(process["pid"])]
    if not survivors:
        shutil.rmtree(state["ray_temp_dir"], ignore_errors=True)
        path.unlink()
    return survivors


def _stop(processes: list[dict], timeout: float) -> None:
    """SIGTERM to each process (to every member of its session if it is gone), SIGKILL to what remains after ``timeout``."""
    sessions = [process["pid"] for process in processes]  # Linux never reuses a pid while a session of that id has members
    for process in processes:
        alive = _start_time(process["pid"]) == process["start_time"]
        for pid in [process["pid"]] if alive else _session_members(process["pid"]):
            _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(_session_members(session) for session in sessions) and time.monotonic() < deadline:
        time.sleep(0.2)
    for session in sessions:
        for pid in _session_members(session):
            _signal(pid, signal.SIGKILL)
    time.sleep(0.2)
