"""The bad-input catalogue: tries each bad file, job file, RPC field and checkpoint, and prints the answer it gets.

Run from the repository root under the loopback-only namespace::

    scripts/loopback-only .venv/bin/python bench/bad_input.py --write docs/bad-input.md

RPCs go to a real coordinator and gRPC server on 127.0.0.1:0 (local Ray) whose data root is a
temporary folder holding the nations KBs and the bad files; its limits are the defaults except
``max_file_bytes`` (1 MB, so that "huge" needs no gigabytes). Job files go through
``load_job_file`` (what ``kdmkb run`` reads them with), checkpoints through ``KBWorker.load`` (what
a job's resume calls), soft labels over ``max_label_bytes`` through ``KBWorker.teach`` (what a job's
round calls; the job fails with that error as its reason). Paths in the answers are shortened to ``<root>``.
"""

from __future__ import annotations

import _common  # noqa: F401  (sets OMP_WAIT_POLICY before torch is imported)

import argparse
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import grpc

from kdmkb.protos.kdmkb.coordinator.v1 import coordinator_pb2 as pb
from kdmkb.protos.kdmkb.coordinator.v1 import coordinator_pb2_grpc as pb_grpc
from kdmkb.services.datasets import dataset_dir
from kdmkb.services.errors import KdmkbError
from kdmkb.services.split import split_dataset
from kdmkb.services.wire import to_struct

WORKER = {"dim": 16, "batch_size": 64, "negatives": 8, "learning_rate": 0.01}
MAX_FILE_BYTES = 1 << 20
MAX_LABEL_BYTES = 16 << 10  # below one step's soft labels between the nations KBs (about 24 kB)


