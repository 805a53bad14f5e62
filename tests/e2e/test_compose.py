"""The compose cluster end to end: the offline-built images, two KBs whose data is mounted on two
different Ray worker containers, a cooperative job driven from the host over the published gRPC
port, per-KB series and every Ray node's own series read from the Prometheus container, Ray's
dashboard on its published 127.0.0.1 port, and nothing left behind.

Needs a docker engine and the images of deploy/build-images.sh; `make e2e` provides both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from kdmkb.kb_worker import checkpoints
from kdmkb.protos.kdmkb.coordinator.v1 import coordinator_pb2 as pb
from kdmkb.services.client import CoordinatorClient, state_name
from kdmkb.services.cluster import free_port
from kdmkb.services.config import JobSettings, load_job_file
from kdmkb.services.datasets import dataset_dir
from kdmkb.services.metrics import WORKER_STEPS

REPO = Path(__file__).resolve().parents[2]
IMAGES = ("kdmkb:latest", "kdmkb-prometheus:latest")
SERVICES = ("ray-head", "ray-kb1", "ray-kb2", "coordinator", "prometheus")
KBS = ("kb1", "kb2")
# Per-KB training steps as Prometheus scraped them from each KB's worker.
STEPS_QUERY = f"sum by (kb, instance) ({WORKER_STEPS.describe()[0].name}_total)"
# Every Ray node's own metrics agent, as Prometheus's scrape job `ray` names them: count of Ray's series per node.
RAY_NODES = {"ray-head", "ray-kb1", "ray-kb2", "coordinator"}
RAY_QUERY = 'count by (instance) ({job="ray", __name__=~"ray_.+"})'
# Short, but with checkpoints, which the workers write into their own node's volume.
JOB = JobSettings(rounds=4, steps_per_round=5, checkpoint_every=2)


def run(*command: str, env: dict | None = None, timeout: float = 120, check: bool = True) -> str:
    done = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode:
        raise AssertionError(f"{' '.join(command[:4])} ... failed ({done.returncode}): {(done.stderr or done.stdout)[-3000:]}")
    return done.stdout


class Compose:
    """docker-compose.yml as one project with a unique name, published on free 127.0.0.1 ports."""

    def __init__(self, split: Path) -> None:
        self.project = f"kdmkb-e2e-{uuid.uuid4().hex[:8]}"
        self.split = split
        self.grpc_port, self.prometheus_port, self.dashboard_port = free_port(), free_port(), free_port()
        self.env = {
            **os.environ,
            "KDMKB_KB1_DATA": str(split / "kb1"),
            "KDMKB_KB2_DATA": str(split / "kb2"),
            "KDMKB_ALIGNMENTS": str(split / "alignments"),
            "KDMKB_GRPC_PORT": str(self.grpc_port),
            "KDMKB_PROMETHEUS_PORT": str(self.prometheus_port),
            "KDMKB_RAY_DASHBOARD_PORT": str(self.dashboard_port),
        }
        self.down_done = False

    def __call__(self, *args: str, timeout: float = 300, check: bool = True) -> str:
        return run("docker-compose", "-f", str(REPO / "docker-compose.yml"), "-p", self.project, *args, env=self.env, timeout=timeout, check=check)

    def container(self, service: str) -> str:
        return self("ps", "-q", service).strip()

    def health(self) -> dict[str, str]:
        ids = {service: self.container(service) for service in SERVICES}
        return {service: run("docker", "inspect", "--format", "{{.State.Health.Status}}", cid).strip() if cid else "missing" for service, cid in ids.items()}

    def down(self) -> None:
        self("down", "--volumes", "--remove-orphans", "--timeout", "20")
        self.down_done = True

    def leftovers(self) -> dict[str, list[str]]:
        """Containers, networks and volumes of this project still there (by label and by name)."""
        label = f"label=com.docker.compose.project={self.project}"
        name = f"name={self.project}_"
        found = {}
        for kind, listing in (("containers", ("ps", "-a")), ("networks", ("network", "ls")), ("volumes", ("volume", "ls"))):
            found[kind] = sorted({line for flt in (label, name) for line in run("docker", *listing, "-q", "--filter", flt).split()})
        return found


def query(port: int, promql: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]["result"]


def wait_for(what: str, probe, timeout: float):
    """Polls ``probe()`` (-> done, answer) every 3 s until done; fails naming ``what`` and the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        done, answer = probe()
        if done:
            return answer
        assert time.monotonic() < deadline, f"waited {timeout:.0f} s for: {what}; last answer: {answer}"
        time.sleep(3)


def dashboard_version(port: int) -> tuple[bool, dict | str]:
    """Ray's dashboard's /api/version on the host's 127.0.0.1, or why it did not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=10) as response:
            return response.status == 200, json.load(response)
    except (OSError, ValueError) as error:
        return False, repr(error)


def container_job_file(split: Path):
    """The split's job.toml with the paths as the containers see them and each KB pinned to its node."""
    job_file = load_job_file(split / "job.toml")
    for kb in job_file.kb:
        kb.data = Path("/data") / kb.name  # a path on the KB's own Ray node
        kb.resource = f"kb:{kb.name}"
        kb.settings = {"dim": 16, "batch_size": 64, "negatives": 8}
    for alignment in job_file.alignment:  # read by the coordinator
        alignment.entities = Path("/data/alignments") / alignment.entities.name
        alignment.relations = Path("/data/alignments") / alignment.relations.name
    job_file.job = JOB
    return job_file


