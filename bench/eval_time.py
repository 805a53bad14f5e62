"""Wall time of the full filtered evaluation (head and tail queries) of a KB's test set.

Run from the repository root::

    python bench/eval_time.py --data ../shared/data/wn18rr --dim 200 500 --norm 1 2 --threads 1 2

For every combination of ``--dim``, ``--norm`` and ``--threads`` a TransE
:class:`kdmkb.kb_worker.worker.KBWorker` is built on ``--data`` (the whole folder as one KB, so the
filter is its train + valid + test triples), configured, and ``KBWorker.evaluate('test')`` is
timed: every test triple is ranked twice (tail given head and relation, head given relation and
tail) against every entity, filtered. The model is untrained (its random initialisation): the
cost of ranking does not depend on the values of the embeddings, only on their shapes, so the
metrics printed alongside are those of a random model and mean nothing.
"""

from __future__ import annotations

import _common  # noqa: F401  (sets OMP_WAIT_POLICY before torch is imported)

import argparse
import itertools
import os
import statistics
import sys
import time

import torch

from kdmkb.kb_worker.worker import KBWorker


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", required=True, help="KB folder whose test split is evaluated (train/valid/test).")
    parser.add_argument("--model", default="transe", help="Worker type.")
    parser.add_argument("--dim", type=int, nargs="+", default=[200, 500])
    parser.add_argument("--norm", type=int, nargs="+", default=[1, 2], choices=(1, 2), help="TransE distance(s): L1 and/or L2.")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch intra-op threads.")
    parser.add_argument("--eval-batch-size", type=int, default=256, help="WorkerSettings.eval_batch_size (queries ranked at once).")
    parser.add_argument("--repeats", type=int, default=1, help="Evaluations per configuration; the median is reported.")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configs = list(itertools.product(args.dim, args.norm, args.threads))
    results = []
    header_done = False
    for dim, norm, threads in configs:
        settings = dict(dim=dim, norm=norm, threads=threads, eval_batch_size=args.eval_batch_size)
        worker = KBWorker("kb", args.data, args.model, settings)  # sets torch's thread count
        worker.configure("bench-eval", args.seed)
        if not header_done:
            _common.header("eval_time: full filtered test evaluation, KBWorker.evaluate('test')", threads=f"{' / '.join(map(str, args.threads))} (per row)")
            kb = worker.kb
            print(
                f"KB: {args.data}: {len(kb.entities)} entities, {len(kb.relations)} relations, {len(kb.test)} test triples "
                f"-> {2 * len(kb.test)} queries (tail + head), each ranked against all {len(kb.entities)} entities, "
                f"filtered by train+valid+test; eval_batch_size {args.eval_batch_size}"
            )
            print("model: untrained (random initialisation); timing depends only on shapes, so the metrics are meaningless")
            print()
            print(f"{'model':>8} {'dim':>4} {'norm':>4} {'threads':>7} {'seconds':>8} {'queries/s':>10}  runs (s)  | load(1min)  mrr(random)")
            sys.stdout.flush()
            header_done = True
        assert torch.get_num_threads() == threads, (torch.get_num_threads(), threads)
        runs, outcome = [], {}
        for _ in range(args.repeats):
            started = time.perf_counter()
            outcome = worker.evaluate("test")
            runs.append(time.perf_counter() - started)
        seconds = statistics.median(runs)
        queries = int(outcome["num_queries"])
        load = os.getloadavg()[0]
        results.append((dim, norm, threads, seconds, queries))
        print(
            f"{args.model:>8} {dim:>4} {'L' + str(norm):>4} {threads:>7} {seconds:8.2f} {queries / seconds:10.1f}  "
            f"{' '.join(f'{r:.2f}' for r in runs)}  | {load:.2f}  {outcome['mrr']:.5f}"
        )
        sys.stdout.flush()
        del worker
    print()
    print(f"load average at end: {_common.load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
