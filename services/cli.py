"""The ``kdmkb`` command line: every command of the README's table, each a thin layer over the Python API or the gRPC API.

``run`` and ``demo`` go through the Python API (:mod:`kdmkb.services.api`), so that what they leave
in ``--out`` is what ``Result.save`` writes. Exit codes (:class:`Exit`, README) tell a usage error,
bad data or settings, an unreachable coordinator and a failed job apart.
"""

from __future__ import annotations

import enum
import functools
import inspect
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Annotated, Optional

import grpc
import typer

from kdmkb.services.errors import ConfigError, DataError, JobFailedError, KdmkbError, NotFoundError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Knowledge-base embeddings that teach each other (KD-MKB) — one Ray actor per KB, a gRPC coordinator.")

ReportOption = Annotated[Optional[Path], typer.Option("--report", help="Write the results as JSON to this file.")]
OutOption = Annotated[
    Optional[Path],
    typer.Option("--out", help="Write everything the run leaves here (absent or empty folder): job file, report, history, plots, checkpoints, embeddings."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
DEFAULT_COORDINATOR = "127.0.0.1:50051"


class Exit(enum.IntEnum):
    """The exit codes of every command (README's table)."""

    OK = 0
    ERROR = 1  # refused for another reason: not allowed, not now, over a limit, an internal error
    USAGE = 2  # an unknown command or option, a bad option value (click's own code)
    BAD_INPUT = 3  # a job file, setting, data file or alignment is wrong, or names a KB/job/entity that does not exist
    UNREACHABLE = 4  # no coordinator answers at the address
    JOB_FAILED = 5  # the job ended FAILED or STOPPED
    INTERRUPTED = 130  # Ctrl-C


def fail(message: str, code: Exit = Exit.USAGE) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(int(code))


BAD_INPUT_STATUS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}


def _unreachable(error: grpc.RpcError) -> bool:
    """UNAVAILABLE because no connection was made (refused, unresolvable, TLS handshake), not a worker that is gone."""
    details = (error.details() or "").lower()
    return error.code() == grpc.StatusCode.UNAVAILABLE and any(words in details for words in ("failed to connect", "resolving", "dns resolution"))


def guarded(function):
    """Turns kdmkb and gRPC errors into one red line and the exit code of :class:`Exit` instead of a traceback."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except JobFailedError as error:
            fail(str(error), Exit.JOB_FAILED)
        except (ConfigError, DataError, NotFoundError) as error:
            fail(str(error), Exit.BAD_INPUT)
        except KdmkbError as error:
            fail(str(error), Exit.ERROR)
        except grpc.RpcError as error:
            if _unreachable(error):
                address = kwargs.get("coordinator") or DEFAULT_COORDINATOR
                fail(f"coordinator unreachable at {address} ({error.details()}); start one with `kdmkb serve --address {address}` or give its address with -c HOST:PORT", Exit.UNREACHABLE)
            fail(f"{error.code().name}: {error.details()}", Exit.BAD_INPUT if error.code() in BAD_INPUT_STATUS else Exit.ERROR)
        except KeyboardInterrupt:
            fail("interrupted", Exit.INTERRUPTED)
        except IsADirectoryError as error:
            fail(f"{error.filename}: is a folder, not a file", Exit.BAD_INPUT)
        except (FileNotFoundError, NotADirectoryError, PermissionError) as error:
            fail(f"{error.filename}: {error.strerror}", Exit.BAD_INPUT)

    return wrapper


# The options of every command that talks to a coordinator, declared once (see ``remote``).
CoordinatorOption = Annotated[str, typer.Option("--coordinator", "-c", envvar="KDMKB_COORDINATOR", help="HOST:PORT of a running coordinator.")]
EmbeddedOrCoordinatorOption = Annotated[
    Optional[str], typer.Option("--coordinator", "-c", envvar="KDMKB_COORDINATOR", help="HOST:PORT of a running coordinator; default: an embedded one.")
]
CLIENT_OPTIONS = {
    "token": Annotated[
        Optional[str], typer.Option("--token", envvar="KDMKB_TOKEN", show_default=False, help="The coordinator's access token (sent as 'authorization: Bearer <token>').")
    ],
    "tls_ca": Annotated[Optional[Path], typer.Option("--tls-ca", envvar="KDMKB_TLS_CA", help="Speak TLS and trust the coordinator's certificate if this CA (PEM) signed it.")],
    "tls_cert": Annotated[Optional[Path], typer.Option("--tls-cert", envvar="KDMKB_TLS_CERT", help="This client's certificate (PEM), for a coordinator that requires one (mTLS).")],
    "tls_key": Annotated[Optional[Path], typer.Option("--tls-key", envvar="KDMKB_TLS_KEY", help="The key of --tls-cert (PEM).")],
}


def remote(embedded_default: bool = False):
    """Gives a command ``--coordinator`` and the options of :data:`CLIENT_OPTIONS`, and calls it with ``client``, connected (closed after).

    With ``embedded_default`` the coordinator is optional (default: an embedded one, ``client`` None).
    """

    def decorate(function):
        own = [p for p in inspect.signature(function, eval_str=True).parameters.values() if p.name != "client"]
        keyword = inspect.Parameter.KEYWORD_ONLY
        coordinator = (
            inspect.Parameter("coordinator", keyword, annotation=EmbeddedOrCoordinatorOption, default=None)
            if embedded_default
            else inspect.Parameter("coordinator", keyword, annotation=CoordinatorOption, default=DEFAULT_COORDINATOR)
        )
        options = [coordinator, *(inspect.Parameter(name, keyword, annotation=annotation, default=None) for name, annotation in CLIENT_OPTIONS.items())]

        @functools.wraps(function)
        def wrapper(*args, coordinator, token, tls_ca, tls_cert, tls_key, **kwargs):
            client = _connect(coordinator, token, tls_ca, tls_cert, tls_key) if coordinator else None
            try:
                return function(*args, client=client, **kwargs)
            finally:
                if client:
                    client.close()

        wrapper.__signature__ = inspect.Signature([*own, *options])
        return wrapper

    return decorate


def _emit(as_json: bool, data, text) -> None:
    """``data`` as JSON, or ``text(data)``'s lines."""
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        for line in text(data):
            typer.echo(line)


def _message(message) -> dict:
    """A message as the JSON of its fields, int64 counts as JSON numbers (protobuf's JSON mapping writes them as strings)."""
    from google.protobuf.json_format import MessageToDict

    return _numbers(message, MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True))