@pytest.fixture
def cluster(tmp_path):
    try:
        run("docker", "version", "--format", "{{.Server.Version}}", timeout=30)
    except AssertionError as error:
        pytest.fail(f"docker engine not reachable: {error} (run `make e2e`)")
    local = run("docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}")
    missing = [image for image in IMAGES if image not in local.split()]
    if missing:
        pytest.fail(f"images {', '.join(missing)} are not built; nothing may be pulled: run deploy/build-images.sh")
    split = tmp_path / "split"
    run(str(Path(sys.executable).with_name("kdmkb")), "split", str(dataset_dir("nations")), "--kbs", "2", "--seed", "0", "--out", str(split))
    compose = Compose(split)
    try:
        yield compose
    finally:
        if not compose.down_done:
            print(compose("logs", "--no-color", "--tail", "40", check=False))
            compose.down()


def test_compose_cluster_runs_a_cooperative_job_across_two_ray_nodes(cluster):
    started = time.monotonic()
    cluster("up", "--detach", "--no-build", timeout=900)  # --no-build: a missing image is an error, never a pull

    def all_healthy():
        health = cluster.health()
        return set(health.values()) == {"healthy"}, health

    wait_for("every service healthy", all_healthy, 300)
    print(f"\ne2e: cluster {cluster.project} healthy after {time.monotonic() - started:.0f} s")

    client = CoordinatorClient(f"127.0.0.1:{cluster.grpc_port}", timeout=300)
    try:
        job = client.submit(container_job_file(cluster.split))
        job = client.run(job.job_id)
        kbs = {kb.name: kb for kb in client.stub.ListKBs(pb.ListKBsRequest()).kbs}
    finally:
        client.close()
    assert state_name(job.state) == "SUCCEEDED", job.error
    assert all(job.progress[kb].soft_label_bytes_received > 0 for kb in KBS)  # soft labels crossed between the nodes
    print(f"e2e: job {job.job_id} {state_name(job.state)} after {time.monotonic() - started:.0f} s")

    # Each KB's actor runs on its own node: it lists itself under the node it runs on (the node's
    # environment), and that node's container, and no other, holds one KB worker process.
    assert {name: kb.metrics_address.rsplit(":", 1)[0] for name, kb in kbs.items()} == {kb: f"ray-{kb}" for kb in KBS}
    actors = {service: run("docker", "top", cluster.container(service)).count("KBWorkerActor") for service in SERVICES}
    assert actors == {"ray-head": 0, "ray-kb1": 1, "ray-kb2": 1, "coordinator": 0, "prometheus": 0}
    for kb in KBS:  # checkpoints land in the node's own volume: the job's last round, written at its end
        cluster("exec", "-T", f"ray-{kb}", "test", "-f", str(checkpoints.path(f"/var/lib/kdmkb/checkpoints/{job.job_id}/{kb}", job.round)))

    # Prometheus finds the workers through the file the coordinator writes (refreshed within 30 s)
    # and scrapes every 15 s: a first scrape may come from before the job's last round, so wait
    # until each KB's series holds every step of the job.
    def every_step_scraped():
        series = query(cluster.prometheus_port, STEPS_QUERY)
        steps = {row["metric"].get("kb"): float(row["value"][1]) for row in series}
        return steps == dict.fromkeys(KBS, float(JOB.rounds * JOB.steps_per_round)), series

    series = wait_for(f"Prometheus to scrape every step of each KB for {STEPS_QUERY}", every_step_scraped, 120)
    print(f"e2e: PromQL {STEPS_QUERY} -> {json.dumps(series)}")
    for row in series:
        assert row["metric"]["instance"].startswith(f"ray-{row['metric']['kb']}:")

    # Ray's own metrics from every Ray node (scrape job `ray`, static targets), and Ray's dashboard
    # on the head, published on the host's 127.0.0.1 only.
    def every_ray_node_scraped():
        counts = {row["metric"]["instance"].rsplit(":", 1)[0]: int(row["value"][1]) for row in query(cluster.prometheus_port, RAY_QUERY)}
        return set(counts) == RAY_NODES, counts

    counts = wait_for(f"Prometheus to hold Ray's series from each of {sorted(RAY_NODES)} for {RAY_QUERY}", every_ray_node_scraped, 120)
    print(f"e2e: PromQL {RAY_QUERY} -> {counts}")
    version = wait_for(f"Ray's dashboard to answer /api/version on 127.0.0.1:{cluster.dashboard_port}", lambda: dashboard_version(cluster.dashboard_port), 60)
    print(f"e2e: Ray's dashboard on 127.0.0.1:{cluster.dashboard_port}: {version}")

    cluster.down()
    assert cluster.leftovers() == {"containers": [], "networks": [], "volumes": []}
    print(f"e2e: up, job, scrape and down in {time.monotonic() - started:.0f} s")
