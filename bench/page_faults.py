"""Where a training step's time goes between user and kernel: user/system CPU and minor page faults per step.

Run from the repository root, once as is and once with glibc's allocator told to keep freed memory::

    python bench/page_faults.py --data ../shared/data/wn18rr
    MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 python bench/page_faults.py --data ../shared/data/wn18rr

One KB of a 2-KB split trains alone (``KBWorker.train`` without soft labels); ``getrusage``
before and after ``--steps`` steps gives user and system CPU time and minor page faults. glibc
reads the ``MALLOC_*`` variables when the process starts, so they must be set on the command
line (or in the environment of the process that starts the worker), not from Python.
"""

from __future__ import annotations

import _common  # noqa: F401  (sets OMP_WAIT_POLICY before torch is imported)

import argparse
import resource
import sys
import time

from kdmkb.kb_worker.worker import KBWorker
from step_cost import prepare_split


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", required=True, help="Dataset folder to split into 2 KBs.")
    parser.add_argument("--split-dir", help="Reuse this split if it exists, otherwise write the split there (default: a temporary directory).")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--model", default="transe")
    parser.add_argument("--dim", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--negatives", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup-steps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args(argv)

    split_dir, split_note = prepare_split(args)
    settings = dict(dim=args.dim, batch_size=args.batch_size, negatives=args.negatives, threads=args.threads)
    worker = KBWorker("kb1", split_dir / "kb1", args.model, settings)
    worker.configure("bench-page-faults", 0)
    _common.header("page_faults: user/system CPU and minor page faults per training step (one KB alone)")
    print(f"split: {split_note}")
    print(f"worker: {args.model} {settings}")
    worker.train(0, args.warmup_steps)
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    worker.train(1, args.steps)
    after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - started
    per_step = 1000.0 / args.steps
    print(
        f"{args.steps} steps after {args.warmup_steps} warm-up steps: wall {wall * per_step:.1f} ms/step, "
        f"user {(after.ru_utime - before.ru_utime) * per_step:.1f} ms/step, system {(after.ru_stime - before.ru_stime) * per_step:.1f} ms/step, "
        f"minor page faults {(after.ru_minflt - before.ru_minflt) / args.steps:,.0f}/step, max RSS {after.ru_maxrss / 1024:.0f} MiB"
    )
    print(f"load average at end: {_common.load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
