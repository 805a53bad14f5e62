"""Every Prometheus metric kdmkb exports, declared once: ``kdmkb_<component>_<what>_<unit>``.

The unit is the last word of the name (before a counter's ``_total``) and one of :data:`UNITS`;
a test holds every metric here to that and to having a description. Per-KB metrics carry the
``kb`` and ``job`` labels. Prometheus must scrape with ``honor_labels: true`` so that ``job`` stays
the kdmkb job id instead of the scrape job's name (deploy/prometheus/prometheus.yml).
"""

from __future__ import annotations

import os

from prometheus_client import Counter, Gauge, Histogram, start_http_server

UNITS = {
    "seconds": "wall time",
    "bytes": "serialised size",
    "messages": "SoftLabels messages",
    "steps": "optimiser steps",
    "triples": "positive training triples",
    "queries": "training queries (a triple's tail or head query)",
    "rounds": "distillation rounds",
    "requests": "gRPC requests",
    "per_second": "a rate measured by the process itself",
    "ratio": "a value in [0, 1]",
    "loss": "a training objective's value (dimensionless)",
    "state": "a state set: 1 for the current state, 0 for the others",
}

KB_LABELS = ("kb", "job")
PAIR_LABELS = ("kb", "peer", "job")
BIND_HOST_ENV = "KDMKB_METRICS_HOST"
ADVERTISE_HOST_ENV = "KDMKB_METRICS_ADVERTISE_HOST"
WILDCARD_HOSTS = ("0.0.0.0", "::", "")

# -- KB workers -------------------------------------------------------------------------------
WORKER_LOSS = Gauge("kdmkb_worker_training_loss", "Own supervised loss of the KB's last round (mean over its steps).", KB_LABELS)
WORKER_KD_LOSS = Gauge("kdmkb_worker_distillation_loss", "Distillation (KL) loss of the KB's last round that had soft labels (mean over those steps).", KB_LABELS)
WORKER_STEPS = Counter("kdmkb_worker_training_steps", "Training steps taken by the KB.", KB_LABELS)
WORKER_TRIPLES = Counter("kdmkb_worker_training_triples", "Positive training triples the KB has trained on.", KB_LABELS)
WORKER_STEPS_RATE = Gauge("kdmkb_worker_training_steps_per_second", "Training steps per second in the KB's last round of training.", KB_LABELS)
WORKER_TRIPLES_RATE = Gauge("kdmkb_worker_training_triples_per_second", "Positive triples per second in the KB's last round of training.", KB_LABELS)
WORKER_MRR = Gauge("kdmkb_worker_mrr_ratio", "Filtered MRR of the KB's last evaluation of the split.", (*KB_LABELS, "split"))
WORKER_HITS10 = Gauge("kdmkb_worker_hits_at_10_ratio", "Filtered Hits@10 of the KB's last evaluation of the split.", (*KB_LABELS, "split"))
WORKER_SENT_BYTES = Counter("kdmkb_worker_soft_label_sent_bytes", "Bytes of SoftLabels messages the KB sent as teacher to the peer.", PAIR_LABELS)
WORKER_RECEIVED_BYTES = Counter("kdmkb_worker_soft_label_received_bytes", "Bytes of SoftLabels messages the KB received as student from the peer.", PAIR_LABELS)
WORKER_SENT_MESSAGES = Counter("kdmkb_worker_soft_label_sent_messages", "SoftLabels messages the KB sent as teacher to the peer.", PAIR_LABELS)
WORKER_RECEIVED_MESSAGES = Counter("kdmkb_worker_soft_label_received_messages", "SoftLabels messages the KB received as student from the peer.", PAIR_LABELS)
WORKER_TEACHER_SUBSETS = Counter(
    "kdmkb_worker_teacher_subset_queries", "Training queries for which the KB's teacher combination chose the subset of its teachers (DSoM's Fig. 3).", (*KB_LABELS, "subset")
)
WORKER_QUERY_SENT_BYTES = Counter("kdmkb_worker_query_sent_bytes", "Bytes of Queries messages the KB sent as student to the peer (pull exchange).", PAIR_LABELS)

# -- coordinator ------------------------------------------------------------------------------
ROUND_SECONDS = Histogram(
    "kdmkb_coordinator_round_duration_seconds",
    "Wall time of one distillation round (teach, route, train).",
    ("job",),
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
ROUTED_BYTES = Counter("kdmkb_coordinator_soft_label_routed_bytes", "Bytes of SoftLabels routed from teacher to student.", ("teacher", "student", "job"))
ROUTED_MESSAGES = Counter(
    "kdmkb_coordinator_soft_label_routed_messages", "SoftLabels messages routed from teacher to student (several a round when its labels exceed max_label_bytes).", ("teacher", "student", "job")
)
ROUTED_QUERY_BYTES = Counter("kdmkb_coordinator_query_routed_bytes", "Bytes of Queries routed from student to teacher (pull exchange).", ("student", "teacher", "job"))
JOB_ROUNDS = Gauge("kdmkb_coordinator_job_completed_rounds", "Rounds the job has completed.", ("job",))
JOB_STATE = Gauge("kdmkb_coordinator_job_state", "The job's state: 1 for its current state, 0 for the others.", ("job", "state"))
RPC_REQUESTS = Counter("kdmkb_coordinator_rpc_requests", "gRPC requests served, by method and status code.", ("method", "code"))
RPC_SECONDS = Histogram("kdmkb_coordinator_rpc_duration_seconds", "gRPC request latency by method and status code.", ("method", "code"))


def serve_metrics(port: int = 0) -> int:
    """Starts this process's ``/metrics`` endpoint on ``KDMKB_METRICS_HOST`` (default 127.0.0.1) and returns its port."""
    server, _ = start_http_server(port, addr=os.environ.get(BIND_HOST_ENV, "127.0.0.1"))
    return server.server_port


def advertised_host() -> str:
    """The host Prometheus should scrape this process at.

    ``KDMKB_METRICS_ADVERTISE_HOST`` if set; else the bind host, unless that is a wildcard,
    which no one can connect to: then the Ray node's IP, the address its peers reach it at.
    """
    explicit = os.environ.get(ADVERTISE_HOST_ENV, "")
    if explicit:
        return explicit
    bound = os.environ.get(BIND_HOST_ENV, "127.0.0.1")
    if bound in WILDCARD_HOSTS:
        import ray.util

        return ray.util.get_node_ip_address()
    return bound