def _numbers(message, data: dict) -> dict:
    from google.protobuf.descriptor import FieldDescriptor

    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.name not in data or field.message_type is not None and field.message_type.full_name == "google.protobuf.Struct":
            continue
        if field.type in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64):
            data[field.name] = [int(v) for v in data[field.name]] if isinstance(data[field.name], list) else int(data[field.name])
        elif field.message_type is not None and field.message_type.GetOptions().map_entry:
            entry = field.message_type.fields_by_name["value"]
            if entry.message_type is not None:
                data[field.name] = {key: _numbers(value[key], item) for key, item in data[field.name].items()}
            elif entry.type in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64):
                data[field.name] = {key: int(item) for key, item in data[field.name].items()}
        elif field.message_type is not None:
            data[field.name] = [_numbers(v, d) for v, d in zip(value, data[field.name])] if isinstance(data[field.name], list) else _numbers(value, data[field.name])
    return data


def _print_table(reports: list[dict]) -> None:
    """The filtered test metrics of each KB under each report's strategy; the KB column is as wide as its longest name needs."""
    kbs = sorted({kb for report in reports for kb in report["kbs"]})
    width = max([12] + [len(kb) + 2 for kb in kbs])
    header = f"{'KB':<{width}}{'strategy':<14}{'MRR':>8}{'MR':>9}{'H@1':>8}{'H@3':>8}{'H@10':>8}"
    typer.echo(header)
    typer.echo("-" * len(header))
    for kb in kbs:
        for report in reports:
            m = report["kbs"].get(kb)
            if m:
                how = f"  {m['ranking']}, retriever recall {m['retriever_recall']:.4f}" if "ranking" in m else ""
                typer.echo(f"{kb:<{width}}{report['strategy']:<14}{m['mrr']:>8.4f}{m['mr']:>9.2f}{m['hits@1']:>8.4f}{m['hits@3']:>8.4f}{m['hits@10']:>8.4f}{how}")


def _check_report_path(path: Path | None) -> None:
    """Before a job runs, not after: the folder of ``--report`` exists."""
    if path and not path.parent.is_dir():
        fail(f"--report: folder {path.parent} does not exist")


def _write_report(path: Path | None, report: dict) -> None:
    if path:
        path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        typer.echo(f"report written to {path}")


def _report(result) -> dict:
    """A result's report, with its baseline's where one ran."""
    return {**result.report, **({"baseline": result.baseline.report} if result.baseline else {})}


def _print_written(out: Path | None) -> None:
    if out:
        typer.echo(f"written to {out}: {', '.join(sorted(path.name + ('/' if path.is_dir() else '') for path in out.iterdir()))}")


