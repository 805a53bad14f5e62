"""Every Prometheus metric kdmkb exports, declared once: ``kdmkb_<component>_<what>_<unit>``."""

from __future__ import annotations

import os

from prometheus_client import Counter, Gauge, Histogram, start_http_server

KB_LABELS = ("kb", "job")
PAIR_LABELS = ("kb", "peer", "job")

# -- KB workers -------------------------------------------------------------------------------
WORKER_LOSS = Gauge("kdmkb_worker_loss", "Own supervised loss of the KB's last training step.", KB_LABELS)
WORKER_KD_LOSS = Gauge("kdmkb_worker_kd_loss", "Distillation (KL) loss of the KB's last training step that had soft labels.", KB_LABELS)
WORKER_STEPS = Counter("kdmkb_worker_steps_total", "Training steps taken by the KB.", KB_LABELS)
WORKER_TRIPLES = Counter("kdmkb_worker_triples_total", "Positive training triples the KB has trained on.", KB_LABELS)
WORKER_TRIPLES_RATE = Gauge("kdmkb_worker_triples_per_second", "Positive triples per second in the KB's last round of training.", KB_LABELS)
WORKER_MRR = Gauge("kdmkb_worker_mrr", "Filtered MRR of the KB's last evaluation.", (*KB_LABELS, "split"))
WORKER_HITS10 = Gauge("kdmkb_worker_hits_at_10", "Filtered Hits@10 of the KB's last evaluation.", (*KB_LABELS, "split"))
WORKER_SENT_BYTES = Counter("kdmkb_worker_soft_label_sent_bytes_total", "Bytes of SoftLabels messages the KB sent as teacher.", PAIR_LABELS)
WORKER_RECEIVED_BYTES = Counter("kdmkb_worker_soft_label_received_bytes_total", "Bytes of SoftLabels messages the KB received as student.", PAIR_LABELS)
WORKER_SENT_MESSAGES = Counter("kdmkb_worker_soft_label_sent_messages_total", "SoftLabels messages the KB sent as teacher.", PAIR_LABELS)
WORKER_RECEIVED_MESSAGES = Counter("kdmkb_worker_soft_label_received_messages_total", "SoftLabels messages the KB received as student.", PAIR_LABELS)

# -- coordinator ------------------------------------------------------------------------------
ROUND_SECONDS = Histogram(
    "kdmkb_coordinator_round_duration_seconds",
    "Wall time of one distillation round (teach, route, train).",
    ("job",),
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
ROUTED_BYTES = Counter("kdmkb_coordinator_soft_label_routed_bytes_total", "Bytes of SoftLabels routed from teacher to student.", ("teacher", "student", "job"))
JOB_ROUND = Gauge("kdmkb_coordinator_job_round", "Last completed round of the job.", ("job",))
JOBS = Gauge("kdmkb_coordinator_jobs", "Jobs known to the coordinator, by state.", ("state",))
RPC_REQUESTS = Counter("kdmkb_coordinator_rpc_requests_total", "gRPC requests served, by method and status code.", ("method", "code"))
RPC_SECONDS = Histogram("kdmkb_coordinator_rpc_duration_seconds", "gRPC request latency by method.", ("method",))


def serve_metrics(port: int = 0, host: str | None = None) -> int:
    """Starts this process's ``/metrics`` endpoint and returns its port.

    The host defaults to ``KDMKB_METRICS_HOST`` or 127.0.0.1; a cluster sets it to the node's
    address so Prometheus can scrape it.
    """
    host = host or os.environ.get("KDMKB_METRICS_HOST", "127.0.0.1")
    server, _ = start_http_server(port, addr=host)
    return server.server_port
