"""Diagnostic (not product code): on train tail queries, each teacher subset's CE against the student's, rewards, advantages, policy probabilities.

Usage, from the repository root: python policy_advantages.py ROW ROUND
"""
import sys, collections
import torch, torch.nn.functional as F
sys.path.insert(0, "/work/main/bench")
from pathlib import Path
from kdmkb.kb_worker.worker import KBWorker, AlignmentView
from kdmkb.kb_worker.worker_types.base import QueryKind
from kdmkb.kb_worker import dsom
from kdmkb.services.limits import Limits

out = Path("/work/main/bench/state/dsom-fb15k237-e2"); folder = out / "kb"; row = sys.argv[1]; round_ = int(sys.argv[2])
torch.set_num_threads(1)
base = {"rank": 200, "batch_size": 1000, "learning_rate": 0.1, "threads": 1, "device": "cpu"}
def view(worker, peers):
    v = worker.vocabulary(); e = {n: i for i, n in enumerate(v["entity"])}; r = {n: i for i, n in enumerate(v["relation"])}
    return AlignmentView(e, r, {p: (list(e.values()), list(r.values())) for p in peers})
teachers = {}
for name, extra in {"numeric": {"features": "numeric"}, "structure": {}, "text": {"features": "text"}}.items():
    w = KBWorker(name, folder, "feature-complex", {**base, **extra}, Limits(max_label_bytes=2**40))
    w.configure("dsom-teachers", 0, {}, view(w, ["student"])); w.load(out / "teachers" / name, 136); teachers[name] = w
distill = {"combination": "dsom", "relation_weight": 0.0, "temperature": 4.0, "combination_settings": {"hidden": 1024, "state": "compact", "distillation": "kd"}}
student = KBWorker("student", folder, "feature-complex", {**base, "n3": 0.0})
student.configure(f"dsom-{row}", 0, distill, view(student, list(teachers)))
student.load(out / "rows" / row, round_)
train = torch.as_tensor(student.kb.train)[:4000]
answers = collections.defaultdict(set)
for h, r, t in student.kb.train.tolist(): answers[(h, r)].add(t)
queries, targets = train[:, :2], train[:, 2]
with torch.no_grad():
    T = torch.stack([w.model.score(QueryKind.TAIL, queries) for w in teachers.values()])  # [3, q, E]
    S = student.model.score(QueryKind.TAIL, queries)
    ce_s = F.cross_entropy(S, targets, reduction="none")
    subsets = dsom.teacher_subsets(3); names = list(teachers)
    print("student CE mean", ce_s.mean().item())
    r_all = dsom.rewards(T.mean(0), S, targets)
    print("all-mean CE", F.cross_entropy(T.mean(0), targets, reduction="none").mean().item(), "reward +1 share", (r_all > 0).float().mean().item())
    for subset in subsets:
        label = "+".join(n for n, m in zip(names, subset.tolist()) if m)
        c = dsom.combined_logits(T, subset.expand(len(targets), -1))
        ce = F.cross_entropy(c, targets, reduction="none"); rw = dsom.rewards(c, S, targets)
        adv = rw - r_all
        print(f"{label:24s} CE {ce.mean():.3f} reward+1 {(rw>0).float().mean():.3f} adv mean {adv.mean():+.3f} adv>0 {(adv>0).float().mean():.3f} adv<0 {(adv<0).float().mean():.3f}")
    known = torch.zeros(len(targets), T.shape[-1], dtype=torch.bool)
    for i, (h, r) in enumerate(queries.tolist()): known[i, list(answers[(h, r)])] = True
    state = dsom.compact_state(T, targets, known, 8)
    policy = student.student.combination.modules()
    p = policy(state).exp()
    print("policy mean probs", [f"{x:.4f}" for x in p.mean(0).tolist()], "subset order", ["+".join(n for n, m in zip(names, s.tolist()) if m) for s in subsets])
    print("state mean", state.mean(0)[:11].tolist())
    torch.manual_seed(0)
    fresh = dsom.PolicyNetwork(state.shape[1], 1024, 7)
    print("fresh policy mean probs", [f"{x:.4f}" for x in fresh(state).exp().mean(0).tolist()])
