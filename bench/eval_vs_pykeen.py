"""Full filtered test ranking: our KBWorker.evaluate vs PyKEEN 1.11.1's RankBasedEvaluator, same weights.

Run from the repository root (PyKEEN comes with ``pip install -e '.[bench]'``)::

    python bench/eval_vs_pykeen.py --data ../shared/data/wn18rr --dim 200 --norm 1 2

For each ``--norm`` a TransE :class:`kdmkb.kb_worker.worker.KBWorker` is built on ``--data`` (the whole
folder as one KB) and trained ``--train-steps`` steps, so that its rankings are not those of a
random model; its embeddings are then copied into a PyKEEN ``TransE`` of the same size and norm.
Both evaluators rank every test triple's tail and head against all entities, filtered by
train + valid + test, with ties counted as the mean of the optimistic and pessimistic rank
(PyKEEN's "realistic" rank), so both must print the same metrics: the check that the two time
the same work. PyKEEN's TransE scores all entities by broadcasting ``[batch, entities, dim]``,
so its batch size matters; every ``--pykeen-batch-size`` is timed and the fastest is the figure.
Our evaluation and PyKEEN's alternate ``--repeats`` times; medians are reported, wall and CPU
time. Run it in the default allocator environment: with the workers' ``MALLOC_*`` settings
(services/ray_runtime.py) PyKEEN's ranking grew past 20 GB here and was killed.
"""

from __future__ import annotations

import _common  # noqa: F401  (sets OMP_WAIT_POLICY before torch is imported)

import argparse
import os
import statistics
import sys
import time

import torch

from kdmkb.kb_worker.worker import KBWorker

METRICS = (("mrr", "inverse_harmonic_mean_rank"), ("hits_at_1", "hits_at_1"), ("hits_at_3", "hits_at_3"), ("hits_at_10", "hits_at_10"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", required=True, help="KB folder whose test split is ranked (train/valid/test).")
    parser.add_argument("--dim", type=int, default=200)
    parser.add_argument("--norm", type=int, nargs="+", default=[1, 2], choices=(1, 2), help="TransE distance(s).")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads.")
    parser.add_argument("--eval-batch-size", type=int, default=256, help="Our WorkerSettings.eval_batch_size.")
    parser.add_argument("--pykeen-batch-size", type=int, nargs="+", default=[16, 64], help="PyKEEN evaluation batch sizes to time.")
    parser.add_argument("--train-steps", type=int, default=300, help="Training steps (batch 512, 128 negatives) before ranking.")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def pykeen_model(worker: KBWorker, norm: int):
    """A PyKEEN TransE holding the worker's current embeddings."""
    from pykeen.models import TransE
    from pykeen.triples import CoreTriplesFactory

    kb = worker.kb
    factory = CoreTriplesFactory.create(torch.from_numpy(kb.train), num_entities=len(kb.entities), num_relations=len(kb.relations))
    model = TransE(triples_factory=factory, embedding_dim=worker.settings.dim, scoring_fct_norm=norm, entity_constrainer=None, random_seed=0)
    ours = worker.model.model
    with torch.no_grad():
        model.entity_representations[0]._embeddings.weight.copy_(ours.entity.weight)
        model.relation_representations[0]._embeddings.weight.copy_(ours.relation.weight)
    return model.eval()


def pykeen_evaluate(model, kb, batch_size: int) -> tuple[dict, float, float]:
    """PyKEEN's filtered metrics of ``model`` on ``kb``'s test split, wall and CPU seconds."""
    from pykeen.evaluation import RankBasedEvaluator

    started, cpu = time.perf_counter(), time.process_time()
    result = RankBasedEvaluator().evaluate(
        model,
        torch.from_numpy(kb.test),
        additional_filter_triples=[torch.from_numpy(kb.train), torch.from_numpy(kb.valid)],
        batch_size=batch_size,
        use_tqdm=False,
    )
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {key: result.get_metric(f"both.realistic.{name}") for key, name in METRICS}, seconds, cpu


def show(metrics: dict) -> str:
    return "  ".join(f"{key} {metrics[key]:.5f}" for key, _ in METRICS)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    header_done = False
    for norm in args.norm:
        settings = dict(dim=args.dim, norm=norm, threads=args.threads, eval_batch_size=args.eval_batch_size, batch_size=512, negatives=128, learning_rate=5e-3)
        worker = KBWorker("kb", args.data, "transe", settings)  # sets torch's thread count
        worker.configure("bench-eval-vs-pykeen", args.seed)
        kb = worker.kb
        if not header_done:
            import pykeen

            _common.header("eval_vs_pykeen: full filtered test ranking, KBWorker.evaluate vs PyKEEN RankBasedEvaluator")
            print(f"pykeen {pykeen.get_version()}")
            print(
                f"KB: {args.data}: {len(kb.entities)} entities, {len(kb.relations)} relations, {len(kb.test)} test triples -> "
                f"{2 * len(kb.test)} queries (tail + head) against all entities, filtered by train+valid+test"
            )
            header_done = True
        trained = worker.train(0, args.train_steps) if args.train_steps else {"seconds": 0.0, "loss": float("nan")}
        model = pykeen_model(worker, norm)
        assert torch.get_num_threads() == args.threads, (torch.get_num_threads(), args.threads)
        print()
        print(f"== TransE L{norm}, dim {args.dim}, {args.threads} thread(s); trained {args.train_steps} steps ({trained['seconds']:.1f} s, loss {trained['loss']:.4f})")
        sys.stdout.flush()
        ours_runs: list[tuple[float, float]] = []
        theirs_runs: dict[int, list[tuple[float, float]]] = {size: [] for size in args.pykeen_batch_size}
        for repeat in range(args.repeats):
            started, cpu = time.perf_counter(), time.process_time()
            ours = worker.evaluate("test")
            ours_runs.append((time.perf_counter() - started, time.process_time() - cpu))
            print(f"  repeat {repeat} ours (eval_batch_size {args.eval_batch_size}): {ours_runs[-1][0]:7.2f} s (CPU {ours_runs[-1][1]:.2f} s)  {show(ours)} | load {os.getloadavg()[0]:.2f}")
            sys.stdout.flush()
            for size in args.pykeen_batch_size:
                theirs, seconds, cpu = pykeen_evaluate(model, kb, size)
                theirs_runs[size].append((seconds, cpu))
                gap = max(abs(theirs[key] - ours[key]) for key, _ in METRICS)
                print(
                    f"  repeat {repeat} PyKEEN (batch_size {size:4d}): {seconds:7.2f} s (CPU {cpu:.2f} s)  {show(theirs)} | "
                    f"largest metric gap {gap:.2e} | load {os.getloadavg()[0]:.2f}"
                )
                sys.stdout.flush()
        ours_median = [statistics.median(run[i] for run in ours_runs) for i in (0, 1)]
        best_size = min(theirs_runs, key=lambda size: statistics.median(run[0] for run in theirs_runs[size]))
        theirs_median = [statistics.median(run[i] for run in theirs_runs[best_size]) for i in (0, 1)]
        print(
            f"  median: ours {ours_median[0]:.2f} s ({2 * len(kb.test) / ours_median[0]:.0f} queries/s), PyKEEN {theirs_median[0]:.2f} s at its fastest batch size "
            f"{best_size} ({2 * len(kb.test) / theirs_median[0]:.0f} queries/s); PyKEEN / ours = {theirs_median[0] / ours_median[0]:.2f}x wall, "
            f"{theirs_median[1] / ours_median[1]:.2f}x CPU"
        )
        sys.stdout.flush()
        del worker, model
    print()
    print(f"load average at end: {_common.load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
