"""Diagnostics of the dsom rows (not product code), on the FB15k-237 work folder's trained teachers.

From the repository root:
    python policy_diagnostics.py early STEPS [setting=value ...]   # a fresh rl-kd student's first steps: the subsets its policy samples
    python policy_diagnostics.py advantages ROW ROUND              # a trained student on train tail queries: each subset's CE, reward, advantage
    python policy_diagnostics.py lists ROW_FOLDER ROUND            # a trained student's compact answers: bytes per query when one candidate list serves 1,000 to 50 queries of a kind
The settings are DSoMSettings', e.g. policy_learning_rate=0.01.
"""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # bench/, for the runner's alignment
from dsom_results import identity_view
from kdmkb.kb_worker import dsom
from kdmkb.kb_worker.worker import KBWorker
from kdmkb.kb_worker.worker_types.base import QueryKind
from kdmkb.services.limits import Limits

OUT = Path("/work/main/bench/state/dsom-fb15k237-e2")
BASE = {"rank": 200, "batch_size": 1000, "learning_rate": 0.1, "threads": 1, "device": "cpu"}
torch.set_num_threads(1)


def teachers():
    trained = {}
    for name, extra in {"numeric": {"features": "numeric"}, "structure": {}, "text": {"features": "text"}}.items():
        worker = KBWorker(name, OUT / "kb", "feature-complex", {**BASE, **extra}, Limits(max_label_bytes=2**40))
        worker.configure("dsom-teachers", 0, {}, identity_view(worker, ["student"]))
        worker.load(OUT / "teachers" / name, 136)
        trained[name] = worker
    return trained


def student(job, names, settings):
    distill = {"combination": "dsom", "relation_weight": 0.0, "temperature": 4.0, "combination_settings": {"hidden": 1024, "state": "compact", "distillation": "kd", **settings}}
    worker = KBWorker("student", OUT / "kb", "feature-complex", {**BASE, "n3": 0.0}, Limits(max_label_bytes=2**40))
    worker.configure(job, 0, distill, identity_view(worker, names))
    return worker


def early(steps, settings):
    taught = teachers()
    learner = student("dsom-rl-kd", list(taught), settings)
    for round_ in range(steps):
        payloads = []
        for name, teacher in taught.items():
            _, asked = learner.ask(round_, 1, name, "all")
            payloads.append(teacher.answer(asked)[1])
        result = learner.train(round_, 1, *payloads)
        print(round_, f"loss {result['loss']:.3f}", dict(sorted(result["teacher_subsets"].items(), key=lambda kv: -kv[1])), flush=True)


def advantages(row, round_):
    taught = teachers()
    learner = student(f"dsom-{row}", list(taught), {})
    learner.load(OUT / "rows" / row, round_)
    train = torch.as_tensor(learner.kb.train)[:4000]
    queries, targets = train[:, :2], train[:, 2]
    with torch.no_grad():
        logits = torch.stack([w.model.score(QueryKind.TAIL, queries) for w in taught.values()])  # [3, q, E]
        own = learner.model.score(QueryKind.TAIL, queries)
        print("student CE mean", F.cross_entropy(own, targets, reduction="none").mean().item())
        baseline = dsom.rewards(logits.mean(0), own, targets)
        print("all-mean CE", F.cross_entropy(logits.mean(0), targets, reduction="none").mean().item(), "reward +1 share", (baseline > 0).float().mean().item())
        subsets, names = dsom.teacher_subsets(3), list(taught)
        labels = ["+".join(n for n, m in zip(names, subset.tolist(), strict=True) if m) for subset in subsets]
        for label, subset in zip(labels, subsets, strict=True):
            combined = dsom.combined_logits(logits, subset.expand(len(targets), -1))
            ce, reward = F.cross_entropy(combined, targets, reduction="none"), dsom.rewards(combined, own, targets)
            advantage = reward - baseline
            print(f"{label:24s} CE {ce.mean():.3f} reward+1 {(reward > 0).float().mean():.3f} adv mean {advantage.mean():+.3f} adv>0 {(advantage > 0).float().mean():.3f} adv<0 {(advantage < 0).float().mean():.3f}")
        known = torch.zeros(len(targets), logits.shape[-1], dtype=torch.bool)
        known[learner.student.train_answers.pairs(QueryKind.TAIL, queries)] = True
        state = dsom.compact_state(logits, targets, known, 8)
        print("policy mean probs", [f"{x:.4f}" for x in learner.student.combination.modules()(state).exp().mean(0).tolist()], "subset order", labels)
        print("state mean", state.mean(0)[:11].tolist())
        torch.manual_seed(0)
        print("fresh policy mean probs", [f"{x:.4f}" for x in dsom.PolicyNetwork(state.shape[1], 1024, 7)(state).exp().mean(0).tolist()])


def lists(folder, round_):
    taught = teachers()
    learner = student("dsom-dsom-compact-answers", list(taught), {"distillation": "ndkd"})
    learner.load(Path(folder), round_)
    train = torch.from_numpy(learner.kb.train)
    sample = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:8000]
    print(f"# {len(sample)} train triples (head and tail queries), answered by the structure teacher; full answers: 4 x {learner.model.num_entities:,} entities")
    for size in (1000, 500, 250, 100, 50):
        with torch.no_grad():
            asked = learner.student.ask(0, list(sample.split(size)), train, "structure", "shared")
        stats, _ = taught["structure"].answer(asked)
        answers = [len(learner.student.train_answers.pairs(kind, queries)[1].unique()) for rows in sample.split(size) for kind, queries in ((QueryKind.TAIL, train[rows, :2]), (QueryKind.HEAD, train[rows, 1:]))]
        print(f"queries per list {size:5d}  answer bytes per query {stats['bytes'] / (2 * len(sample)):9,.0f}  train answers listed {sum(answers) / len(answers):7,.0f}", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "early":
        early(int(sys.argv[2]), dict(kv.split("=") for kv in sys.argv[3:]))
    elif sys.argv[1] == "lists":
        lists(sys.argv[2], int(sys.argv[3]))
    else:
        advantages(sys.argv[2], int(sys.argv[3]))
