"""DSoM's results table on FB15k-237 (docs/results-dsom.md): teachers, baselines, the student and its ablations, resumable.

One KB folder holds FB15k-237's structure, ``features/text.npy`` (entity names and descriptions
through the offline MiniLM encoder) and ``features/numeric.npy`` (numeric literals); no images
exist offline. Every KB of the table is that folder: three teachers (``feature-complex`` plain,
over text, over numeric literals) and the feature-less student, all aligned by name. A fourth
teacher over the Wikidata descriptions (``features/wikidata.npy``) joins with ``--teachers
structure,text,numeric,wikidata``; the rows it teaches record it, and a work folder holds rows of
one teacher set only. The missing-modality rows (Fig. 4) train their own feature teachers over a
copy of the KB whose feature matrices lack the rows of the same 20, 50 or 80 % of the entities;
such an entity gets an embedding of its own in a feature teacher, or zeros with ``--missing-features
zeros`` (one setting per work folder).

The script drives :class:`KBWorker` objects in this one process, making the calls a ``dsom``
job's rounds make (the student asks each teacher, each teacher answers, the student trains), so
that the teachers are trained once and every row's student starts from the same teachers. Each
row's student checkpoints every ``--checkpoint-every`` rounds under ``OUT/rows/<row>/``; a finished
row is recorded in ``OUT/results.json`` and skipped when the script runs again, an unfinished one
resumes from its last checkpoint. So the table can be built over several sittings::

    python bench/dsom_results.py --out bench/results/dsom-fb15k237 --rows all

A quick check on the first 3,000 train triples (about 10 minutes here, most of it encoding 3,792
entity texts; bench/results/2026-11-30/dsom-smoke)::

    python bench/dsom_results.py --out /tmp/dsom/tiny --limit-train 3000 --teacher-epochs 1 --student-epochs 1 \
        --rank 16 --batch-size 500 --steps-per-round 2 --checkpoint-every 2 --hidden 64 --rows all
"""

from __future__ import annotations

import _common  # sets OMP_WAIT_POLICY before torch loads

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from kdmkb.kb_worker.ranking import evaluate_ranking
from kdmkb.kb_worker.worker import AlignmentView, KBWorker
from kdmkb.services.features import drop_feature_rows, missing_entities, numeric_features, text_features
from kdmkb.services.limits import Limits
from kdmkb.services.tsv import read_rows, write_rows

