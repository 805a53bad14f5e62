"""Tables 2, 3 and 4 of Demir, Lienen, Ngonga Ngomo (Kronecker-decomposed DistMult) re-run with kdmkb.

Run from the repository root::

    python bench/kronecker_tables.py run --table 2 --data-root ../shared/data --datasets umls --json OUT.json
    python bench/kronecker_tables.py render OUT.json [MORE.json ...] --doc docs/results-kronecker.md

``run`` trains ``reciprocal-distmult`` (the paper's DistMult baseline, trained exactly like the
Kronecker models), ``kd-rel-distmult`` (eq. 8) and ``kd-distmult`` (eq. 9) with plain in-process
:class:`kdmkb.kb_worker.worker.KBWorker` objects (no Ray), prints per dataset and model test and train
MRR/H@1/H@3/H@10, the number of trainable parameters and the wall time next to the paper's
figures, and writes them as JSON. ``render`` turns JSON files into the Markdown tables between the
``<!-- tables:begin -->`` and ``<!-- tables:end -->`` markers of the results document.

* ``--table 2``: plain training (paper Table 2).
* ``--table 3``: model calibration (Table 3): no calibration, label smoothing with alpha .1 and .2,
  label relaxation with alpha .1 and .2. KD-Rel-DistMult on KINSHIP uses d = 289 there, the size
  behind Table 3's 32,946 parameters (Table 2 lists 45,420).
* ``--table 4``: 10% noisy training triples (Table 4): ``round(0.1 |train|)`` random triples
  (uniform head, relation and tail, none of them a true train/valid/test triple, drawn with the
  run's seed) are added to the training set. They also enter the ranking filter, as they would for
  a KB that holds them.

Paper set-up (section 5): 1vsAll with reciprocal triples, binary cross-entropy, Adam, lr 0.01,
batch size 1024, 1000 epochs, batch-norm, no dropout or other regularisation, seed 1. The
embedding sizes are those that reproduce the tables' |Theta| (see ``paper_dim``). kdmkb's
reciprocal workers train every triple as its tail query and its reciprocal, so a batch of
``--batch-size`` triples is ``2 * --batch-size`` queries: the default 512 triples is the paper's
batch of 1024 (reciprocal-augmented) data points. An epoch is ``len(train) // batch_size`` steps
(KBWorker drops the last partial batch of each shuffled pass).

Ranking: kb_worker's filtered ranking (train+valid+test filtered, both head and tail queries,
ties counted as the mean of the optimistic and pessimistic rank).
"""

from __future__ import annotations

import _common  # first: sets OMP_WAIT_POLICY before torch and faiss are imported

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from kdmkb.kb_worker.data import load_kb
from kdmkb.kb_worker.worker import KBWorker

MODELS = ("reciprocal-distmult", "kd-rel-distmult", "kd-distmult")
METRICS = ("mrr", "hits_at_1", "hits_at_3", "hits_at_10")
CALIBRATIONS = {"none": {}, "LS .1": {"label_smoothing": 0.1}, "LS .2": {"label_smoothing": 0.2}, "LR .1": {"label_relaxation": 0.1}, "LR .2": {"label_relaxation": 0.2}}
NOISE = 0.1