def _connect(coordinator: str, token: str | None, tls_ca: Path | None, tls_cert: Path | None, tls_key: Path | None):
    """A client of a running coordinator; TLS once any TLS file is given."""
    from kdmkb.services.client import CoordinatorClient
    from kdmkb.services.tls import ClientTLS

    tls = ClientTLS.from_files(tls_ca, tls_cert, tls_key) if (tls_ca or tls_cert or tls_key) else None
    return CoordinatorClient(coordinator, token=token, tls=tls)


def _quiet_logs() -> None:
    logging.basicConfig(level=os.environ.get("KDMKB_LOG_LEVEL", "WARNING"))


@app.command()
@guarded
def split(
    dataset_dir: Annotated[Path, typer.Argument(help="Folder with train/valid/test TSV files.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder (must not exist or be empty).")],
    kbs: Annotated[int, typer.Option("--kbs", help="Number of KBs to cut the train triples into.")] = 2,
    seed: Annotated[int, typer.Option("--seed", help="Shuffle seed.")] = 0,
    align: Annotated[str, typer.Option("--align", help="Entity alignment: co-occurring, all, a fraction in (0,1] of the co-occurring entities, or co-occurring+F (those and F of the others).")] = "co-occurring",
) -> None:
    """Cut a dataset into KBs as the KD-MKB paper does, with their alignments and a job.toml that shows every setting with its default."""
    from kdmkb.services.split import split_dataset, write_job_file

    summary = split_dataset(dataset_dir, out, kbs=kbs, seed=seed, align=align)
    write_job_file(summary, effective=True)
    for name in summary.kb_names:
        typer.echo(f"{name}: {summary.train_counts[name]} train triples")
    for (a, b), (entities, relations) in summary.pair_counts.items():
        typer.echo(f"{a} <-> {b}: {entities} entities, {relations} relations aligned")
    typer.echo(f"written to {summary.out_dir}; run it with: kdmkb run {summary.out_dir / 'job.toml'}")


@app.command()
@guarded
@remote(embedded_default=True)
def run(
    config: Annotated[Path, typer.Argument(help="TOML job file ([job], [[kb]], [[alignment]]).")],
    client,
    strategy: Annotated[Optional[str], typer.Option("--strategy", help="Override the job file's strategy.")] = None,
    report: ReportOption = None,
    out: OutOption = None,
    baseline: Annotated[bool, typer.Option("--baseline", help="First train the same KBs alone (strategy none), for comparison in the table and plots.")] = False,
    data_dir: Annotated[
        Optional[Path],
        typer.Option(
            "--data-dir",
            help="Keep the embedded coordinator's KBs, jobs and checkpoints here: the same command run again resumes "
            "the unfinished job from its last checkpoint (a long run over several sittings). Default: nothing kept.",
        ),
    ] = None,
) -> None:
    """Run a job file on an embedded coordinator (default) or a running one."""
    from kdmkb.services.api import JobDetached
    from kdmkb.services.api import run as run_job

    _quiet_logs()
    _check_report_path(report)
    if client and data_dir:
        fail("--data-dir: a running coordinator keeps its own data (kdmkb serve --data-dir); give one or the other")
    try:
        result = run_job(config, coordinator=client, strategy=strategy, baseline=baseline, data_dir=data_dir, out=out)
    except JobDetached as detached:
        at = f" -c {client.address}"
        fail(f"interrupted: job {detached.job_id} keeps running on the coordinator at {client.address}; follow it with `kdmkb watch {detached.job_id}{at}`, stop it with `kdmkb stop {detached.job_id}{at}`", Exit.INTERRUPTED)
    except KeyboardInterrupt:
        if data_dir is None:
            fail("interrupted: nothing was kept (give --data-dir DIR to make a run resumable)", Exit.INTERRUPTED)
        fail(f"interrupted: the job is kept in {data_dir}; the same command resumes it from its last checkpoint", Exit.INTERRUPTED)
    _print_table([*([result.baseline.report] if result.baseline else []), result.report])
    _write_report(report, _report(result))
    _print_written(out)