TEACHERS = {"structure": {}, "text": {"features": "text"}, "numeric": {"features": "numeric"}, "wikidata": {"features": "wikidata"}}
DEFAULT_TEACHERS = "structure,text,numeric"
DSOM = {"combination": "dsom", "relation_weight": 0.0, "temperature": 4.0}
# Each student row: the dsom combination's settings (and the exchange's answers); "complex-n3" is the student alone.
ROWS: dict[str, dict] = {
    "complex-n3": {},
    "ndkd-average": {"selection": "all"},
    "rl-kd": {"distillation": "kd"},
    "rl-dkd": {"distillation": "dkd"},
    "rl-nekd": {"nnkd_weight": 0.0},
    "rl-nnkd": {"nekd_weight": 0.0},
    "dsom": {},
    "dsom-full-state": {"state": "full"},
    "dsom-compact-answers": {"answers": "compact"},
    "conf-teacher": {"selection": "confident"},
    "best-teacher": {"selection": "best"},
    "best-strategy": {"selection": "best-subset"},
}
# Fig. 4: the percentage of entities without any feature row -> its rows (the teacher average and DSoM over those teachers).
MISSING = {rate: (f"teacher-average-missing-{rate}", f"dsom-missing-{rate}") for rate in (20, 50, 80)}
MISSING_ROWS = [row for pair in MISSING.values() for row in pair]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data/fb15k-237"), help="FB15k-237 folder (triples, entity_text.tsv, numeric_literals.tsv.gz).")
    parser.add_argument("--out", type=Path, required=True, help="Work folder: the KB, checkpoints and results.json.")
    parser.add_argument("--rows", default="all", help="Comma-separated rows, or all: teacher-<each of --teachers>, teacher-average, " + ", ".join([*ROWS, *MISSING_ROWS]) + ".")
    parser.add_argument(
        "--teachers", default=DEFAULT_TEACHERS, help=f"Comma-separated teachers of every student row, of {', '.join(TEACHERS)} (wikidata: FB15k-237's entity_wikidata.tsv descriptions)."
    )
    parser.add_argument("--limit-train", type=int, default=0, help="Use the first N train triples only (and the valid/test triples of their entities): a quick check.")
    parser.add_argument("--rank", type=int, default=200, help="ComplEx rank of every teacher and student.")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--learning-rate", type=float, default=0.1)
    parser.add_argument("--n3", type=float, default=0.0, help="N3 weight of the student rows (complex-n3 and the distilled ones).")
    parser.add_argument("--teacher-epochs", type=float, default=8.0)
    parser.add_argument("--student-epochs", type=float, default=8.0)
    parser.add_argument(
        "--steps-per-round",
        type=int,
        default=4,
        help="Steps between exchanges: every teacher answers all of a round's queries at once (full answers on FB15k-237: 58 KB per query per teacher, 2 x batch queries a step).",
    )
    parser.add_argument("--checkpoint-every", type=int, default=5, help="Rounds between a row's checkpoints.")
    parser.add_argument("--hidden", type=int, default=1024, help="Policy MLP hidden width.")
    parser.add_argument("--policy-learning-rate", type=float, help="The policy's step size (default: DSoMSettings'; the rows before it had the student's, 0.1).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--seed", type=int, default=0, help="Models' seed, and which entities the missing-modality rows strip of their features.")
    parser.add_argument(
        "--missing-features",
        default="learned",
        choices=["learned", "zeros"],
        help="What the feature teachers make of an entity without a feature row (feature-complex's `missing`): an embedding of its own, or zeros. One per work folder.",
    )
    args = parser.parse_args(argv)
    args.teachers = args.teachers.split(",")
    unknown = sorted(set(args.teachers) - set(TEACHERS))
    if unknown:
        parser.error(f"--teachers: unknown {', '.join(unknown)}; known: {', '.join(TEACHERS)}")
    return args


def table_rows(teachers: list[str]) -> list[str]:
    """Every row of the table with these teachers, in the order they run."""
    return [f"teacher-{name}" for name in teachers] + ["teacher-average", *ROWS] + MISSING_ROWS


# -- the KB folder -------------------------------------------------------------------------------
def build_kb(data: Path, folder: Path, limit: int) -> Path:
    """The FB15k-237 KB folder with its text and numeric features (made once; delete the folder to rebuild)."""
    if (folder / "features" / "text.npy").is_file() and (folder / "features" / "numeric.npy").is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    split = {name: [tuple(row) for _, row in read_rows(_triples(data, name), 3)] for name in ("train", "valid", "test")}
    if limit:
        split["train"] = split["train"][:limit]
        entities = {e for h, _, t in split["train"] for e in (h, t)}
        relations = {r for _, r, _ in split["train"]}
        for name in ("valid", "test"):
            split[name] = [(h, r, t) for h, r, t in split[name] if h in entities and t in entities and r in relations]
    for name, rows in split.items():
        write_rows(folder / f"{name}.tsv", rows)
    seen = dict.fromkeys(e for rows in split.values() for h, _, t in rows for e in (h, t))
    write_rows(folder / "entities.tsv", [(e,) for e in seen])
    texts = [row for _, row in read_rows(data / "entity_text.tsv", 3, last_may_be_empty=True) if row[0] in seen]
    write_rows(folder / "entity_text.tsv", texts)
    started = time.perf_counter()
    _, text_counts = text_features(folder)
    _, numeric_counts = numeric_features(folder, data / "numeric_literals.tsv.gz")
    print(f"kb: {folder} entities={len(seen)} train={len(split['train'])} text={text_counts} numeric={numeric_counts} ({time.perf_counter() - started:.0f} s)")
    return folder


def wikidata_features(data: Path, folder: Path) -> None:
    """``features/wikidata.npy``: each entity's Wikidata label and description (as ``kdmkb features text --texts entity_wikidata.tsv
    --header --columns 1,3,4 --name wikidata``); made once."""
    if (folder / "features" / "wikidata.npy").is_file():
        return
    started = time.perf_counter()
    _, counts = text_features(folder, texts=data / "entity_wikidata.tsv", name="wikidata", columns=(1, 3, 4), header=True)
    print(f"kb: {folder} wikidata={counts} ({time.perf_counter() - started:.0f} s)")


