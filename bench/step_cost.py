"""Seconds per training step of one KB alone vs the same KB in a cooperative 2-KB exchange.

Run from the repository root::

    python bench/step_cost.py --data ../shared/data/wn18rr --refresh-epochs 2

The dataset is cut into two KBs with :func:`kdmkb.services.split.split_dataset` (co-occurring
alignment). Three plain :class:`kdmkb.kb_worker.worker.KBWorker` objects live in this one process:

* ``independent``: the measured KB (``--kb``, default kb1) training alone (``train`` without
  soft labels);
* ``cooperative``: the same KB, same seed, and its peer, exchanging soft labels every round:
  both ``teach`` the other their round's batches, then both ``train`` with the other's lesson.

Only the measured KB's own calls are timed in the cooperative rounds (its ``teach`` and its
``train`` with the peer's soft labels, which includes decoding them); the peer's calls run
between them untimed, as they would run in the peer's own process. Rounds of the two modes are
interleaved (A, B, A, B, ...) so that load from other processes on a shared machine hits both
alike, and per-round figures are summarised by their median. Wall time is the reported figure;
the process's CPU time (``time.process_time``) is printed beside it because, with one torch
thread, it is not inflated when other processes take the CPU away (cache and memory-bandwidth
contention still show in both).

Ray is not used: actor-call latency, object-store transfer of the payloads and the parallelism
of the KBs' processes are excluded. They are a per-round cost (one teach and one train call per
KB per round, whatever the number of steps) and are measured per round elsewhere (the
coordinator's round timings), so this script isolates the per-step compute.

The teacher's top-k candidate search is cached per training triple (``DistillSettings
.candidate_refresh_epochs``): a triple's top-k is searched again only once its last search is
older than that many epochs, so the first epoch always searches every query. The script runs
``--warmup-epochs`` epochs of interleaved rounds first, reports them as the first-epoch cost,
then measures ``--measure-steps`` steps after them, and reports how many of the teacher's entity
queries were actually searched in each phase; last, the same figures over the whole run, first
epoch included, as a job pays them.
"""

from __future__ import annotations

import _common  # noqa: F401  (sets OMP_WAIT_POLICY before torch and faiss are imported)

import argparse
import atexit
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from kdmkb.coordinator.alignment import build_pair, merge
from kdmkb.kb_worker import exchange
from kdmkb.kb_worker.worker import KBWorker
from kdmkb.kb_worker.worker_types.base import QueryKind
from kdmkb.services.split import split_dataset

ENTITY_KINDS = (QueryKind.TAIL, QueryKind.HEAD)
FULL_BYTES_PER_CANDIDATE = 4  # float32 score; a full distribution needs no ids (a position in the aligned list is the id)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", required=True, help="Dataset folder (train/valid/test) to split into 2 KBs.")
    parser.add_argument("--split-dir", help="Reuse this split if it exists, otherwise write the split there (default: a temporary directory).")
    parser.add_argument("--split-seed", type=int, default=0, help="Seed of split_dataset.")
    parser.add_argument("--seed", type=int, default=0, help="Job seed passed to KBWorker.configure.")
    parser.add_argument("--kb", default="kb1", choices=("kb1", "kb2"), help="The measured KB; the other one is its peer.")
    parser.add_argument("--model", default="transe", help="Worker type.")
    parser.add_argument("--norm", type=int, default=1, choices=(1, 2), help="TransE distance.")
    parser.add_argument("--dim", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--negatives", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (one process holds all three workers).")
    parser.add_argument("--steps-per-round", type=int, default=20)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--refresh-epochs", type=float, default=2.0, help="DistillSettings.candidate_refresh_epochs.")
    parser.add_argument("--warmup-epochs", type=float, default=1.0, help="Epochs of interleaved rounds before measuring (reported as the first-epoch cost).")
    parser.add_argument("--measure-steps", type=int, default=80, help="Steps measured per mode after warm-up (rounded up to whole rounds).")
    parser.add_argument("--rounds-detail", action="store_true", help="Print every round's figures.")
    return parser.parse_args(argv)