# The paper's figures: (table, dataset, model, variant) -> (|Theta|, test MRR, H@1, H@3, H@10[, train MRR, H@1, H@3, H@10]).
# Table 4 sweeps d; its rows with the |Theta| of Table 2 are the ones compared here.
PAPER = {
    (2, "umls", "reciprocal-distmult", "none"): (67915, 0.517, 0.441, 0.536, 0.659, 0.995, 0.992, 1.00, 1.00),
    (2, "umls", "kd-rel-distmult", "none"): (42619, 0.531, 0.432, 0.584, 0.684, 0.996, 0.993, 0.999, 1.00),
    (2, "umls", "kd-distmult", "none"): (3728, 0.541, 0.447, 0.598, 0.684, 0.814, 0.704, 0.904, 0.989),
    (2, "kinship", "reciprocal-distmult", "none"): (46818, 0.568, 0.500, 0.593, 0.693, 0.919, 0.876, 0.952, 0.991),
    (2, "kinship", "kd-rel-distmult", "none"): (45420, 0.562, 0.493, 0.588, 0.694, 0.914, 0.867, 0.953, 0.992),
    (2, "kinship", "kd-distmult", "none"): (3200, 0.599, 0.534, 0.631, 0.709, 0.705, 0.572, 0.804, 0.950),
    (3, "umls", "reciprocal-distmult", "none"): (67915, 0.517, 0.441, 0.536, 0.658, 0.995, 0.992, 1.00, 1.00),
    (3, "umls", "reciprocal-distmult", "LS .1"): (67915, 0.568, 0.499, 0.602, 0.707, 0.996, 0.993, 1.00, 1.00),
    (3, "umls", "reciprocal-distmult", "LS .2"): (67915, 0.548, 0.475, 0.582, 0.690, 0.995, 0.992, 0.999, 1.00),
    (3, "umls", "reciprocal-distmult", "LR .1"): (67915, 0.552, 0.436, 0.630, 0.723, 0.995, 0.992, 1.00, 1.00),
    (3, "umls", "reciprocal-distmult", "LR .2"): (67915, 0.579, 0.487, 0.648, 0.725, 0.995, 0.992, 1.00, 1.00),
    (3, "umls", "kd-rel-distmult", "none"): (42619, 0.531, 0.432, 0.584, 0.684, 0.996, 0.993, 0.999, 1.00),
    (3, "umls", "kd-rel-distmult", "LS .1"): (42619, 0.565, 0.493, 0.611, 0.704, 0.996, 0.992, 0.999, 1.00),
    (3, "umls", "kd-rel-distmult", "LS .2"): (42619, 0.592, 0.531, 0.617, 0.704, 0.994, 0.990, 0.999, 1.00),
    (3, "umls", "kd-rel-distmult", "LR .1"): (42619, 0.543, 0.444, 0.602, 0.692, 0.996, 0.993, 0.999, 1.00),
    (3, "umls", "kd-rel-distmult", "LR .2"): (42619, 0.562, 0.476, 0.600, 0.718, 0.993, 0.999, 1.00, 1.00),
    (3, "umls", "kd-distmult", "none"): (3728, 0.541, 0.447, 0.598, 0.684, 0.814, 0.704, 0.904, 0.989),
    (3, "umls", "kd-distmult", "LS .1"): (3728, 0.592, 0.511, 0.627, 0.751, 0.796, 0.677, 0.897, 0.984),
    (3, "umls", "kd-distmult", "LS .2"): (3728, 0.572, 0.475, 0.623, 0.754, 0.781, 0.655, 0.888, 0.980),
    (3, "kinship", "reciprocal-distmult", "none"): (46818, 0.568, 0.499, 0.593, 0.693, 0.919, 0.876, 0.952, 0.991),
    (3, "kinship", "reciprocal-distmult", "LS .1"): (46818, 0.515, 0.417, 0.563, 0.685, 0.918, 0.845, 0.954, 0.992),
    (3, "kinship", "reciprocal-distmult", "LS .2"): (46818, 0.502, 0.398, 0.555, 0.667, 0.916, 0.871, 0.952, 0.992),
    (3, "kinship", "reciprocal-distmult", "LR .1"): (46818, 0.567, 0.499, 0.592, 0.694, 0.919, 0.875, 0.952, 0.992),
    (3, "kinship", "reciprocal-distmult", "LR .2"): (46818, 0.567, 0.499, 0.592, 0.695, 0.917, 0.873, 0.952, 0.992),
    (3, "kinship", "kd-rel-distmult", "none"): (32946, 0.556, 0.487, 0.580, 0.689, 0.913, 0.865, 0.951, 0.992),
    (3, "kinship", "kd-rel-distmult", "LS .1"): (32946, 0.500, 0.394, 0.555, 0.677, 0.913, 0.866, 0.951, 0.991),
    (3, "kinship", "kd-rel-distmult", "LS .2"): (32946, 0.504, 0.403, 0.556, 0.671, 0.907, 0.855, 0.949, 0.991),
    (3, "kinship", "kd-rel-distmult", "LR .1"): (32946, 0.555, 0.486, 0.577, 0.692, 0.912, 0.864, 0.952, 0.992),
    (3, "kinship", "kd-rel-distmult", "LR .2"): (32946, 0.555, 0.487, 0.576, 0.689, 0.912, 0.863, 0.952, 0.992),
    (3, "kinship", "kd-distmult", "none"): (3200, 0.599, 0.534, 0.631, 0.709, 0.665, 0.519, 0.774, 0.936),
    (3, "kinship", "kd-distmult", "LS .1"): (3200, 0.519, 0.382, 0.621, 0.705, 0.640, 0.491, 0.745, 0.928),
    (3, "kinship", "kd-distmult", "LS .2"): (3200, 0.486, 0.326, 0.605, 0.704, 0.629, 0.476, 0.730, 0.930),
    (4, "umls", "reciprocal-distmult", "noise 10%"): (67915, 0.485, 0.396, 0.497, 0.699),
    (4, "umls", "kd-rel-distmult", "noise 10%"): (42619, 0.567, 0.493, 0.607, 0.693),
    (4, "umls", "kd-distmult", "noise 10%"): (3728, 0.452, 0.329, 0.529, 0.626),
    (4, "kinship", "reciprocal-distmult", "noise 10%"): (46818, 0.517, 0.443, 0.534, 0.679),
    (4, "kinship", "kd-rel-distmult", "noise 10%"): (45420, 0.514, 0.442, 0.531, 0.666),
    (4, "kinship", "kd-distmult", "noise 10%"): (3200, 0.586, 0.521, 0.612, 0.612),
}