def masked_kb(folder: Path, rate: int, modalities: list[str], seed: int) -> Path:
    """A KB folder beside ``folder``, the same triples (linked), whose ``modalities`` lack the rows of the same ``rate`` % of the entities
    (chosen by ``seed``); made once."""
    masked = folder.with_name(f"{folder.name}-missing-{rate}")
    if all((masked / "features" / f"{modality}.npy").is_file() for modality in modalities):
        return masked
    names = [name for _, (name,) in read_rows(folder / "entities.tsv", 1)]
    dropped = missing_entities(names, rate / 100, seed)
    masked.mkdir(exist_ok=True)
    for name in ("train.tsv", "valid.tsv", "test.tsv", "entities.tsv", "relations.tsv"):  # the same vocabularies: aligned with the student by name
        if (folder / name).is_file() and not (masked / name).exists():
            (masked / name).symlink_to((folder / name).resolve())
    left = drop_feature_rows(folder, masked, modalities, dropped)
    print(f"kb: {masked} {len(dropped)} of {len(names)} entities without features (seed {seed}); rows left {left}")
    return masked


def _triples(data: Path, name: str) -> Path:
    plain = data / f"{name}.tsv"
    return plain if plain.is_file() else data / f"{name}.tsv.gz"


# -- workers -------------------------------------------------------------------------------------
def identity_view(worker: KBWorker, peers: list[str]) -> AlignmentView:
    """Every entity and relation of ``worker`` aligned with the same id at each peer: the table's KBs are one folder."""
    vocabulary = worker.vocabulary()
    entities = {name: i for i, name in enumerate(vocabulary["entity"])}
    relations = {name: i for i, name in enumerate(vocabulary["relation"])}
    return AlignmentView(entities, relations, {peer: (list(entities.values()), list(relations.values())) for peer in peers})


