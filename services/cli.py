"""The ``kdmkb`` command line: demo, split, run, serve, status, predict, export, cluster up/down.

``run`` and ``demo`` go through the Python API (:mod:`kdmkb.services.api`), so that what they leave
in ``--out`` is what ``Result.save`` writes.
"""

from __future__ import annotations

import functools
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

from kdmkb.services.errors import KdmkbError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Knowledge-base embeddings that teach each other (KD-MKB) — one Ray actor per KB, a gRPC coordinator.")

CoordinatorOption = Annotated[
    Optional[str], typer.Option("--coordinator", "-c", envvar="KDMKB_COORDINATOR", help="HOST:PORT of a running coordinator; default: an embedded one.")
]
RemoteCoordinatorOption = Annotated[str, typer.Option("--coordinator", "-c", envvar="KDMKB_COORDINATOR", help="HOST:PORT of a running coordinator.")]
ReportOption = Annotated[Optional[Path], typer.Option("--report", help="Write the results as JSON to this file.")]
OutOption = Annotated[
    Optional[Path],
    typer.Option("--out", help="Write everything the run leaves here (absent or empty folder): job file, report, history, plots, checkpoints, embeddings."),
]
TokenOption = Annotated[
    Optional[str], typer.Option("--token", envvar="KDMKB_TOKEN", show_default=False, help="The coordinator's access token (sent as 'authorization: Bearer <token>').")
]
TLSCAOption = Annotated[Optional[Path], typer.Option("--tls-ca", envvar="KDMKB_TLS_CA", help="Speak TLS and trust the coordinator's certificate if this CA (PEM) signed it.")]
TLSCertOption = Annotated[Optional[Path], typer.Option("--tls-cert", envvar="KDMKB_TLS_CERT", help="This client's certificate (PEM), for a coordinator that requires one (mTLS).")]
TLSKeyOption = Annotated[Optional[Path], typer.Option("--tls-key", envvar="KDMKB_TLS_KEY", help="The key of --tls-cert (PEM).")]


def fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def guarded(function):
    """Turns kdmkb and gRPC errors into one red line and exit code 2 instead of a traceback."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except KdmkbError as error:
            fail(str(error))
        except grpc.RpcError as error:
            fail(f"{error.code().name}: {error.details()}")

    return wrapper


def _print_table(reports: list[dict]) -> None:
    kbs = sorted({kb for report in reports for kb in report["kbs"]})
    header = f"{'KB':<12}{'strategy':<14}{'MRR':>8}{'MR':>9}{'H@1':>8}{'H@3':>8}{'H@10':>8}"
    typer.echo(header)
    typer.echo("-" * len(header))
    for kb in kbs:
        for report in reports:
            m = report["kbs"].get(kb)
            if m:
                how = f"  {m['ranking']}, retriever recall {m['retriever_recall']:.4f}" if "ranking" in m else ""
                typer.echo(f"{kb:<12}{report['strategy']:<14}{m['mrr']:>8.4f}{m['mr']:>9.2f}{m['hits@1']:>8.4f}{m['hits@3']:>8.4f}{m['hits@10']:>8.4f}{how}")


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
    """Cut a dataset into KBs as the KD-MKB paper does, with their alignments and a job.toml."""
    from kdmkb.services.split import split_dataset, write_job_file

    summary = split_dataset(dataset_dir, out, kbs=kbs, seed=seed, align=align)
    write_job_file(summary)
    for name in summary.kb_names:
        typer.echo(f"{name}: {summary.train_counts[name]} train triples")
    for (a, b), (entities, relations) in summary.pair_counts.items():
        typer.echo(f"{a} <-> {b}: {entities} entities, {relations} relations aligned")
    typer.echo(f"written to {summary.out_dir}; run it with: kdmkb run {summary.out_dir / 'job.toml'}")


@app.command()
@guarded
def run(
    config: Annotated[Path, typer.Argument(help="TOML job file ([job], [[kb]], [[alignment]]).")],
    coordinator: CoordinatorOption = None,
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
    token: TokenOption = None,
    tls_ca: TLSCAOption = None,
    tls_cert: TLSCertOption = None,
    tls_key: TLSKeyOption = None,
) -> None:
    """Run a job file on an embedded coordinator (default) or a running one."""
    from kdmkb.services.api import run as run_job

    _quiet_logs()
    if coordinator and data_dir:
        fail("--data-dir: a running coordinator keeps its own data (kdmkb serve --data-dir); give one or the other")
    client = _connect(coordinator, token, tls_ca, tls_cert, tls_key) if coordinator else None
    try:
        result = run_job(config, coordinator=client, strategy=strategy, baseline=baseline, data_dir=data_dir, out=out)
    finally:
        if client:
            client.close()
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
        typer.Option("--limit", help="A server limit as NAME=VALUE (repeatable): max_kbs, max_file_bytes, max_triples, max_dim, max_batch_size, max_threads, max_message_bytes, max_streams, unary_threads; see deploy/README.md."),
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
    server.stop(grace=5).wait()
    coordinator.shutdown()


@app.command()
@guarded
def status(
    job_id: Annotated[Optional[str], typer.Argument(help="A job id; default: list every job.")] = None,
    coordinator: RemoteCoordinatorOption = "127.0.0.1:50051",
    token: TokenOption = None,
    tls_ca: TLSCAOption = None,
    tls_cert: TLSCertOption = None,
    tls_key: TLSKeyOption = None,
) -> None:
    """Show jobs and their progress."""
    from kdmkb.protos.kdmkb.coordinator.v1 import coordinator_pb2 as pb
    from kdmkb.services.client import job_report, state_name

    client = _connect(coordinator, token, tls_ca, tls_cert, tls_key)
    jobs = [client.stub.GetJob(pb.GetJobRequest(job_id=job_id)).job] if job_id else list(client.stub.ListJobs(pb.ListJobsRequest()).jobs)
    for job in jobs:
        typer.echo(f"{job.job_id}  {job.strategy:<12} {state_name(job.state):<10} round {job.round}/{job.total_rounds}  kbs: {', '.join(job.kbs)}" + (f"  error: {job.error}" if job.error else ""))
        if job_id and job.test_metrics:
            _print_table([job_report(job)])
    client.close()


@app.command()
@guarded
def predict(
    kb: str,
    head: str,
    relation: str,
    k: Annotated[int, typer.Option("-k", help="How many tails.")] = 10,
    coordinator: RemoteCoordinatorOption = "127.0.0.1:50051",
    token: TokenOption = None,
    tls_ca: TLSCAOption = None,
    tls_cert: TLSCertOption = None,
    tls_key: TLSKeyOption = None,
) -> None:
    """Top-k tails for (HEAD, RELATION) in a KB."""
    from kdmkb.protos.kdmkb.coordinator.v1 import coordinator_pb2 as pb

    client = _connect(coordinator, token, tls_ca, tls_cert, tls_key)
    response = client.stub.Predict(pb.PredictRequest(kb=kb, head=head, relation=relation, k=k))
    for rank, p in enumerate(response.predictions, start=1):
        typer.echo(f"{rank:>3}. {p.entity}\t{p.score:.4f}" + ("\t(known)" if p.known else ""))
    client.close()


@app.command()
@guarded
def export(
    kb: str,
    out: Annotated[Path, typer.Option("--out", help="Output .npz file.")],
    coordinator: RemoteCoordinatorOption = "127.0.0.1:50051",
    token: TokenOption = None,
    tls_ca: TLSCAOption = None,
    tls_cert: TLSCertOption = None,
    tls_key: TLSKeyOption = None,
) -> None:
    """Export a KB's embeddings with their names to an .npz file."""
    client = _connect(coordinator, token, tls_ca, tls_cert, tls_key)
    counts = client.export(kb, out)
    client.close()
    typer.echo(f"wrote {', '.join(f'{n} {kind} vectors' for kind, n in counts.items())} to {out}")


