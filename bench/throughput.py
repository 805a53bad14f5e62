"""Single-KB training throughput: our KBWorker vs a bare PyTorch loop of the same math vs PyKEEN 1.11.1.

Run from the repository root (PyKEEN comes with ``pip install -e '.[bench]'``)::

    python bench/throughput.py --data ../shared/data/umls

Variants, all TransE L1 with the same dim, negatives per positive, batch, margin, initialisation
(uniform in +-(margin + 2) / dim), self-adversarial loss and temperature, Adam and learning rate,
trained in this one process with the same torch thread count:

* ``ours``: :meth:`kdmkb.kb_worker.worker.KBWorker.train` of a ``transe`` worker, the code path a job
  runs (without Ray: actor calls are a per-round cost, not a per-step one).
* ``bare``: the same math written as a plain PyTorch loop: per positive, a coin flip picks the
  corrupted side, negatives are uniform over all entities, and negatives that are training
  triples are masked out of the loss (the worker's filter, done the same way).
* ``bare-unfiltered``: ``bare`` without that filter (what the filter costs, and PyKEEN's default).
* ``bare-fused-adam``: ``bare`` with ``torch.optim.Adam(fused=True)``, the same update in one pass
  over the tables instead of one pass per operation (what that option would bring the worker).
* ``pykeen``: PyKEEN's ``TransE`` (no entity normalisation, our initialisation), ``SLCWATrainingLoop``
  with its basic negative sampler (unfiltered, its default) and ``NSSALoss``.
* ``pykeen-filtered``: the same with ``filtered=True, filterer="python-set"`` (exact filter).

Semantics that still differ, by design of each library: PyKEEN's sampler corrupts the head for
the first half of a batch's negatives and the tail for the second half, and never draws the
positive's own entity; ours flips a coin per positive and may draw it (such a negative is a
training triple, so the filter masks it). PyKEEN can only be driven by whole epochs.

Every variant trains ``--epochs-per-block`` epochs per block, the variants take turns block by
block (in a rotating order) so that load from other processes hits them alike, and figures are
medians over the blocks after the first (warm-up). Positive triples per second is the figure;
the process's CPU time is printed beside it because, with one thread, other processes taking
the CPU away do not inflate it. After the last block every model's embeddings are ranked on the
test split by the same filtered evaluator (ours), so that the comparison is of models that learn
equally; ``--pykeen-evaluator`` also ranks PyKEEN's models with PyKEEN's own evaluator.
"""

from __future__ import annotations

import _common  # noqa: F401  (sets OMP_WAIT_POLICY before torch is imported)

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from eval_vs_pykeen import pykeen_evaluate
from kdmkb.kb_worker.data import contains_sorted
from kdmkb.kb_worker.worker import KBWorker

VARIANTS = ("ours", "bare", "bare-unfiltered", "bare-fused-adam", "pykeen", "pykeen-filtered")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", required=True, help="Dataset folder (train/valid/test), trained as one KB.")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--negatives", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=5e-3)
    parser.add_argument("--margin", type=float, default=9.0)
    parser.add_argument("--temperature", type=float, default=1.0, help="Self-adversarial sampling temperature.")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads.")
    parser.add_argument("--epochs-per-block", type=int, default=5)
    parser.add_argument("--blocks", type=int, default=20, help="Blocks per variant; the first is reported apart as warm-up.")
    parser.add_argument("--no-eval", action="store_true", help="Skip the test ranking of the trained models.")
    parser.add_argument("--pykeen-evaluator", action="store_true", help="Also rank PyKEEN's models with PyKEEN's RankBasedEvaluator.")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