class Table:
    """The KBs of the table in one process, and results.json."""

    def __init__(self, args: argparse.Namespace, folder: Path) -> None:
        self.args, self.folder = args, folder
        self.results_path = args.out / "results.json"
        self.results = json.loads(self.results_path.read_text()) if self.results_path.is_file() else {}
        self.trained: dict[str, KBWorker] = {}  # teacher name -> its worker, trained

    def worker_settings(self, extra: dict | None = None) -> dict:
        a = self.args
        return {"rank": a.rank, "batch_size": a.batch_size, "learning_rate": a.learning_rate, "threads": a.threads, "device": a.device, **(extra or {})}

    def steps(self, epochs: float, worker: KBWorker) -> int:
        per_epoch = -(-len(worker.kb.train) // worker.schedule.batch_size)
        return max(1, round(epochs * per_epoch / self.args.steps_per_round))

    def record(self, row: str, result: dict) -> None:
        self.results[row] = {**result, "missing_features": self.args.missing_features}
        self.results_path.write_text(json.dumps(self.results, indent=2, sort_keys=True))
        print(f"{row}: " + json.dumps(result, sort_keys=True), flush=True)

    # -- teachers ----------------------------------------------------------------------------
    def teachers(self, missing: int = 0) -> dict[str, KBWorker]:
        """The --teachers, trained; with ``missing``, the feature teachers are new ones over the KB whose features lack that % of the entities."""
        if not missing:
            return {name: self.teacher(name, self.folder, TEACHERS[name]) for name in self.args.teachers}
        modalities = [TEACHERS[name]["features"] for name in self.args.teachers if TEACHERS[name]]
        folder = masked_kb(self.folder, missing, modalities, self.args.seed)
        teachers = {}
        for name in self.args.teachers:
            if TEACHERS[name]:
                teachers[f"{name}-missing-{missing}"] = self.teacher(f"{name}-missing-{missing}", folder, TEACHERS[name])
            else:  # the structure teacher has nothing to miss
                teachers[name] = self.teacher(name, self.folder, {})
        return teachers

    def teacher(self, name: str, folder: Path, features: dict) -> KBWorker:
        """Teacher ``name`` trained alone for --teacher-epochs (rounds checkpointed), then evaluated (its row); resumes where it stopped."""
        if name in self.trained:
            return self.trained[name]
        # in one process no object store carries the answers: a full answer step (116 MB at batch 1,000) is no message over a limit
        settings = self.worker_settings({**features, "missing": self.args.missing_features} if features else {})
        worker = KBWorker(name, folder, "feature-complex", settings, Limits(max_label_bytes=2**40))
        worker.configure("dsom-teachers", self.args.seed, {}, identity_view(worker, ["student"]))  # a teacher only answers
        directory, rounds = self.args.out / "teachers" / name, self.steps(self.args.teacher_epochs, worker)
        done, started = self._resume(worker, directory), time.perf_counter()
        for round_ in range(done, rounds):
            worker.train(round_, self.args.steps_per_round)
            if (round_ + 1) % self.args.checkpoint_every == 0 or round_ + 1 == rounds:
                worker.save(directory, round_ + 1)
        self.trained[name] = worker
        row = f"teacher-{name}"
        if row not in self.results:
            self.record(row, {"rounds": rounds, "steps": worker.step, "seconds_this_sitting": time.perf_counter() - started, **self._evaluate(worker)})
        return worker

    def _resume(self, worker: KBWorker, directory: Path) -> int:
        rounds = sorted(int(p.stem.split("-")[-1]) for p in directory.glob("round-*.pt")) if directory.is_dir() else []
        if not rounds:
            return 0
        worker.load(directory, rounds[-1])
        print(f"{worker.name}: resumed from round {rounds[-1]} ({directory})", flush=True)
        return rounds[-1]

    def _evaluate(self, worker: KBWorker) -> dict:
        return {split: worker.evaluate(split) for split in ("valid", "test")}

    def teacher_average(self, row: str, teachers: dict[str, KBWorker]) -> None:
        """The teachers' mean logits ranked as one model (MoSE's average inference)."""
        if row in self.results:
            return
        first = next(iter(teachers.values()))
        models = [w.model for w in teachers.values()]
        for model in models:
            model.modules().eval()

        def score(kind, queries, candidates=None):
            with torch.no_grad():
                return torch.stack([m.score(kind, queries.to(m.device), None if candidates is None else candidates.to(m.device)).float().cpu() for m in models]).mean(dim=0)

        result = {split: evaluate_ranking(score, first.kb.split(split), first.known, batch_size=first.settings.eval_batch_size).as_dict() for split in ("valid", "test")}
        self.record(row, {"teachers": sorted(teachers), **result})

    # -- student rows ------------------------------------------------------------------------
    def student_row(self, row: str, teachers: dict[str, KBWorker], combination: dict) -> None:
        """The student of ``row`` distilled from ``teachers`` with the dsom combination's settings ``combination`` (none: alone)."""
        if row in self.results:
            print(f"{row}: done before ({self.results_path})")
            return
        combination = dict(combination)
        answers = combination.pop("answers", "full")
        alone = row == "complex-n3"
        rate = {"policy_learning_rate": self.args.policy_learning_rate} if self.args.policy_learning_rate else {}
        distill = {**DSOM, "combination_settings": {"hidden": self.args.hidden, "state": "compact", **rate, **combination}} if not alone else {}
        student = KBWorker("student", self.folder, "feature-complex", self.worker_settings({"n3": self.args.n3}))
        student.configure(f"dsom-{row}", self.args.seed, distill, identity_view(student, [] if alone else list(teachers)))
        directory, rounds = self.args.out / "rows" / row, self.steps(self.args.student_epochs, student)
        done, started = self._resume(student, directory), time.perf_counter()
        label_bytes = queries = 0
        for round_ in range(done, rounds):
            payloads = []
            for name, teacher in ({} if alone else teachers).items():
                _, asked = student.ask(round_, self.args.steps_per_round, name, "all" if answers == "full" else "shared")
                stats, labels = teacher.answer(asked)
                payloads.append(labels)
                label_bytes += stats["bytes"]
            result = student.train(round_, self.args.steps_per_round, *payloads)
            queries += 0 if alone else 2 * result["triples"]
            for subset, count in result["teacher_subsets"].items():
                self.results.setdefault(f"{row}:partial-subsets", {}).setdefault(subset, 0)
                self.results[f"{row}:partial-subsets"][subset] += count
            if (round_ + 1) % self.args.checkpoint_every == 0 or round_ + 1 == rounds:
                student.save(directory, round_ + 1)
                self.results_path.write_text(json.dumps(self.results, indent=2, sort_keys=True))
                print(f"{row}: round {round_ + 1}/{rounds} loss {result['loss']:.4f} kd {result['kd_loss']:.4f} ({time.perf_counter() - started:.0f} s)", flush=True)
        subsets = self.results.pop(f"{row}:partial-subsets", {})
        total = sum(subsets.values())
        self.record(
            row,
            {
                **({} if alone else {"teachers": sorted(teachers)}),
                "rounds": rounds,
                "steps": student.step,
                "seconds_this_sitting": time.perf_counter() - started,
                "steps_this_sitting": (rounds - done) * self.args.steps_per_round,
                "policy_parameters": sum(p.numel() for p in learned.parameters()) if (learned := student.student.combination.modules()) is not None else 0,
                **({} if alone else {"combination_settings": student.student.combination.settings.model_dump()}),
                "soft_label_bytes_per_query_this_sitting": label_bytes / (queries * len(teachers)) if queries else 0.0,
                "subset_shares": {subset: count / total for subset, count in sorted(subsets.items())} if total else {},
                **self._evaluate(student),
            },
        )


def check_folder(results: dict, rows: list[str], args: argparse.Namespace) -> None:
    """Refuses to add rows distilled from other teachers, or with other --missing-features, than the finished ones of the work folder
    (a row without a record of its teachers had the default ones; without one of its missing features, learned)."""
    other = sorted(row for row, done in results.items() if ":" not in row and done.get("missing_features", "learned") != args.missing_features)
    if other:
        raise SystemExit(f"--missing-features: rows {', '.join(other)} of this work folder had the other setting; give it, or another --out")
    teachers = args.teachers
    for row in rows:
        done = results.get(row)
        if done is None or row.startswith("teacher-") and not row.startswith("teacher-average"):
            continue
        recorded = [name.split("-missing-")[0] for name in done.get("teachers", DEFAULT_TEACHERS.split(","))]
        if sorted(recorded) != sorted(teachers):
            raise SystemExit(f"--teachers: row {row} of this work folder was distilled from {', '.join(sorted(recorded))}; give those, or another --out for {', '.join(teachers)}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    _common.header("DSoM results table (docs/results-dsom.md)", threads=str(args.threads))
    args.out.mkdir(parents=True, exist_ok=True)
    known = table_rows(args.teachers)
    rows = known if args.rows == "all" else args.rows.split(",")
    unknown = sorted(set(rows) - set(known))
    if unknown:
        raise SystemExit(f"--rows: unknown {', '.join(unknown)}; known with these --teachers: {', '.join(known)}")
    folder = build_kb(args.data, args.out / "kb", args.limit_train)
    if "wikidata" in args.teachers:
        wikidata_features(args.data, folder)
    table = Table(args, folder)
    check_folder(table.results, rows, args)
    # every row but the student alone and the missing-modality ones needs the trained teachers; their own rows come with them
    teachers = table.teachers() if set(rows) - set(MISSING_ROWS) - {"complex-n3"} else {}
    for row in rows:
        if row == "teacher-average":
            table.teacher_average(row, teachers)
        elif row in ROWS:
            table.student_row(row, teachers, ROWS[row])
        for rate, (average, distilled) in MISSING.items():
            if row == average:
                table.teacher_average(row, table.teachers(rate))
            elif row == distilled:
                table.student_row(row, table.teachers(rate), ROWS["dsom"])
    print("\nrow\tvalid MRR\ttest MRR\ttest MR\ttest H@1\ttest H@3\ttest H@10")
    for row in rows:
        if row in table.results:
            valid, test = table.results[row]["valid"], table.results[row]["test"]
            print(f"{row}\t{valid['mrr']:.4f}\t{test['mrr']:.4f}\t{test['mr']:.1f}\t{test['hits_at_1']:.4f}\t{test['hits_at_3']:.4f}\t{test['hits_at_10']:.4f}")


if __name__ == "__main__":
    _common.with_worker_environment()
    main()
