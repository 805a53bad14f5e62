"""Many clients against one coordinator while a job trains: latency and errors per RPC, and what the load costs the job.

Run from the repository root under the loopback-only namespace (Ray must see only the loopback)::

    scripts/loopback-only .venv/bin/python bench/load.py --clients 10 50 200 --seconds 30

A ``kdmkb serve`` process (its own Ray) serves two nations KBs training a cooperative job of
endless rounds. The benchmark's threads are the clients, a third each calling GetJob, Predict or
WatchJob (WatchJob: the time to the stream's first event, then the stream is cancelled) again
as soon as the answer comes. Windows without clients run before and after each loaded window; the training
speed is the loaded window's rounds/s over the mean of its two neighbours' (rounds timed by
their ends on a WatchJob stream of the benchmark's own). Clients share a
process (and its GIL), so client-side time is part of each latency. ``--write`` puts the table
into docs/benchmarks.md between its ``load`` markers.
"""

from __future__ import annotations

import _common  # noqa: F401  (sets OMP_WAIT_POLICY before torch is imported)

import argparse
import collections
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from kdmkb.protos.kdmkb.coordinator.v1 import coordinator_pb2 as pb
from kdmkb.protos.kdmkb.coordinator.v1 import coordinator_pb2_grpc as pb_grpc
from kdmkb.services.datasets import dataset_dir
from kdmkb.services.split import split_dataset
from kdmkb.services.wire import to_struct

LISTENING = re.compile(r"coordinator listening on (\S+);")
RPCS = ("GetJob", "Predict", "WatchJob")
CALL_TIMEOUT = 10.0
CLIENTS_PER_CHANNEL = 10


def start_server(folder: Path) -> tuple[subprocess.Popen, str]:
    """``kdmkb serve`` on a free loopback port, its log in ``folder/serve.log``; returns the process and its address."""
    log = folder / "serve.log"
    command = [sys.executable, "-m", "kdmkb", "serve", "--address", "127.0.0.1:0", "--metrics-port", "0", "--data-dir", str(folder / "state"), "--data-root", str(folder)]
    process = subprocess.Popen(command, stderr=log.open("w"), stdout=subprocess.DEVNULL, env={**os.environ, "KDMKB_LOG_LEVEL": "WARNING"})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        match = LISTENING.search(log.read_text(errors="replace"))
        if match:
            return process, match.group(1)
        time.sleep(0.5)
    process.kill()
    raise SystemExit(f"kdmkb serve did not start; its log:\n{log.read_text(errors='replace')}")


def start_job(stub, folder: Path, steps_per_round: int) -> tuple[str, str, str]:
    """Two nations KBs and a cooperative job of endless rounds; returns the job id and a (head, relation) to predict."""
    split = split_dataset(dataset_dir("nations"), folder / "kbs", kbs=2, seed=0, names=["left", "right"])
    worker = to_struct({"dim": 32, "batch_size": 128, "negatives": 16, "learning_rate": 0.01})
    for name in ("left", "right"):
        stub.RegisterKB(pb.RegisterKBRequest(name=name, data_dir=str(split.out_dir / name), worker_type="transe", settings=worker), timeout=300)
    stem = split.out_dir / "alignments" / "left__right"
    stub.RegisterAlignment(
        pb.RegisterAlignmentRequest(kb_a="left", kb_b="right", entities_path=f"{stem}.entities.tsv", relations_path=f"{stem}.relations.tsv"), timeout=300
    )
    settings = to_struct({"rounds": 1_000_000, "steps_per_round": steps_per_round, "eval_every": 0, "checkpoint_every": 0, "seed": 0, "top_k": 8})
    job = stub.CreateJob(pb.CreateJobRequest(strategy="cooperative", kbs=["left", "right"], settings=settings), timeout=60).job
    stub.StartJob(pb.StartJobRequest(job_id=job.job_id), timeout=60)
    train = (split.out_dir / "left" / "train.tsv").read_text(encoding="utf-8").splitlines()[0].split("\t")
    return job.job_id, train[0], train[1]


class Rounds:
    """Watches the job on a stream of its own and times each round's end, so that a window's rounds/s is not rounded to whole rounds."""

    def __init__(self, stub, job_id: str) -> None:
        self.ends: list[tuple[float, int]] = []
        self.stream = stub.WatchJob(pb.WatchJobRequest(job_id=job_id))
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for event in self.stream:
                if not self.ends or event.round > self.ends[-1][1]:
                    self.ends.append((time.perf_counter(), event.round))
        except grpc.RpcError:
            pass  # cancelled at the end

    def wait_for(self, round_: int, timeout: float = 600) -> None:
        """Until round ``round_`` has ended (workers started, models configured)."""
        deadline = time.monotonic() + timeout
        while not (self.ends and self.ends[-1][1] >= round_):
            if time.monotonic() > deadline:
                raise SystemExit(f"the job did not reach round {round_} in {timeout:g} s")
            time.sleep(0.2)

    def per_second(self, seconds: float) -> float:
        """Waits ``seconds``; the rounds/s between the first and the last round that ended in that time (NaN: fewer than two)."""
        started = time.perf_counter()
        time.sleep(seconds)
        ends = [(t, r) for t, r in self.ends if t >= started]
        if len(ends) < 2:
            return float("nan")
        return (ends[-1][1] - ends[0][1]) / (ends[-1][0] - ends[0][0])