def prepare_split(args: argparse.Namespace) -> tuple[Path, str]:
    if args.split_dir and (Path(args.split_dir) / "kb1").is_dir():
        return Path(args.split_dir), f"reused {args.split_dir}"
    if args.split_dir:
        out = Path(args.split_dir)
    else:
        temporary = tempfile.mkdtemp(prefix="kdmkb-bench-split-")
        atexit.register(shutil.rmtree, temporary, ignore_errors=True)
        out = Path(temporary) / "split"
    started = time.perf_counter()
    summary = split_dataset(Path(args.data), out, kbs=2, seed=args.split_seed, align="co-occurring")
    return out, f"split_dataset({args.data}, kbs=2, seed={args.split_seed}, align=co-occurring) -> {summary.out_dir} in {time.perf_counter() - started:.1f} s"


class SearchCounter:
    """Wraps a worker type's ``top_candidates`` to count the queries searched and the time spent."""

    def __init__(self, model) -> None:
        self.queries = 0
        self.seconds = 0.0
        self._inner = model.top_candidates
        model.top_candidates = self  # instance attribute shadows the method

    def __call__(self, kind, queries, pool, k):
        started = time.perf_counter()
        result = self._inner(kind, queries, pool, k)
        self.seconds += time.perf_counter() - started
        self.queries += int(queries.shape[0])
        return result


def lesson_rows(messages: list[bytes]) -> tuple[int, int]:
    """(entity queries, relation queries) in a lesson's serialised messages."""
    entity = relation = 0
    for block in (block for payload in messages for block in exchange.decode(payload).blocks):
        if block.kind in ENTITY_KINDS:
            entity += block.queries.shape[0]
        else:
            relation += block.queries.shape[0]
    return entity, relation