def paper_dim(table: int, dataset: str, model: str) -> int:
    """Embedding size d inferred from the paper's |Theta| (it does not list the chosen d).

    With |E| entities and 2|R| (reciprocal) relations: DistMult |Theta| - (|E| + 2|R|) d ~= 8 d for
    d = 289 on both datasets; KD-Rel-DistMult |Theta| - (|E| d + 2|R| sqrt(d)) ~= 7 d for d = 289 (UMLS;
    KINSHIP in Table 3) and 400 (KINSHIP in Tables 2 and 4); KD-DistMult |Theta| - (|E| + 2|R|) sqrt(d)
    = 6 sqrt(d) for d = 256 (UMLS) and 400 (KINSHIP). The extra 6-8 per dimension are the paper
    framework's normalisation layers; kdmkb has one batch-norm of the query (2 per query dimension).
    """
    if model == "kd-distmult":
        return 256 if dataset == "umls" else 400
    if model == "kd-rel-distmult" and dataset == "kinship" and table != 3:
        return 400
    return 289


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="Train and evaluate one table's rows.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    run.add_argument("--table", type=int, choices=(2, 3, 4), default=2)
    run.add_argument("--data-root", default="../shared/data", help="Folder holding umls/ and kinship/ (train/valid/test).")
    run.add_argument("--datasets", nargs="+", default=["umls", "kinship"], choices=("umls", "kinship"))
    run.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    run.add_argument("--variants", nargs="+", help="Table 3 only: a subset of the calibrations (default: all).", choices=tuple(CALIBRATIONS))
    run.add_argument("--epochs", type=int, default=1000, help="The paper's 1000.")
    run.add_argument("--batch-size", type=int, default=512, help="Triples per step (x2 queries with reciprocals; 512 = the paper's 1024).")
    run.add_argument("--learning-rate", type=float, default=0.01)
    run.add_argument("--regime", default="1vsAll", choices=("1vsAll", "KvsAll"))
    run.add_argument("--seed", type=int, default=1)
    run.add_argument("--threads", type=int, default=1)
    run.add_argument("--log-every", type=int, default=100, help="Print the mean loss every this many epochs.")
    run.add_argument("--json", type=Path, required=True, help="Where to write the rows.")
    render = commands.add_parser("render", help="Write the Markdown tables of JSON files into the results document.")
    render.add_argument("inputs", nargs="+", type=Path)
    render.add_argument("--doc", type=Path, default=Path("docs/results-kronecker.md"))
    return parser.parse_args(argv)