def kb_folder(root: Path, name: str, source: Path, **replace: bytes) -> Path:
    """A copy of the KB folder ``source`` with some files' bytes replaced (a value of None: made a directory)."""
    folder = root / "bad-kbs" / name
    shutil.copytree(source, folder)
    for file, content in replace.items():
        target = folder / file.replace("_", ".")
        target.unlink()
        if content is None:
            target.mkdir()
        else:
            target.write_bytes(content)
    return folder


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def rpc_cases(root: Path, left: Path, right: Path) -> list[tuple[str, str, str, Callable]]:
    """(category, input, RPC, request factory) for each bad request; the KBs "left" and "right" are registered and trained."""
    train = (left / "train.tsv").read_bytes()
    first, rest = train.split(b"\n", 1)
    usa = first.split(b"\t")[0].decode()
    entities = (left / "entities.tsv").read_bytes()
    huge = train * (MAX_FILE_BYTES // len(train) + 1)
    folders = {
        "missing folder": root / "bad-kbs" / "missing",
        "a file, not a folder": left / "train.tsv",
        "train.tsv is a directory": kb_folder(root, "dir", left, train_tsv=None),
        "train.tsv line 2 has 2 columns": kb_folder(root, "columns", left, train_tsv=first + b"\n" + first.rsplit(b"\t", 1)[0] + b"\n" + rest),
        "train.tsv starts with a BOM": kb_folder(root, "bom", left, train_tsv=b"\xef\xbb\xbf" + train),
        "entities.tsv starts with a BOM": kb_folder(root, "bom-vocab", left, entities_tsv=b"\xef\xbb\xbf" + entities),
        "train.tsv has a NUL byte in a name": kb_folder(root, "nul", left, train_tsv=first.replace(b"\t", b"\x00\t", 1) + b"\n" + rest),
        "train.tsv has an ESC (0x1b) in a name": kb_folder(root, "esc", left, train_tsv=first.replace(b"\t", b"\x1b[31m\t", 1) + b"\n" + rest),
        "train.tsv is not UTF-8 (0xff)": kb_folder(root, "latin", left, train_tsv=first.replace(b"\t", b"\xff\t", 1) + b"\n" + rest),
        "train.tsv is empty": kb_folder(root, "empty", left, train_tsv=b""),
        "entities.tsv names an entity twice": kb_folder(root, "dup-vocab", left, entities_tsv=entities + entities.split(b"\n", 1)[0] + b"\n"),
        "valid.tsv names an entity not in entities.tsv": kb_folder(root, "unknown", left, valid_tsv=b"atlantis\t" + first.split(b"\t")[1] + b"\t" + usa.encode() + b"\n"),
        f"train.tsv over max_file_bytes ({len(huge) >> 10} KiB)": kb_folder(root, "huge", left, train_tsv=huge),
        "a folder outside the data roots": Path("/etc"),
        "a symlink leaving the data root": root / "bad-kbs" / "link",
    }
    (root / "bad-kbs" / "link").symlink_to("/etc")
    cases = [("KB folder", what, "RegisterKB", lambda f=folder: pb.RegisterKBRequest(name="newkb", data_dir=str(f))) for what, folder in folders.items()]
    cases.append(("KB folder", "relative data_dir", "RegisterKB", lambda: pb.RegisterKBRequest(name="newkb", data_dir="kbs/left")))

    align = root / "bad-alignments"
    alignments = {
        "alignment file missing": align / "missing.tsv",
        "alignment names an unknown entity": write(align / "unknown.tsv", f"{usa}\t{usa}\natlantis\t{usa}\n"),
        "alignment line with 1 column": write(align / "columns.tsv", f"{usa}\t{usa}\n{usa}\n"),
        "alignment file empty": write(align / "empty.tsv", ""),
        "alignment pairs one entity twice": write(align / "one-to-many.tsv", f"{usa}\t{usa}\n{usa}\tuk\n"),
        "alignment with a NUL byte": write(align / "nul.tsv", f"{usa}\x00\t{usa}\n"),
    }
    cases += [
        ("alignment file", what, "RegisterAlignment", lambda p=path: pb.RegisterAlignmentRequest(kb_a="left", kb_b="right", entities_path=str(p)))
        for what, path in alignments.items()
    ]

    def kb(settings: dict, worker_type: str = "transe"):
        return lambda: pb.RegisterKBRequest(name="newkb", data_dir=str(left), worker_type=worker_type, settings=to_struct(settings))

    def job(settings: dict | None = None, strategy: str = "cooperative", strategy_settings: dict | None = None, kbs=("left", "right")):
        return lambda: pb.CreateJobRequest(strategy=strategy, kbs=list(kbs), settings=to_struct(settings or {}), strategy_settings=to_struct(strategy_settings or {}))

    cases += [
        ("KB settings", "unknown key dimension", "RegisterKB", kb({"dimension": 16})),
        ("KB settings", "dim as a string", "RegisterKB", kb({"dim": "sixteen"})),
        ("KB settings", "batch_size 1.5", "RegisterKB", kb({"batch_size": 1.5})),
        ("KB settings", "dim -1", "RegisterKB", kb({"dim": -1})),
        ("KB settings", "dim 1e9", "RegisterKB", kb({"dim": 1e9})),
        ("KB settings", "threads 1000", "RegisterKB", kb({"threads": 1000})),
        ("KB settings", "learning_rate NaN", "RegisterKB", kb({"learning_rate": float("nan")})),
        ("KB settings", "device cuda without a GPU", "RegisterKB", kb({"device": "cuda"})),
        ("KB settings", "unknown worker type transf", "RegisterKB", kb({}, "transf")),
        ("job settings", "unknown strategy coop", "CreateJob", job(strategy="coop")),
        ("job settings", "unknown key roundz", "CreateJob", job({"roundz": 3})),
        ("job settings", "rounds 0", "CreateJob", job({"rounds": 0})),
        ("job settings", "rounds as a string", "CreateJob", job({"rounds": "ten"})),
        ("job settings", "alpha 2", "CreateJob", job({"alpha": 2})),
        ("job settings", "seed Infinity", "CreateJob", job({"seed": float("inf")})),
        ("job settings", "teacher not in the job", "CreateJob", job(strategy="one-way", strategy_settings={"teacher": "nope"})),
        ("job settings", "one KB for cooperative", "CreateJob", job(kbs=("left",))),
        ("RPC field", "RegisterKB name empty", "RegisterKB", lambda: pb.RegisterKBRequest(name="", data_dir=str(left))),
        ("RPC field", "RegisterKB name with a control character", "RegisterKB", lambda: pb.RegisterKBRequest(name="a\x1bb", data_dir=str(left))),
        ("RPC field", "RegisterKB name of 65 characters", "RegisterKB", lambda: pb.RegisterKBRequest(name="a" * 65, data_dir=str(left))),
        ("RPC field", "GetJob job_id empty", "GetJob", lambda: pb.GetJobRequest()),
        ("RPC field", "GetJob unknown job_id", "GetJob", lambda: pb.GetJobRequest(job_id="nope")),
        ("RPC field", "WatchJob unknown job_id", "WatchJob", lambda: pb.WatchJobRequest(job_id="nope")),
        ("RPC field", "StartJob unknown job_id", "StartJob", lambda: pb.StartJobRequest(job_id="nope")),
        ("RPC field", "Evaluate unknown KB", "Evaluate", lambda: pb.EvaluateRequest(kb="nope")),
        ("RPC field", "Evaluate split train2", "Evaluate", lambda: pb.EvaluateRequest(kb="left", split="train2")),
        ("RPC field", "Predict head empty", "Predict", lambda: pb.PredictRequest(kb="left", relation="x")),
        ("RPC field", "Predict unknown head", "Predict", lambda: pb.PredictRequest(kb="left", head="atlantis", relation=first.split(b"\t")[1].decode())),
        ("RPC field", "Predict head with NUL", "Predict", lambda: pb.PredictRequest(kb="left", head=f"{usa}\x00", relation=first.split(b"\t")[1].decode())),
        ("RPC field", "Predict k = -1", "Predict", lambda: pb.PredictRequest(kb="left", head=usa, relation=first.split(b"\t")[1].decode(), k=-1)),
        ("RPC field", "Predict k = 1001", "Predict", lambda: pb.PredictRequest(kb="left", head=usa, relation=first.split(b"\t")[1].decode(), k=1001)),
        ("RPC field", "ExportEmbeddings chunk_rows -1", "ExportEmbeddings", lambda: pb.ExportEmbeddingsRequest(kb="left", chunk_rows=-1)),
        ("RPC field", "a 65 MiB request (data_dir)", "RegisterKB", lambda: pb.RegisterKBRequest(name="newkb", data_dir="x" * (65 << 20))),
    ]
    return cases


def job_file_cases(root: Path, left: Path) -> list[tuple[str, str, Path]]:
    """(category, input, file) for each bad job file."""
    kb = f'[[kb]]\nname = "left"\ndata = "{left}"\n'
    files = {
        "not TOML": "strategy = \n",
        "no [[kb]]": 'strategy = "none"\n',
        "unknown top-level key": f"{kb}rounds = 3\n",
        "unknown key in [job]": f"[job]\nroundz = 3\n{kb}",
        "rounds as a string": f'[job]\nrounds = "ten"\n{kb}',
        "rounds = -1": f"[job]\nrounds = -1\n{kb}",
        "alpha = 2.0": f"[job]\nalpha = 2.0\n{kb}",
        "unknown strategy": f'strategy = "coop"\n{kb}',
        "unknown worker type": f'{kb}worker_type = "transf"\n',
        "unknown KB setting": f"{kb}settings = {{ dimension = 16 }}\n",
        "KB setting of a wrong type": f'{kb}settings = {{ dim = "big" }}\n',
        "two KBs of one name": kb + kb,
    }
    cases = [("job file", what, write(root / "bad-jobs" / f"{i}.toml", text)) for i, (what, text) in enumerate(files.items())]
    return [("job file", "missing file", root / "bad-jobs" / "missing.toml"), *cases]


def checkpoint_cases(root: Path, left: Path, right: Path) -> list[tuple[str, str, Callable[[], object]]]:
    """(category, input, call) for each bad checkpoint, tried with in-process workers (as an actor runs them)."""
    from kdmkb.kb_worker.worker import KBWorker

    def worker(name: str, folder: Path, settings: dict = WORKER) -> KBWorker:
        made = KBWorker(name, folder, "transe", settings)
        made.configure("job", 0)
        return made

    trained = worker("left", left)
    good = Path(trained.save(root / "ckpt" / "left", 1))
    truncated = root / "ckpt" / "truncated"
    write(truncated / good.name, good.read_bytes()[: good.stat().st_size // 2])
    garbage = root / "ckpt" / "garbage"
    write(garbage / good.name, b"not a checkpoint\n")
    return [
        ("checkpoint", "missing", lambda: worker("left", left).load(root / "ckpt" / "nothing", 1)),
        ("checkpoint", "truncated to half", lambda: worker("left", left).load(truncated, 1)),
        ("checkpoint", "not a checkpoint (text)", lambda: worker("left", left).load(garbage, 1)),
        ("checkpoint", "of another KB (a vocabulary of the same size)", lambda: worker("right", right).load(good.parent, 1)),
        ("checkpoint", "of other settings (dim 32)", lambda: worker("left", left, {**WORKER, "dim": 32}).load(good.parent, 1)),
    ]


def label_cases(left: Path, right: Path) -> list[tuple[str, str, Callable[[], object]]]:
    """(category, input, call) for soft labels over ``max_label_bytes``, tried with in-process workers (what a job's round calls)."""
    from kdmkb.coordinator.alignment import build_pair, merge
    from kdmkb.kb_worker.worker import KBWorker
    from kdmkb.services.limits import Limits

    workers = {folder.name: KBWorker(folder.name, folder, "transe", WORKER, Limits(max_label_bytes=MAX_LABEL_BYTES)) for folder in (left, right)}
    stem = left.parent / "alignments" / "left__right"
    pair = build_pair("left", "right", workers["left"].vocabulary(), workers["right"].vocabulary(), f"{stem}.entities.tsv", f"{stem}.relations.tsv")
    views = merge(list(workers), [pair])
    for name, worker in workers.items():
        worker.configure("job", 0, {}, views[name])
    return [("soft labels", f"one step's labels over max_label_bytes ({MAX_LABEL_BYTES >> 10} KiB)", lambda: workers["left"].teach(0, 5, ["right"]))]


def answer_of_call(call: Callable[[], object]) -> tuple[str, str]:
    try:
        call()
    except KdmkbError as error:
        return type(error).__name__, str(error)
    return "accepted", ""


def answer_of_rpc(stub, method: str, request) -> tuple[str, str]:
    try:
        response = getattr(stub, method)(request, timeout=120)
        if method in ("WatchJob", "ExportEmbeddings"):
            list(response)
    except grpc.RpcError as error:
        return error.code().name, error.details() or ""
    return "OK", ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", type=Path, help="a Markdown file to write the table into, between <!-- bad-input:begin/end --> markers")
    args = parser.parse_args()

    from kdmkb.coordinator.server import start_server
    from kdmkb.coordinator.service import Coordinator
    from kdmkb.services.config import load_job_file
    from kdmkb.services.data_roots import DataRoots
    from kdmkb.services.limits import Limits

    rows = []
    with tempfile.TemporaryDirectory(prefix="kdmkb-bad-") as folder:
        root = Path(folder).resolve()
        split = split_dataset(dataset_dir("nations"), root / "kbs", kbs=2, seed=0, names=["left", "right"])
        left, right = split.out_dir / "left", split.out_dir / "right"
        for category, what, path in job_file_cases(root, left):
            rows.append((category, what, "load_job_file", *answer_of_call(lambda p=path: load_job_file(p))))
        for category, what, call in checkpoint_cases(root, left, right):
            rows.append((category, what, "KBWorker.load", *answer_of_call(call)))
        for category, what, call in label_cases(left, right):
            rows.append((category, what, "KBWorker.teach", *answer_of_call(call)))

        coordinator = Coordinator(data_roots=DataRoots([str(root)]), limits=Limits(max_file_bytes=MAX_FILE_BYTES))
        server, port = start_server(coordinator, "127.0.0.1:0")
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = pb_grpc.CoordinatorStub(channel)
        try:
            for name, kb_dir in (("left", left), ("right", right)):
                stub.RegisterKB(pb.RegisterKBRequest(name=name, data_dir=str(kb_dir), settings=to_struct(WORKER)), timeout=300)
            stem = split.out_dir / "alignments" / "left__right"
            stub.RegisterAlignment(pb.RegisterAlignmentRequest(kb_a="left", kb_b="right", entities_path=f"{stem}.entities.tsv"), timeout=300)
            job = stub.CreateJob(pb.CreateJobRequest(strategy="none", kbs=["left"], settings=to_struct({"rounds": 1, "steps_per_round": 2})), timeout=60).job
            stub.StartJob(pb.StartJobRequest(job_id=job.job_id), timeout=60)
            list(stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id), timeout=300))
            for category, what, method, make in rpc_cases(root, left, right):
                rows.append((category, what, method, *answer_of_rpc(stub, method, make())))
                if rows[-1][3] == "OK" and method == "RegisterKB":
                    rows[-1] = (*rows[-1][:4], "(registered; an input the server accepts)")
        finally:
            channel.close()
            server.stop(grace=None).wait()
            coordinator.shutdown()
        text = table(rows, str(root))
    print(text)
    if args.write:
        _common.write_between_markers(args.write, "bad-input", text)


def table(rows: list[tuple[str, str, str, str, str]], root: str) -> str:
    def cell(text: str) -> str:
        text = text.replace(root, "<root>").replace("|", "\\|").replace("\n", " ")
        return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)

    lines = ["| what | input | tried with | answer | message |", "|---|---|---|---|---|"]
    lines += [f"| {category} | {cell(what)} | {how} | {code} | {cell(message)} |" for category, what, how, code, message in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