def round_sizes(steps: int, per_round: int) -> list[int]:
    return [per_round] * (steps // per_round) + ([steps % per_round] if steps % per_round else [])


def timed(function, *args):
    """``(result, wall seconds, CPU seconds of this process)`` of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def ms(seconds: float, steps: int) -> float:
    return 1000.0 * seconds / steps


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    split_dir, split_note = prepare_split(args)
    name, peer = args.kb, ("kb2" if args.kb == "kb1" else "kb1")
    settings = dict(dim=args.dim, batch_size=args.batch_size, negatives=args.negatives, learning_rate=args.learning_rate, threads=args.threads, norm=args.norm)
    distill = dict(top_k=args.top_k, candidate_refresh_epochs=args.refresh_epochs)

    independent = KBWorker(name, split_dir / name, args.model, settings)
    coop = {kb: KBWorker(kb, split_dir / kb, args.model, settings) for kb in ("kb1", "kb2")}
    alignments = split_dir / "alignments"
    pair = build_pair(
        "kb1", "kb2", coop["kb1"].vocabulary(), coop["kb2"].vocabulary(), str(alignments / "kb1__kb2.entities.tsv"), str(alignments / "kb1__kb2.relations.tsv")
    )
    views = merge(["kb1", "kb2"], [pair])
    independent.configure("bench-independent", args.seed, distill, views[name])
    for kb, worker in coop.items():
        worker.configure("bench-cooperative", args.seed, distill, views[kb])
    student, teacher = coop[name], coop[peer]
    search = SearchCounter(student.model)
    aligned_entities = {kb: len(views[kb].peers[other][0]) for kb, other in ((name, peer), (peer, name))}
    aligned_relations = {kb: len(views[kb].peers[other][1]) for kb, other in ((name, peer), (peer, name))}

    _common.header("step_cost: seconds per training step, independent vs cooperative (2 KBs)")
    print(f"split: {split_note}")
    n_train = len(student.kb.train)
    steps_per_epoch = n_train // min(args.batch_size, n_train)
    print(
        f"KBs: measured {name} ({n_train} train triples, {steps_per_epoch} steps/epoch), peer {peer} ({len(teacher.kb.train)} train triples); "
        f"aligned entities {aligned_entities[name]} of {len(student.kb.entities)}, aligned relations {aligned_relations[name]}"
    )
    print(f"worker: {args.model} {settings}; distill: {distill}")
    print(
        "scope: in-process KBWorker objects, no Ray. Excluded: actor-call latency, object-store transfer "
        "of payloads and the KBs' parallel processes; those are per-round costs (one teach + one train call "
        "per KB per round) measured per round elsewhere, so they are left out of this per-step figure."
    )
    sys.stdout.flush()

    warmup_steps = int(round(args.warmup_epochs * steps_per_epoch))
    measure_sizes = [args.steps_per_round] * max(1, math.ceil(args.measure_steps / args.steps_per_round))
    first_epoch = min(warmup_steps, steps_per_epoch)
    phases = [("first epoch" if first_epoch == steps_per_epoch else f"warm-up ({args.warmup_epochs:g} epochs)", round_sizes(first_epoch, args.steps_per_round))]
    if warmup_steps > first_epoch:
        phases.append(("rest of warm-up", round_sizes(warmup_steps - first_epoch, args.steps_per_round)))
    phases.append(("measured", measure_sizes))

    records: dict[str, list[dict]] = {}
    round_ = 0
    for phase, sizes in phases:
        records[phase] = []
        for steps in sizes:
            first_step = student.step
            # A: the KB alone.
            _, alone, alone_cpu = timed(independent.train, round_, steps)
            # B: the KB in the exchange; only its own calls are timed.
            queries_before, search_before = search.queries, search.seconds
            (_, to_peer), teach, teach_cpu = timed(student.teach, round_, steps, [peer])
            _, from_peer = teacher.teach(round_, steps, [name])
            _, train, train_cpu = timed(student.train, round_, steps, from_peer)
            teacher.train(round_, steps, to_peer)
            entity_q, relation_q = lesson_rows(to_peer)
            peer_entity_q, peer_relation_q = lesson_rows(from_peer)
            record = dict(
                round=round_,
                steps=steps,
                first_step=first_step,
                alone=alone,
                teach=teach,
                train=train,
                alone_cpu=alone_cpu,
                teach_cpu=teach_cpu,
                train_cpu=train_cpu,
                searched=search.queries - queries_before,
                search_seconds=search.seconds - search_before,
                bytes={name: sum(map(len, to_peer)), peer: sum(map(len, from_peer))},
                queries={name: (entity_q, relation_q), peer: (peer_entity_q, peer_relation_q)},
                load=os.getloadavg()[0],
            )
            records[phase].append(record)
            if args.rounds_detail:
                print(
                    f"  {phase:>12} round {round_:3d} steps {first_step:4d}+{steps:<3d} wall ms/step: alone {ms(alone, steps):6.1f} | "
                    f"coop teach {ms(teach, steps):6.1f} train+KD {ms(train, steps):6.1f} || cpu ms/step: alone {ms(alone_cpu, steps):6.1f} | "
                    f"teach {ms(teach_cpu, steps):6.1f} train+KD {ms(train_cpu, steps):6.1f} | searched {record['searched']}/{entity_q} | load {record['load']:.2f}"
                )
                sys.stdout.flush()
            round_ += 1

    print()
    for phase, rounds in records.items():
        report(phase, rounds, name, peer, aligned_entities, aligned_relations, steps_per_epoch)
    if len(records) > 1:  # a job pays for its first epoch too: the ratio over every step run
        report("whole run", [r for rounds in records.values() for r in rounds], name, peer, aligned_entities, aligned_relations, steps_per_epoch)
    print(f"load average at end: {_common.load_average()}")
    return 0


def report(phase: str, rounds: list[dict], name: str, peer: str, aligned_entities: dict, aligned_relations: dict, steps_per_epoch: int) -> None:
    steps = sum(r["steps"] for r in rounds)
    full_rounds = [r for r in rounds if r["steps"] == max(x["steps"] for x in rounds)]

    def median(key) -> float:
        return statistics.median(ms(key(r), r["steps"]) for r in full_rounds)

    def mean(key) -> float:
        return ms(sum(key(r) for r in rounds), steps)

    first, last = rounds[0]["first_step"], rounds[-1]["first_step"] + rounds[-1]["steps"]
    print(
        f"== {phase}: steps {first}..{last - 1} of the measured KB (epochs {first / steps_per_epoch:.2f}-{last / steps_per_epoch:.2f}), "
        f"{len(rounds)} rounds per mode, medians over the {len(full_rounds)} rounds of {full_rounds[0]['steps']} steps"
    )
    alone_med = median(lambda r: r["alone"])
    teach_med, train_med = median(lambda r: r["teach"]), median(lambda r: r["train"])
    coop_med = median(lambda r: r["teach"] + r["train"])
    pair_ratio = statistics.median((r["teach"] + r["train"]) / r["alone"] for r in full_rounds)
    print(f"  independent          {alone_med:8.1f} ms/step (median per round; mean over the phase {mean(lambda r: r['alone']):.1f})")
    print(
        f"  cooperative          {coop_med:8.1f} ms/step = teach {teach_med:.1f} + train+KD {train_med:.1f} (medians per round; "
        f"phase means: {mean(lambda r: r['teach'] + r['train']):.1f} = {mean(lambda r: r['teach']):.1f} + {mean(lambda r: r['train']):.1f})"
    )
    print(f"  ratio coop/indep     {coop_med / alone_med:8.2f} (ratio of medians; median of per-round A/B ratios {pair_ratio:.2f})")
    alone_cpu = median(lambda r: r["alone_cpu"])
    teach_cpu, train_cpu = median(lambda r: r["teach_cpu"]), median(lambda r: r["train_cpu"])
    coop_cpu = median(lambda r: r["teach_cpu"] + r["train_cpu"])
    print(
        f"  CPU time (process_time, insensitive to time-slicing by other processes): independent {alone_cpu:.1f} ms/step, "
        f"cooperative {coop_cpu:.1f} = teach {teach_cpu:.1f} + train+KD {train_cpu:.1f} ms/step, ratio {coop_cpu / alone_cpu:.2f} (medians per round)"
    )
    entity_queries = sum(r["queries"][name][0] for r in rounds)
    searched = sum(r["searched"] for r in rounds)
    print(
        f"  top-k search         {searched} of {entity_queries} entity queries searched ({searched / max(1, entity_queries):.1%}), "
        f"{mean(lambda r: r['search_seconds']):.1f} ms/step of the teach time (phase mean)"
    )
    for sender, receiver in ((name, peer), (peer, name)):
        sent = sum(r["bytes"][sender] for r in rounds) / steps
        ent_q = sum(r["queries"][sender][0] for r in rounds) / steps
        rel_q = sum(r["queries"][sender][1] for r in rounds) / steps
        full = (ent_q * aligned_entities[sender] + rel_q * aligned_relations[sender]) * FULL_BYTES_PER_CANDIDATE
        print(
            f"  soft labels {sender}->{receiver}: {sent:,.0f} bytes/step ({ent_q:.1f} entity + {rel_q:.1f} relation queries/step); "
            f"full distributions = ({ent_q:.1f} x {aligned_entities[sender]} aligned entities + {rel_q:.1f} x {aligned_relations[sender]} aligned relations) "
            f"x {FULL_BYTES_PER_CANDIDATE} bytes = {full:,.0f} bytes/step; fraction {sent / full:.4%}"
        )
    loads = [r["load"] for r in rounds]
    print(f"  1-min load average during the phase: {min(loads):.2f}..{max(loads):.2f}")
    print()


if __name__ == "__main__":
    sys.exit(main())