class Clients:
    """``count`` threads, a third each calling GetJob, Predict or WatchJob until stopped; latencies and error codes per RPC."""

    def __init__(self, address: str, count: int, job_id: str, head: str, relation: str) -> None:
        self.channels = [grpc.insecure_channel(address) for _ in range(-(-count // CLIENTS_PER_CHANNEL))]
        self.stop = threading.Event()
        self.latencies: dict[str, list[float]] = collections.defaultdict(list)
        self.errors: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.requests = {
            "GetJob": pb.GetJobRequest(job_id=job_id),
            "Predict": pb.PredictRequest(kb="left", head=head, relation=relation, k=10),
            "WatchJob": pb.WatchJobRequest(job_id=job_id),
        }
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(count)]

    def _call(self, stub, rpc: str) -> None:
        started = time.perf_counter()
        try:
            if rpc == "WatchJob":
                stream = stub.WatchJob(self.requests[rpc], timeout=CALL_TIMEOUT)
                next(stream)
                stream.cancel()
            else:
                getattr(stub, rpc)(self.requests[rpc], timeout=CALL_TIMEOUT)
        except grpc.RpcError as error:
            self.errors[rpc][error.code().name] += 1
            return
        self.latencies[rpc].append(time.perf_counter() - started)

    def _run(self, index: int) -> None:
        stub = pb_grpc.CoordinatorStub(self.channels[index // CLIENTS_PER_CHANNEL])
        rpc = RPCS[index % len(RPCS)]  # one RPC per client: a slow RPC does not hold back the others' calls
        while not self.stop.is_set():
            self._call(stub, rpc)

    def __enter__(self) -> Clients:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=2 * CALL_TIMEOUT)
        for channel in self.channels:
            channel.close()


def table(rows: list[dict]) -> str:
    lines = [
        "| clients | RPC | calls/s | p50 ms | p99 ms | errors | job rounds/s under load | without load | training speed |",
        "|---:|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for row in rows:
        for rpc in RPCS:
            latencies = np.array(row["latencies"].get(rpc, [np.nan])) * 1000
            errors = ", ".join(f"{code} {n}" for code, n in sorted(row["errors"].get(rpc, {}).items())) or "0"
            lines.append(
                f"| {row['clients']} | {rpc} | {len(row['latencies'].get(rpc, [])) / row['seconds']:.1f} | {np.percentile(latencies, 50):.1f} | "
                f"{np.percentile(latencies, 99):.1f} | {errors} | {row['loaded']:.2f} | {row['unloaded']:.2f} | {row['loaded'] / row['unloaded']:.0%} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 50, 200])
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each window, with or without clients")
    parser.add_argument("--steps-per-round", type=int, default=5)
    parser.add_argument("--write", type=Path, help="a Markdown file to write the table into, between <!-- load:begin/end --> markers")
    args = parser.parse_args()
    _common.header("load: GetJob, Predict and WatchJob clients while a cooperative job trains")

    with tempfile.TemporaryDirectory(prefix="kdmkb-load-") as folder:
        process, address = start_server(Path(folder))
        try:
            channel = grpc.insecure_channel(address)
            stub = pb_grpc.CoordinatorStub(channel)
            job_id, head, relation = start_job(stub, Path(folder), args.steps_per_round)
            print(f"server {address}, job {job_id}, Predict({head!r}, {relation!r}, k=10)")
            rounds = Rounds(stub, job_id)
            rounds.wait_for(1)
            rounds.per_second(args.seconds / 2)  # warm-up: the first rounds build workers' caches
            unloaded = [rounds.per_second(args.seconds)]
            rows = []
            for count in args.clients:
                with Clients(address, count, job_id, head, relation) as clients:
                    loaded = rounds.per_second(args.seconds)
                unloaded.append(rounds.per_second(args.seconds))
                row = {"clients": count, "seconds": args.seconds, "latencies": clients.latencies, "errors": clients.errors, "loaded": loaded}
                rows.append({**row, "unloaded": (unloaded[-2] + unloaded[-1]) / 2})
                print(f"{count} clients: {sum(map(len, clients.latencies.values()))} calls, {loaded:.2f} rounds/s (without: {rows[-1]['unloaded']:.2f})", flush=True)
            stub.StopJob(pb.StopJobRequest(job_id=job_id), timeout=60)
            rounds.stream.cancel()
            channel.close()
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
    result = table(rows)
    print(result)
    print(f"load average at end: {_common.load_average()}")
    if args.write:
        command = f"scripts/loopback-only .venv/bin/python bench/load.py --clients {' '.join(map(str, args.clients))} --seconds {args.seconds:g} --steps-per-round {args.steps_per_round}"
        _common.write_between_markers(args.write, "load", f"```\n{command}\n```\n\n{result}")


if __name__ == "__main__":
    main()