features_app = typer.Typer(no_args_is_help=True, help="Per-entity feature matrices for a KB folder (features/<modality>.npy; docs/data.md).")
app.add_typer(features_app, name="features")
KBDirArgument = Annotated[Path, typer.Argument(help="The KB folder (train/valid/test TSV, entities.tsv, ...).")]


@features_app.command("text")
@guarded
def features_text(
    kb_dir: KBDirArgument,
    encoder: Annotated[str, typer.Option("--encoder", help="Hugging Face encoder folder (offline); default: the packaged all-MiniLM-L6-v2.")] = "",
    max_length: Annotated[int, typer.Option("--max-length", help="Tokens per entity text.")] = 128,
) -> None:
    """Encode each entity's name and description (entity_text.tsv) into features/text.npy."""
    from kdmkb.services.features import text_features

    path, counts = text_features(kb_dir, encoder, max_length=max_length)
    typer.echo(f"wrote {path}: {counts['entities']} entities x {counts['dim']}; {counts['missing_entities']} without text (recorded as missing)")


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
    scrape_interval: Annotated[str, typer.Option("--scrape-interval", help="Prometheus scrape and rule evaluation interval.")] = "5s",
    data_root: Annotated[Optional[list[Path]], typer.Option("--data-root", help="The coordinator's data roots (kdmkb serve --data-root); default: the current directory.")] = None,
) -> None:
    """Start the local cluster on 127.0.0.1 and return once every part is ready."""
    from kdmkb.services.cluster import cluster_up as up

    state = up(state_dir, [name.strip() for name in kbs.split(",") if name.strip()], ray_port, coordinator_port, metrics_port, prometheus_port, scrape_interval, data_roots=data_root)
    typer.echo(f"ray:         {state['ray_address']}  (nodes: head, {', '.join(f'{kb} with {r}' for kb, r in state['resources'].items())})")
    typer.echo(f"coordinator: {state['coordinator']}  (data: {state['data_dir']}, data roots: {', '.join(state['data_roots'])}, metrics: {state['coordinator_metrics']})")
    typer.echo(f"prometheus:  {state['prometheus']}")
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
