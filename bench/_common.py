"""Helpers shared by the benchmark scripts: environment set-up and the hardware/command header.

Import this module before torch or faiss: it sets ``OMP_WAIT_POLICY=PASSIVE`` when unset, because
OpenMP threads that busy-wait between parallel regions slow both torch and faiss down on a small,
shared machine (measured on this project's 2-core machine).
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def with_worker_environment() -> None:
    """Runs this script again under the KB workers' environment (``services/ray_runtime.WORKER_ENV``) unless it has it.

    For runners that train or rank in their own process rather than in a Ray worker: glibc reads
    ``MALLOC_*`` only when a process starts, and without them large temporaries are page-faulted in
    again at every step (docs/benchmarks.md). Call it first thing under ``__main__``, never on import.
    """
    from kdmkb.services.ray_runtime import WORKER_ENV

    missing = {key: value for key, value in WORKER_ENV.items() if key not in os.environ}
    if missing:
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, **missing})


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min)"


def header(title: str, threads: str | None = None) -> None:
    """Prints the exact command line, the date and the hardware; call after torch threads are set."""
    import faiss
    import torch

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"# {title}")
    print(f"command: {shlex.join([sys.executable.rsplit('/', 1)[-1], *sys.argv])}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print(
        f"hardware: nproc={affinity} (os.cpu_count()={os.cpu_count()}), cpu={cpu_model()!r}, "
        f"torch threads={threads or torch.get_num_threads()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}"
    )
    tuning = {k: v for k, v in sorted(os.environ.items()) if k.startswith(("MALLOC_", "GLIBC_TUNABLES", "OMP_", "MKL_", "OPENBLAS_"))}
    print(f"environment (allocator/threading variables): {' '.join(f'{k}={v}' for k, v in tuning.items()) or 'none'}")
    print(f"software: python {platform.python_version()}, torch {torch.__version__}, faiss {faiss.__version__}")
    print(f"load average at start: {load_average()}")
    sys.stdout.flush()


def write_between_markers(path, name: str, body: str) -> None:
    """Replaces what lies between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` in a Markdown file,
    so that generated tables live inside hand-written documents."""
    path = Path(path)
    doc = path.read_text(encoding="utf-8")
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if begin not in doc or end not in doc:
        raise SystemExit(f"{path}: no {begin} ... {end} markers to write the tables between")
    head, rest = doc.split(begin, 1)
    path.write_text(f"{head}{begin}\n{body}\n{end}{rest.split(end, 1)[1]}", encoding="utf-8")