def noisy_copy(folder: Path, fraction: float, seed: int, out: Path) -> int:
    """A copy of a dataset folder whose train.tsv has ``round(fraction |train|)`` random false triples added."""
    kb = load_kb(folder)
    true = {tuple(row) for split in (kb.train, kb.valid, kb.test) for row in split.tolist()}
    wanted = round(fraction * len(kb.train))
    generator = np.random.default_rng(seed)
    noise: set[tuple[int, int, int]] = set()
    while len(noise) < wanted:
        row = (int(generator.integers(len(kb.entities))), int(generator.integers(len(kb.relations))), int(generator.integers(len(kb.entities))))
        if row not in true:
            noise.add(row)
    out.mkdir(parents=True)
    for name in ("valid.tsv", "test.tsv"):
        shutil.copy(folder / name, out / name)
    lines = (folder / "train.tsv").read_text(encoding="utf-8").rstrip("\n").split("\n")
    entities, relations = kb.entities.names, kb.relations.names
    lines += [f"{entities[h]}\t{relations[r]}\t{entities[t]}" for h, r, t in sorted(noise)]
    (out / "train.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return wanted


def train_and_evaluate(args: argparse.Namespace, folder: Path, dataset: str, model: str, variant: str, extra: dict) -> dict:
    dim = paper_dim(args.table, dataset, model)
    settings = {"dim": dim, "learning_rate": args.learning_rate, "batch_size": args.batch_size, "threads": args.threads, "regime": args.regime, "dropout": 0.0, **extra}
    worker = KBWorker(dataset, folder, model, settings)
    parameters = worker.configure("kronecker-tables", args.seed)["parameters"]
    steps_per_epoch = max(1, len(worker.kb.train) // args.batch_size)
    print(f"\n## {dataset} {model} [{variant}]: settings={settings} |Theta|={parameters} train={len(worker.kb.train)} steps/epoch={steps_per_epoch} epochs={args.epochs}")
    sys.stdout.flush()
    started = time.perf_counter()
    losses = []
    for epoch in range(args.epochs):
        losses.append(worker.train(epoch, steps_per_epoch)["loss"])
        if (epoch + 1) % args.log_every == 0 or epoch + 1 == args.epochs:
            window = losses[-args.log_every :]
            print(f"epoch {epoch + 1}: mean loss {sum(window) / len(window):.5f} ({time.perf_counter() - started:.1f} s)")
            sys.stdout.flush()
    seconds = time.perf_counter() - started
    test, train = worker.evaluate("test"), worker.evaluate("train")
    print(f"test:  {' '.join(f'{k}={test[k]:.3f}' for k in METRICS)}")
    print(f"train: {' '.join(f'{k}={train[k]:.3f}' for k in METRICS)}")
    print(f"wall: train {seconds:.1f} s; load average {_common.load_average()}")
    sys.stdout.flush()
    return {
        "table": args.table, "dataset": dataset, "model": model, "variant": variant, "dim": dim, "parameters": parameters,
        "train_triples": len(worker.kb.train), "seed": args.seed, "epochs": args.epochs, "seconds": round(seconds, 1),
        "test": {k: test[k] for k in METRICS}, "train": {k: train[k] for k in METRICS},
    }  # fmt: skip


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    _common.header(f"Kronecker-decomposed DistMult vs the paper's Table {args.table}", threads=str(args.threads))
    print(f"seed={args.seed} epochs={args.epochs} batch_size={args.batch_size} (triples) lr={args.learning_rate} regime={args.regime}")
    variants = {"noise 10%": {}} if args.table == 4 else {"none": {}} if args.table == 2 else {v: CALIBRATIONS[v] for v in args.variants or CALIBRATIONS}
    rows = []
    with tempfile.TemporaryDirectory(prefix="kronecker-noise-") as scratch:
        for dataset in args.datasets:
            folder = Path(args.data_root) / dataset
            if args.table == 4:
                added = noisy_copy(folder, NOISE, args.seed, Path(scratch) / dataset)
                print(f"{dataset}: added {added} noisy triples to train (seed {args.seed})")
                folder = Path(scratch) / dataset
            rows += [train_and_evaluate(args, folder, dataset, model, variant, extra) for model in args.models for variant, extra in variants.items()]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"command": sys.argv, "rows": rows}, indent=1) + "\n", encoding="utf-8")
    print(f"\nload average at end: {_common.load_average()}; rows written to {args.json}")
    print(markdown(rows))


def markdown(rows: list[dict]) -> str:
    """One Markdown table per paper table: ours next to the paper's figures, test and train rows."""
    out = []
    for table in sorted({row["table"] for row in rows}):
        out += [
            f"\n### Table {table}\n",
            "| dataset | model | variant | d | split | \\|Θ\\| ours | \\|Θ\\| paper | MRR | H@1 | H@3 | H@10 | paper MRR | H@1 | H@3 | H@10 | train s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in (r for r in rows if r["table"] == table):
            paper = PAPER.get((table, row["dataset"], row["model"], row["variant"]))
            for split, offset in (("test", 1), ("train", 5)):
                ours = " | ".join(f"{row[split][k]:.3f}" for k in METRICS)
                theirs = " | ".join(f"{v:.3f}" for v in paper[offset : offset + 4]) if paper and len(paper) > offset else "– | – | – | –"
                size = f"{paper[0]:,}" if paper else "–"
                out.append(
                    f"| {row['dataset'].upper()} | {row['model']} | {row['variant']} | {row['dim']} | {split} | {row['parameters']:,} | {size} | {ours} | {theirs} | {row['seconds']:.0f} |"
                )
    return "\n".join(out)


def render(args: argparse.Namespace) -> None:
    rows = [row for path in args.inputs for row in json.loads(path.read_text(encoding="utf-8"))["rows"]]
    _common.write_between_markers(args.doc, "tables", markdown(rows) + "\n")
    print(f"{len(rows)} rows from {len(args.inputs)} files written to {args.doc}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run(args) if args.command == "run" else render(args)


if __name__ == "__main__":
    main()