class BareTransE:
    """The transe worker's training math as a plain loop: what our worker's code path is measured against."""

    def __init__(self, train: np.ndarray, num_entities: int, num_relations: int, args: argparse.Namespace, *, filtered: bool, fused_adam: bool = False) -> None:
        bound = (args.margin + 2.0) / args.dim
        self.entity = torch.empty(num_entities, args.dim).uniform_(-bound, bound).requires_grad_()
        self.relation = torch.empty(num_relations, args.dim).uniform_(-bound, bound).requires_grad_()
        self.optimizer = torch.optim.Adam([self.entity, self.relation], lr=args.learning_rate, fused=fused_adam or None)
        self.train = torch.from_numpy(train)
        self.num_entities, self.num_relations = num_entities, num_relations
        self.keys = torch.sort(self._keys(self.train[:, 0], self.train[:, 1], self.train[:, 2])).values if filtered else None
        self.args = args

    def _keys(self, heads, relations, tails):
        return (heads * self.num_relations + relations) * self.num_entities + tails

    def epochs(self, count: int) -> int:
        """Trains ``count`` epochs of shuffled full batches (the last partial batch dropped); returns the steps."""
        size, steps = self.args.batch_size, 0
        for _ in range(count):
            order = torch.randperm(len(self.train))
            for start in range(0, len(order) - size + 1, size):
                self.step(self.train[order[start : start + size]])
                steps += 1
        return steps

    def step(self, batch: torch.Tensor) -> None:
        args = self.args
        heads, relations, tails = batch.unbind(dim=1)
        size = batch.shape[0]
        negatives = torch.randint(self.num_entities, (size, args.negatives))
        corrupt_tail = torch.rand(size) < 0.5
        rows = self.entity.index_select(0, torch.cat([heads, tails, negatives.reshape(-1)]))
        head_vectors, tail_vectors, negative_vectors = rows.split([size, size, size * args.negatives])
        relation_vectors = self.relation.index_select(0, relations)
        tail_queries = head_vectors + relation_vectors
        positive = args.margin - (tail_queries - tail_vectors).abs().sum(-1)
        queries = torch.where(corrupt_tail[:, None], tail_queries, tail_vectors - relation_vectors)
        negative = args.margin - (queries[:, None, :] - negative_vectors.view(size, args.negatives, -1)).abs().sum(-1)
        with torch.no_grad():
            logits = args.temperature * negative
            if self.keys is not None:
                fake_heads = torch.where(corrupt_tail[:, None], heads[:, None], negatives)
                fake_tails = torch.where(corrupt_tail[:, None], negatives, tails[:, None])
                true = contains_sorted(self.keys, self._keys(fake_heads, relations[:, None], fake_tails))
                logits = logits.masked_fill(true, float("-inf"))
            weights = torch.softmax(logits, dim=1).nan_to_num(0.0)
        loss = (-F.logsigmoid(positive) - (weights * F.logsigmoid(-negative)).sum(dim=1)).mean() / 2
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.entity.detach(), self.relation.detach()


class PyKEENTransE:
    """PyKEEN's TransE and sLCWA loop configured to our settings, trained by whole epochs."""

    def __init__(self, train: np.ndarray, num_entities: int, num_relations: int, args: argparse.Namespace, *, filtered: bool) -> None:
        from pykeen.losses import NSSALoss
        from pykeen.models import TransE
        from pykeen.training import SLCWATrainingLoop
        from pykeen.triples import CoreTriplesFactory

        self.factory = CoreTriplesFactory.create(torch.from_numpy(train), num_entities=num_entities, num_relations=num_relations)
        bound = (args.margin + 2.0) / args.dim
        uniform = functools.partial(torch.nn.init.uniform_, a=-bound, b=bound)
        self.model = TransE(
            triples_factory=self.factory,
            embedding_dim=args.dim,
            scoring_fct_norm=1,
            entity_initializer=uniform,
            relation_initializer=uniform,
            entity_constrainer=None,
            loss=NSSALoss(margin=args.margin, adversarial_temperature=args.temperature),
            random_seed=args.seed,
        )
        sampler = dict(num_negs_per_pos=args.negatives, **(dict(filtered=True, filterer="python-set") if filtered else {}))
        self.loop = SLCWATrainingLoop(
            model=self.model,
            triples_factory=self.factory,
            optimizer="adam",
            optimizer_kwargs=dict(lr=args.learning_rate),
            negative_sampler="basic",
            negative_sampler_kwargs=sampler,
            automatic_memory_optimization=False,
        )
        self.checkpoints = tempfile.mkdtemp(prefix="kdmkb-bench-pykeen-")
        self.epochs_done = 0
        self.batch_size = args.batch_size

    def epochs(self, count: int) -> int:
        self.loop.train(
            triples_factory=self.factory,
            num_epochs=self.epochs_done + count,  # PyKEEN's num_epochs is the total when continuing
            batch_size=self.batch_size,
            continue_training=self.epochs_done > 0,
            drop_last=True,
            use_tqdm=False,
            checkpoint_directory=self.checkpoints,
        )
        self.epochs_done += count
        return count * (self.factory.num_triples // self.batch_size)

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.model.entity_representations[0]().detach(), self.model.relation_representations[0]().detach())