@app.command()
@guarded
def demo(
    dataset: Annotated[str, typer.Option("--dataset", help="Packaged dataset: umls, kinship or nations.")] = "umls",
    kbs: Annotated[int, typer.Option("--kbs", help="Number of KBs the dataset is split into.")] = 3,
    rounds: Annotated[Optional[int], typer.Option("--rounds", help="Rounds per job (default: the demo's tuned budget).")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    report: ReportOption = None,
    out: Annotated[
        Optional[Path], typer.Option("--out", help="Folder for the split KBs (kbs/) and everything the run leaves (run/); default: kdmkb-demo-DATASET-TIME.")
    ] = None,
) -> None:
    """Split a packaged dataset into KBs and compare training alone with cooperative distillation."""
    from kdmkb.services.api import run as run_job
    from kdmkb.services.api import split as split_kbs
    from kdmkb.services.datasets import dataset_dir
    from kdmkb.services.demo import demo_job_file
    from kdmkb.services.split import check_out_dir

    _quiet_logs()
    _check_report_path(report)
    out = out or Path(f"kdmkb-demo-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
    check_out_dir(out)
    kbs_split = split_kbs(dataset_dir(dataset), kbs=kbs, seed=seed, out=out / "kbs")
    typer.echo(f"{dataset} split into {kbs} KBs ({', '.join(f'{n}: {c}' for n, c in kbs_split.summary.train_counts.items())} train triples)")
    result = run_job(demo_job_file(kbs_split.summary, seed=seed, rounds=rounds), baseline=True, out=out / "run")
    baseline, cooperative = result.baseline.report, result.report
    _print_table([baseline, cooperative])
    for kb, metrics in cooperative["kbs"].items():
        before = baseline["kbs"][kb]["mrr"]
        typer.echo(f"{kb}: MRR {before:.4f} -> {metrics['mrr']:.4f} ({(metrics['mrr'] - before) / before:+.1%})")
    _write_report(report, {**cooperative, "dataset": dataset, "baseline": baseline})
    _print_written(out / "run")


@app.command()
@guarded
def serve(
    address: Annotated[str, typer.Option("--address", help="Address the gRPC server binds.")] = "127.0.0.1:50051",
    data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help="Where jobs, registrations and checkpoints are kept.")] = Path(".kdmkb"),
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", envvar="RAY_ADDRESS", help="Join this Ray cluster (default: start a local one).")] = None,
    metrics_port: Annotated[int, typer.Option("--metrics-port", help="Port of the coordinator's /metrics (0: any free port).")] = 9400,
    tokens: Annotated[
        Optional[Path], typer.Option("--tokens", help="TOML file of token tables (value, role = admin | kb, kbs; see README); every call then needs a token. Default: no authentication.")
    ] = None,
    tls_cert: Annotated[Optional[Path], typer.Option("--tls-cert", help="The server's certificate (PEM); with --tls-key, the port speaks TLS only.")] = None,
    tls_key: Annotated[Optional[Path], typer.Option("--tls-key", help="The server certificate's key (PEM).")] = None,
    tls_client_ca: Annotated[Optional[Path], typer.Option("--tls-client-ca", help="Require client certificates signed by this CA (PEM): mutual TLS.")] = None,
    data_root: Annotated[
        Optional[list[Path]],
        typer.Option("--data-root", help="A directory KB folders and alignment files may be read from (repeatable; relative paths resolve against the first). Default: the current directory."),
    ] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="Allow a non-loopback address without TLS and tokens (a private network only).")] = False,
    limit: Annotated[
        Optional[list[str]],
        typer.Option("--limit", help="A server limit as NAME=VALUE (repeatable): max_kbs, max_file_bytes, max_triples, max_dim, max_batch_size, max_threads, max_message_bytes, max_label_bytes (one soft-label message between KB workers; larger rounds are cut between steps), max_streams, unary_threads; see deploy/README.md."),
    ] = None,
) -> None:
    """Run the coordinator until interrupted."""
    from kdmkb.coordinator.auth import Tokens
    from kdmkb.coordinator.server import check_exposure, start_server
    from kdmkb.coordinator.service import Coordinator
    from kdmkb.services.data_roots import DataRoots
    from kdmkb.services.limits import Limits
    from kdmkb.services.metrics import serve_metrics
    from kdmkb.services.tls import ServerTLS

    # Every refusal comes before Ray starts or a port is bound.
    limits = Limits.parse(limit or [])
    access = Tokens.load(tokens) if tokens else None
    tls = ServerTLS.from_files(tls_cert, tls_key, tls_client_ca) if (tls_cert or tls_key or tls_client_ca) else None
    check_exposure(address, tls, access, insecure)
    roots = data_root or [Path.cwd()]
    for root in roots:
        if not root.is_dir():
            fail(f"--data-root: {root} is not a directory")
    logging.basicConfig(level=os.environ.get("KDMKB_LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    coordinator = Coordinator(data_dir, ray_address, data_roots=DataRoots(roots), limits=limits)
    server, port = start_server(coordinator, address, tokens=access, tls=tls)
    scrape = serve_metrics(metrics_port)
    typer.echo(f"data roots: {', '.join(coordinator.data_roots.names())}", err=True)
    typer.echo(f"access: {'tokens from ' + str(tokens) if access else 'open (no --tokens)'}; transport: {'TLS' + (' with client certificates' if tls and tls.client_ca else '') if tls else 'plaintext'}", err=True)
    typer.echo(f"coordinator listening on {address.rsplit(':', 1)[0]}:{port}; metrics on :{scrape}/metrics", err=True)
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    done.wait()
    coordinator.interrupt_jobs()
    server.stop(grace=5).wait()
    coordinator.shutdown()


def _job_lines(jobs: list[dict]) -> list[str]:
    return [
        f"{job['job_id']}  {job['strategy']:<12} {job['state'].removeprefix('JOB_STATE_'):<10} round {job['round']}/{job['total_rounds']}  kbs: {', '.join(job['kbs'])}"
        + (f"  error: {job['error']}" if job["error"] else "")
        for job in jobs
    ]


@app.command()
@guarded
@remote()
def jobs(client, as_json: JsonOption = False) -> None:
    """List every job of the coordinator with its state and round."""
    from kdmkb.protos.kdmkb.coordinator.v1 import coordinator_pb2 as pb

    _emit(as_json, [_message(job) for job in client.stub.ListJobs(pb.ListJobsRequest(), timeout=client.timeout).jobs], _job_lines)


@app.command()
@guarded
@remote()
def status(
    client,
    job_id: Annotated[Optional[str], typer.Argument(help="A job id; default: list every job (as `kdmkb jobs`).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Show jobs and their progress; one job also with its test metrics."""
    from kdmkb.protos.kdmkb.coordinator.v1 import coordinator_pb2 as pb
    from kdmkb.services.client import job_report

    if not job_id:
        return _emit(as_json, [_message(job) for job in client.stub.ListJobs(pb.ListJobsRequest(), timeout=client.timeout).jobs], _job_lines)
    job = client.stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=client.timeout).job
    if as_json:
        return _emit(True, {**_message(job), "report": job_report(job)}, None)
    for line in _job_lines([_message(job)]):
        typer.echo(line)
    if job.test_metrics:
        _print_table([job_report(job)])


@app.command()
@guarded
@remote()
def watch(client, job_id: Annotated[str, typer.Argument(help="The job to follow.")], as_json: JsonOption = False) -> None:
    """Follow a job's events until it ends (JSON: one event per line); exit code 5 if it fails or is stopped."""
    from kdmkb.protos.kdmkb.coordinator.v1 import coordinator_pb2 as pb
    from kdmkb.services.api import progress_text, subsets_text
    from kdmkb.services.client import TERMINAL_STATES, state_name

    for event in client.stub.WatchJob(pb.WatchJobRequest(job_id=job_id)):
        if as_json:
            typer.echo(json.dumps(_message(event)))
        else:
            kbs = "  ".join(f"{kb}: {' '.join(filter(None, (progress_text(p), subsets_text(p))))}" for kb, p in sorted(event.progress.items()))
            typer.echo(f"{state_name(event.state):<10} round {event.round}/{event.total_rounds}  {event.kind}  {kbs}" + (f"  {event.message}" if event.message else ""))
        if event.state in TERMINAL_STATES:
            if event.state != pb.JOB_STATE_SUCCEEDED:
                raise typer.Exit(int(Exit.JOB_FAILED))
            return


@app.command()
@guarded
@remote()
def stop(client, job_id: Annotated[str, typer.Argument(help="The job to stop (it keeps its last checkpoint; StartJob resumes it).")], as_json: JsonOption = False) -> None:
    """Stop a running job after its current round."""
    from kdmkb.protos.kdmkb.coordinator.v1 import coordinator_pb2 as pb

    job = client.stub.StopJob(pb.StopJobRequest(job_id=job_id), timeout=client.timeout).job
    _emit(as_json, _message(job), lambda job: _job_lines([job]))


@app.command()
@guarded
@remote()
def kbs(client, as_json: JsonOption = False) -> None:
    """List the coordinator's KBs: worker type, sizes, health and the job that trains each."""
    from kdmkb.protos.kdmkb.coordinator.v1 import coordinator_pb2 as pb

    def lines(kbs: list[dict]) -> list[str]:
        return [
            f"{kb['name']:<12} {kb['worker_type']:<10} {kb['num_entities']:>7} entities {kb['num_relations']:>5} relations {kb['num_train']:>8} train  "
            + ("healthy" if kb["healthy"] else f"unhealthy: {kb['unhealthy_reason']}")
            + (f"  training in {kb['busy_with_job']}" if kb["busy_with_job"] else "")
            + f"  {kb['data_dir']}"
            for kb in kbs
        ]

    _emit(as_json, [_message(kb) for kb in client.stub.ListKBs(pb.ListKBsRequest(), timeout=client.timeout).kbs], lines)


@app.command()
@guarded
@remote()
def evaluate(
    client,
    kb: Annotated[str, typer.Argument(help="A registered KB.")],
    split: Annotated[str, typer.Option("--split", help="valid or test.")] = "test",
    as_json: JsonOption = False,
) -> None:
    """Filtered ranking metrics of a KB's current model on its valid or test split."""
    from kdmkb.protos.kdmkb.coordinator.v1 import coordinator_pb2 as pb
    from kdmkb.services.client import metrics_dict

    metrics = metrics_dict(client.stub.Evaluate(pb.EvaluateRequest(kb=kb, split=split), timeout=client.timeout).metrics)
    _emit(as_json, {"kb": kb, "split": split, **metrics}, lambda m: [f"{kb} {split}: " + "  ".join(f"{key} {m[key]:.4f}" for key in ("mrr", "mr", "hits@1", "hits@3", "hits@10"))])


@app.command()
@guarded
@remote()
def predict(
    client,
    kb: Annotated[str, typer.Argument(help="A registered KB.")],
    given_head: Annotated[Optional[str], typer.Argument(metavar="[HEAD]", help="The head (as --head).", show_default=False)] = None,
    given_relation: Annotated[Optional[str], typer.Argument(metavar="[RELATION]", help="The relation (as --relation).", show_default=False)] = None,
    head: Annotated[Optional[str], typer.Option("--head", help="Predict tails of (HEAD, RELATION, ?).")] = None,
    tail: Annotated[Optional[str], typer.Option("--tail", help="Predict heads of (?, RELATION, TAIL).")] = None,
    relation: Annotated[Optional[str], typer.Option("--relation", "-r", help="The relation.")] = None,
    k: Annotated[int, typer.Option("-k", help="How many entities.")] = 10,
    as_json: JsonOption = False,
) -> None:
    """Top-k tails of (HEAD, RELATION, ?) or, with --tail, heads of (?, RELATION, TAIL) in a KB."""
    from kdmkb.protos.kdmkb.coordinator.v1 import coordinator_pb2 as pb

    if given_head and head:
        fail("HEAD: give the head as an argument or as --head, not both")
    if given_relation and relation:
        fail("RELATION: give the relation as an argument or as --relation, not both")
    head, relation = head or given_head, relation or given_relation
    if bool(head) == bool(tail):
        fail("--head, --tail: give a head (to predict tails) or a tail (to predict heads), not both")
    if not relation:
        fail("--relation: missing (or give it after the head: kdmkb predict KB HEAD RELATION)")
    response = client.stub.Predict(pb.PredictRequest(kb=kb, head=head or "", tail=tail or "", relation=relation, k=k), timeout=client.timeout)
    predictions = [{"entity": p.entity, "score": p.score, "known": p.known} for p in response.predictions]
    _emit(as_json, predictions, lambda ps: [f"{rank:>3}. {p['entity']}\t{p['score']:.4f}" + ("\t(known)" if p["known"] else "") for rank, p in enumerate(ps, start=1)])


@app.command()
@guarded
@remote()
def export(client, kb: str, out: Annotated[Path, typer.Option("--out", help="Output .npz file.")]) -> None:
    """Export a KB's embeddings with their names to an .npz file."""
    if not out.parent.is_dir():
        fail(f"--out: folder {out.parent} does not exist")
    counts = client.export(kb, out)
    typer.echo(f"wrote {', '.join(f'{n} {kind} vectors' for kind, n in counts.items())} to {out}")


@app.command()
@guarded
def check(config: Annotated[Path, typer.Argument(help="TOML job file.")], as_json: JsonOption = False) -> None:
    """Validate a job file, its worker settings, its KBs' data and its alignments here, without starting Ray; exit code 3 if anything is wrong."""
    from kdmkb.services.check import check_job

    if config.is_dir():
        fail(f"{config} is a folder; give its job file (such as {config / 'job.toml'})", Exit.BAD_INPUT)
    report = check_job(config)

    def lines(found: dict) -> list[str]:
        kbs = [f"kb {name}: {kb['worker_type']}, {kb['entities']} entities, {kb['relations']} relations, {kb['train']}/{kb['valid']}/{kb['test']} train/valid/test" for name, kb in found["kbs"].items()]
        aligned = [f"alignment {' <-> '.join(a['kbs'])}: {a['entities']} entities, {a['relations']} relations" for a in found["alignments"]]
        return [*kbs, *aligned, f"{config}: " + ("ok" if found["ok"] else f"{len(found['errors'])} problem(s)")]

    _emit(as_json, report.as_dict(), lines)
    if report.errors:
        for error in report.errors:
            typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        raise typer.Exit(int(Exit.BAD_INPUT))


config_app = typer.Typer(no_args_is_help=True, help="The settings models: every setting, its default and description.")
app.add_typer(config_app, name="config")


@config_app.command("show")
@guarded
def config_show(
    name: Annotated[Optional[str], typer.Argument(help="A worker type or a strategy; default: the [job] settings and the names of both.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Every setting with its type, default and description; --json prints the JSON schema."""
    from kdmkb.coordinator.strategies import STRATEGIES
    from kdmkb.kb_worker.worker_types import WORKER_TYPES
    from kdmkb.services.config import JobSettings

    if name is None:
        model, title = JobSettings, "[job] settings"
    elif name in WORKER_TYPES:
        model, title = WORKER_TYPES.get(name).settings_model, f"worker type {name!r}: [[kb]] settings"
    elif name in STRATEGIES:
        model, title = STRATEGIES.get(name).settings_model, f"strategy {name!r}: [strategy] settings"
    else:
        raise ConfigError(f"{name!r} is neither a worker type ({', '.join(WORKER_TYPES.names())}) nor a strategy ({', '.join(STRATEGIES.names())})")
    if as_json:
        return typer.echo(json.dumps(model.model_json_schema(), indent=2))
    typer.echo(f"{title}:")
    for field, info in model.model_fields.items():
        default = "required" if info.is_required() else f"default {info.get_default(call_default_factory=True)!r}"
        kind = info.annotation.__name__ if isinstance(info.annotation, type) else str(info.annotation).replace("typing.", "")
        typer.echo(f"  {field} ({kind}, {default}): {info.description or ''}")
    if name is None:
        typer.echo(f"worker types: {', '.join(WORKER_TYPES.names())} (kdmkb config show TYPE)")
        typer.echo(f"strategies: {', '.join(STRATEGIES.names())} (kdmkb config show STRATEGY)")


features_app = typer.Typer(no_args_is_help=True, help="Per-entity feature matrices for a KB folder (features/<modality>.npy; docs/data.md).")
app.add_typer(features_app, name="features")
KBDirArgument = Annotated[Path, typer.Argument(help="The KB folder (train/valid/test TSV, entities.tsv, ...).")]


@features_app.command("text")
@guarded
def features_text(
    kb_dir: KBDirArgument,
    encoder: Annotated[str, typer.Option("--encoder", help="Hugging Face encoder folder (offline); default: the packaged all-MiniLM-L6-v2.")] = "",
    max_length: Annotated[int, typer.Option("--max-length", help="Tokens per entity text.")] = 128,
    texts: Annotated[
        Optional[Path], typer.Option("--texts", help="Take the texts from this TSV file instead of the KB's entity_text.tsv (rows of other entities are skipped).")
    ] = None,
    columns: Annotated[str, typer.Option("--columns", help="--texts: the 1-based columns of the id, the name and the description (may be empty).")] = "1,2,3",
    header: Annotated[bool, typer.Option("--header", help="--texts: its first line is a header.")] = False,
    name: Annotated[str, typer.Option("--name", help="The modality written: features/NAME.npy.")] = "text",
) -> None:
    """Encode each entity's name and description (entity_text.tsv, or --texts) into features/text.npy (or --name).

    FB15k-237's Wikidata descriptions: --texts entity_wikidata.tsv --header --columns 1,3,4 --name wikidata.
    """
    from kdmkb.services.features import text_features

    try:
        picked = tuple(int(column) for column in columns.split(","))
    except ValueError:
        raise ConfigError(f"columns: three comma-separated column numbers, got {columns!r}") from None
    path, counts = text_features(kb_dir, encoder, max_length=max_length, texts=texts, name=name, columns=picked, header=header)
    skipped = f"; {counts['skipped_rows']} rows of other entities skipped" if counts["skipped_rows"] else ""
    typer.echo(f"wrote {path}: {counts['entities']} entities x {counts['dim']}; {counts['missing_entities']} without text (recorded as missing){skipped}")


@features_app.command("numeric")
@guarded
def features_numeric(
    kb_dir: KBDirArgument, literals: Annotated[Path, typer.Option("--literals", help="entity<TAB>attribute<TAB>value lines (.tsv or .tsv.gz).")]
) -> None:
    """Normalise numeric literals into features/numeric.npy (a value and a presence flag per attribute)."""
    from kdmkb.services.features import numeric_features

    path, counts = numeric_features(kb_dir, literals)
    typer.echo(
        f"wrote {path}: {counts['entities']} entities x {counts['attributes']} attributes (value + presence); "
        f"{counts['missing_entities']} entities without literals (recorded as missing); {counts['skipped_literals']} literals of other entities skipped"
    )


cluster_app = typer.Typer(no_args_is_help=True, help="The cluster as local processes (no Docker): Ray head, one Ray node per KB, coordinator, Prometheus.")
app.add_typer(cluster_app, name="cluster")
StateDirOption = Annotated[Path, typer.Option("--state-dir", help="Where the cluster keeps its pids (cluster.json), logs, coordinator data and Prometheus data.")]


@cluster_app.command("up")
@guarded
def cluster_up(
    kbs: Annotated[str, typer.Option("--kbs", help="Comma-separated KB names; each gets a Ray node offering the resource kb:<name>.")],
    state_dir: StateDirOption = Path(".kdmkb-cluster"),
    ray_port: Annotated[int, typer.Option("--ray-port", help="Ray head (GCS) port; 0: any free port (likewise below).")] = 6379,
    coordinator_port: Annotated[int, typer.Option("--coordinator-port", help="Coordinator gRPC port.")] = 50051,
    metrics_port: Annotated[int, typer.Option("--metrics-port", help="Coordinator /metrics port.")] = 9400,
    prometheus_port: Annotated[int, typer.Option("--prometheus-port", help="Prometheus web/API port.")] = 9090,
    dashboard_port: Annotated[int, typer.Option("--dashboard-port", help="Ray's dashboard port.")] = 8265,
    scrape_interval: Annotated[str, typer.Option("--scrape-interval", help="Prometheus scrape and rule evaluation interval.")] = "5s",
    data_root: Annotated[Optional[list[Path]], typer.Option("--data-root", help="The coordinator's data roots (kdmkb serve --data-root); default: the current directory.")] = None,
) -> None:
    """Start the local cluster on 127.0.0.1 and return once every part is ready."""
    from kdmkb.services.cluster import cluster_up as up

    state = up(state_dir, [name.strip() for name in kbs.split(",") if name.strip()], ray_port, coordinator_port, metrics_port, prometheus_port, dashboard_port, scrape_interval, data_roots=data_root)
    typer.echo(f"ray:         {state['ray_address']}  (nodes: head, {', '.join(f'{kb} with {r}' for kb, r in state['resources'].items())})")
    typer.echo(f"coordinator: {state['coordinator']}  (data: {state['data_dir']}, data roots: {', '.join(state['data_roots'])}, metrics: {state['coordinator_metrics']})")
    typer.echo(f"prometheus:  {state['prometheus']}  (scrapes kdmkb and Ray)")
    typer.echo(f"ray dashboard: {state['ray_dashboard']}")
    typer.echo(f"register a KB with its resource (RegisterKB resource=\"kb:<name>\"); stop with: kdmkb cluster down --state-dir {state_dir}")


@cluster_app.command("down")
@guarded
def cluster_down(state_dir: StateDirOption = Path(".kdmkb-cluster")) -> None:
    """Stop every process `kdmkb cluster up` started there."""
    from kdmkb.services.cluster import cluster_down as down

    survivors = down(state_dir)
    if survivors:
        fail(f"processes {survivors} survived SIGKILL")
    typer.echo("cluster stopped")


tools_app = typer.Typer(no_args_is_help=True, help="Tools kdmkb runs but does not install with pip.")
app.add_typer(tools_app, name="tools")


@tools_app.command("prometheus")
@guarded
def tools_prometheus(
    folder: Annotated[Optional[Path], typer.Option("--dir", help="Unpack here instead of $XDG_DATA_HOME/kdmkb/prometheus (~/.local/share/kdmkb/prometheus), where kdmkb looks by itself.")] = None,
) -> None:
    """Fetch Prometheus and promtool for `kdmkb cluster up`: Debian's prometheus package, unpacked into a user folder (needs apt-get and dpkg; installs nothing system-wide)."""
    from kdmkb.services.prometheus import TOOLS_ENV, install_prometheus, user_tools_dir

    binaries = install_prometheus(folder)
    typer.echo(f"prometheus and promtool in {binaries}")
    if folder is not None and Path(folder).resolve() != user_tools_dir().resolve():
        typer.echo(f"kdmkb finds them there with: export {TOOLS_ENV}={binaries}")


def _version(value: bool) -> None:
    if value:
        from kdmkb import __version__

        typer.echo(f"kdmkb {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False) -> None:
    """Knowledge-base embeddings that teach each other (KD-MKB) — one Ray actor per KB, a gRPC coordinator."""


def main() -> None:
    app()


if __name__ == "__main__":
    main()
