"""Seconds per cooperative round for 2, 4 and 8 KBs, on one Ray node and on two, through the coordinator's job path.

Run from the repository root, inside a loopback-only network namespace (Ray advertises the
machine's interface address otherwise)::

    scripts/loopback-only .venv/bin/python bench/scaling.py --data ../shared/data/wn18rr

For every KB count the dataset is cut with :func:`kdmkb.services.split.split_dataset` (co-occurring
alignment) and the split's ``job.toml`` is submitted, with small settings, to an in-process
coordinator over its gRPC API (:func:`kdmkb.services.client.embedded_coordinator`, the path of
``kdmkb run``). The figure is the coordinator's own round timing (``JobEvent.round_seconds``:
every teacher's ``teach``, the routing of soft labels, every student's ``train``). The nodes are
two raylet processes of one ``ray.cluster_utils.Cluster`` on this machine, as in the integration
tests; a KB is placed by a Ray resource: all on the head node ("1 node"), or alternating between
the two ("2 nodes"). The two placements of a KB count run back to back, so that load from other
processes hits them alike. Round 0 is reported apart: it also pays the first calls into freshly
started actors. The machine has 2
cores, so 4 and 8 KBs share them: this measures scheduling and scaling, not speed-up.
"""

from __future__ import annotations

import _common  # noqa: F401  (sets OMP_WAIT_POLICY before torch is imported)

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from kdmkb.services.ray_runtime import WORKER_ENV

os.environ.update(WORKER_ENV)  # the raylets started below pass it on to the KB workers

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from kdmkb.services.client import embedded_coordinator, state_name  # noqa: E402
from kdmkb.services.config import load_job_file  # noqa: E402
from kdmkb.services.split import split_dataset, write_job_file  # noqa: E402

STORE = 256 * 2**20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", required=True, help="Dataset folder to split.")
    parser.add_argument("--kbs", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2], choices=(1, 2))
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps-per-round", type=int, default=10)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--negatives", type=int, default=16)
    parser.add_argument("--split-dir", help="Reuse (or write) the splits here instead of a temporary directory.")
    return parser.parse_args(argv)


def prepare_splits(args: argparse.Namespace, root: Path) -> dict[int, Path]:
    """One split per KB count, its job.toml written with the benchmark's settings."""
    jobs = {}
    for count in args.kbs:
        out = root / f"kbs{count}"
        if not (out / "job.toml").is_file():
            summary = split_dataset(Path(args.data), out, kbs=count, seed=0, align="co-occurring")
            write_job_file(
                summary,
                worker_settings={"dim": args.dim, "batch_size": args.batch_size, "negatives": args.negatives},
                job={"rounds": args.rounds, "steps_per_round": args.steps_per_round, "checkpoint_every": 0},
            )
        jobs[count] = out / "job.toml"
    return jobs


def start_cluster() -> Cluster:
    """A head node and a second node, each offering a ``kbnode:<i>`` resource to place KBs with."""
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False, "object_store_memory": STORE, "resources": {"kbnode:0": 100}},
    )
    cluster.add_node(num_cpus=1, resources={"kbnode:1": 100}, object_store_memory=STORE)
    cluster.wait_for_nodes()
    return cluster


def run_job(job_path: Path, nodes: int, address: str) -> dict:
    job_file = load_job_file(job_path)
    for index, kb in enumerate(job_file.kb):
        kb.resource = f"kbnode:{index % nodes}"
    rounds: list[float] = []
    with embedded_coordinator(tempfile.mkdtemp(prefix="kdmkb-bench-scaling-"), ray_address=address) as client:
        started = time.perf_counter()
        job = client.submit(job_file)
        registered = time.perf_counter() - started

        def on_event(event) -> None:
            if event.kind == "round":
                rounds.append(event.round_seconds)

        started = time.perf_counter()
        job = client.run(job.job_id, on_event)
        total = time.perf_counter() - started
    received = sum(p.soft_label_bytes_received for p in job.progress.values())
    return {"state": state_name(job.state), "error": job.error, "rounds": rounds, "registered": registered, "total": total, "received": received, "kbs": len(job_file.kb)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(args.split_dir) if args.split_dir else Path(tempfile.mkdtemp(prefix="kdmkb-bench-splits-"))
    started = time.perf_counter()
    jobs = prepare_splits(args, root)
    _common.header("scaling: seconds per cooperative round through the coordinator, 1 and 2 Ray nodes", threads="1 per KB worker (WorkerSettings.threads)")
    print(f"splits: {args.data} -> {', '.join(str(p.parent) for p in jobs.values())} ({time.perf_counter() - started:.1f} s)")
    print(
        f"job: cooperative, transe L1 dim {args.dim}, batch {args.batch_size}, {args.negatives} negatives, "
        f"{args.rounds} rounds x {args.steps_per_round} steps, no checkpoints; the final test ranking is outside the round timings"
    )
    print()
    sys.stdout.flush()
    results = []
    cluster = start_cluster()
    try:
        for count in args.kbs:
            for nodes in args.nodes:
                result = run_job(jobs[count], nodes, cluster.address)
                later = result["rounds"][1:] or result["rounds"]
                median = statistics.median(later)
                results.append((nodes, count, median, result))
                print(
                    f"  {nodes} node(s) {count} KBs: {result['state']} {result['error']} | round 0 {result['rounds'][0]:.2f} s, rounds 1.. median {median:.2f} s "
                    f"(min {min(later):.2f}, max {max(later):.2f}); per KB-step {median / (count * args.steps_per_round) * 1000:.1f} ms | "
                    f"registration {result['registered']:.1f} s, run incl. final test ranking {result['total']:.1f} s | "
                    f"soft labels received {result['received'] / args.rounds / 1e6:.2f} MB/round | load {os.getloadavg()[0]:.2f}"
                )
                print(f"      rounds: {' '.join(f'{s:.2f}' for s in result['rounds'])}")
                sys.stdout.flush()
    finally:
        ray.shutdown()
        cluster.shutdown()
    print()
    print("== median seconds per round (rounds 1..)")
    print(f"  {'KBs':>4} " + " ".join(f"{f'{n} node(s)':>10}" for n in args.nodes))
    for count in args.kbs:
        row = {nodes: median for nodes, kbs, median, _ in results if kbs == count}
        print(f"  {count:>4} " + " ".join(f"{row[n]:10.2f}" for n in args.nodes))
    if not args.split_dir:
        shutil.rmtree(root, ignore_errors=True)
    print(f"load average at end: {_common.load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