class OurWorker:
    """Adapter: our KBWorker trained through ``train(round, steps)``, the call a job makes every round."""

    def __init__(self, worker: KBWorker) -> None:
        self.worker = worker
        self.round = 0

    def epochs(self, count: int) -> int:
        steps = count * (len(self.worker.kb.train) // self.worker.settings.batch_size)
        self.worker.train(self.round, steps)
        self.round += 1
        return steps

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.worker.model.model
        return model.entity.weight.detach(), model.relation.weight.detach()


def evaluate_weights(evaluator: KBWorker, weights: tuple[torch.Tensor, torch.Tensor]) -> dict:
    """Filtered test ranking of ``weights`` by our evaluator (the same code for every variant)."""
    model = evaluator.model.model
    with torch.no_grad():
        model.entity.weight.copy_(weights[0])
        model.relation.weight.copy_(weights[1])
    evaluator.model.updates += 1  # new weights: a cached search index of the old ones must not be reused
    return evaluator.evaluate("test")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = dict(
        dim=args.dim,
        negatives=args.negatives,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        margin=args.margin,
        adversarial_temperature=args.temperature,
        norm=1,
        threads=args.threads,
        loss="self-adversarial",
    )
    torch.manual_seed(args.seed)
    ours = KBWorker("kb", args.data, "transe", settings)  # sets torch's thread count
    ours.configure("bench-throughput", args.seed)
    kb = ours.kb
    shape = (kb.train, len(kb.entities), len(kb.relations), args)
    builders = {
        "ours": lambda: OurWorker(ours),
        "bare": lambda: BareTransE(*shape, filtered=True),
        "bare-unfiltered": lambda: BareTransE(*shape, filtered=False),
        "bare-fused-adam": lambda: BareTransE(*shape, filtered=True, fused_adam=True),
        "pykeen": lambda: PyKEENTransE(*shape, filtered=False),
        "pykeen-filtered": lambda: PyKEENTransE(*shape, filtered=True),
    }
    variants = {name: builders[name]() for name in args.variants}
    torch.set_num_threads(args.threads)  # PyKEEN must not have changed it

    _common.header("throughput: single-KB training, positive triples/s, side by side")
    steps_per_epoch = len(kb.train) // args.batch_size
    print(
        f"data: {args.data}: {len(kb.train)} train triples ({steps_per_epoch} full batches/epoch, the rest dropped), "
        f"{len(kb.entities)} entities, {len(kb.relations)} relations, {len(kb.test)} test triples"
    )
    print(f"settings: TransE L1 {settings}")
    if any(name.startswith("pykeen") for name in variants):
        import pykeen

        print(f"pykeen {pykeen.get_version()}")
    print(f"blocks: {args.blocks} per variant of {args.epochs_per_block} epochs ({args.epochs_per_block * steps_per_epoch} steps), rotating order")
    print()
    sys.stdout.flush()

    records: dict[str, list[tuple[float, float, int]]] = {name: [] for name in variants}
    names = list(variants)
    for block in range(args.blocks):
        shift = block % len(names)
        for name in names[shift:] + names[:shift]:
            wall, cpu = time.perf_counter(), time.process_time()
            steps = variants[name].epochs(args.epochs_per_block)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            triples = steps * args.batch_size
            records[name].append((wall, cpu, triples))
            print(
                f"  block {block:3d} {name:>16}: {triples / wall:9.0f} triples/s wall, {triples / cpu:9.0f} per CPU second "
                f"({wall:6.2f} s, {steps} steps) | load {os.getloadavg()[0]:.2f}"
            )
            sys.stdout.flush()
    assert torch.get_num_threads() == args.threads, (torch.get_num_threads(), args.threads)

    measured = slice(1, None) if args.blocks > 1 else slice(None)
    print()
    print(f"== medians over blocks {'1..' + str(args.blocks - 1) if args.blocks > 1 else '0'} (block 0 is warm-up)")
    medians = {}
    for name, rows in records.items():
        wall = statistics.median(t / w for w, _, t in rows[measured])
        cpu = statistics.median(t / c for _, c, t in rows[measured])
        medians[name] = (wall, cpu)
        print(f"  {name:>16}: {wall:9.0f} triples/s wall (min {min(t / w for w, _, t in rows[measured]):.0f}, max {max(t / w for w, _, t in rows[measured]):.0f}), {cpu:9.0f} triples per CPU second; warm-up block {rows[0][2] / rows[0][0]:.0f}")
    for numerator, denominator in (("ours", "bare"), ("ours", "bare-unfiltered"), ("bare", "bare-unfiltered"), ("bare-fused-adam", "bare"), ("ours", "pykeen"), ("ours", "pykeen-filtered"), ("bare-unfiltered", "pykeen")):
        if numerator in medians and denominator in medians:
            wall = medians[numerator][0] / medians[denominator][0]
            cpu = medians[numerator][1] / medians[denominator][1]
            print(f"  ratio {numerator} / {denominator}: {wall:.3f} wall, {cpu:.3f} CPU")
    sys.stdout.flush()

    if not args.no_eval:
        epochs = args.blocks * args.epochs_per_block
        print()
        print(f"== filtered test ranking after {epochs} epochs each, by our evaluator (KBWorker.evaluate, train+valid+test filter)")
        evaluator = KBWorker("evaluator", args.data, "transe", settings)
        evaluator.configure("bench-throughput-eval", args.seed)
        for name, variant in variants.items():
            result = evaluate_weights(evaluator, variant.weights())
            line = f"  {name:>16}: MRR {result['mrr']:.4f}  H@1 {result['hits_at_1']:.4f}  H@3 {result['hits_at_3']:.4f}  H@10 {result['hits_at_10']:.4f}  ({result['seconds']:.1f} s)"
            if args.pykeen_evaluator and isinstance(variant, PyKEENTransE):
                own, seconds, _ = pykeen_evaluate(variant.model, kb, 256)
                line += f" | PyKEEN's evaluator: MRR {own['mrr']:.4f}  H@10 {own['hits_at_10']:.4f} ({seconds:.1f} s)"
            print(line)
            sys.stdout.flush()
    print(f"load average at end: {_common.load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
