"""Diagnostic (not product code): a fresh dsom student's first steps, which subsets its policy samples step by step.

Usage, from the repository root: python policy_early_steps.py STEPS [setting=value ...] (DSoMSettings, e.g. policy_learning_rate=0.01)
"""
import sys
import torch
from pathlib import Path
from kdmkb.kb_worker.worker import KBWorker, AlignmentView
from kdmkb.services.limits import Limits

out = Path("/work/main/bench/state/dsom-fb15k237-e2"); folder = out / "kb"
torch.set_num_threads(1)
base = {"rank": 200, "batch_size": 1000, "learning_rate": 0.1, "threads": 1, "device": "cpu"}
def view(worker, peers):
    v = worker.vocabulary(); e = {n: i for i, n in enumerate(v["entity"])}; r = {n: i for i, n in enumerate(v["relation"])}
    return AlignmentView(e, r, {p: (list(e.values()), list(r.values())) for p in peers})
teachers = {}
for name, extra in {"numeric": {"features": "numeric"}, "structure": {}, "text": {"features": "text"}}.items():
    w = KBWorker(name, folder, "feature-complex", {**base, **extra}, Limits(max_label_bytes=2**40))
    w.configure("dsom-teachers", 0, {}, view(w, ["student"])); w.load(out / "teachers" / name, 136); teachers[name] = w
settings = {"hidden": 1024, "state": "compact", "distillation": "kd"}
settings.update(dict(kv.split("=") for kv in sys.argv[2:]))
distill = {"combination": "dsom", "relation_weight": 0.0, "temperature": 4.0, "combination_settings": settings}
student = KBWorker("student", folder, "feature-complex", {**base, "n3": 0.0}, Limits(max_label_bytes=2**40))
student.configure("dsom-rl-kd", 0, distill, view(student, list(teachers)))
for round_ in range(int(sys.argv[1])):
    payloads = []
    for name, teacher in teachers.items():
        _, asked = student.ask(round_, 1, name, "all")
        payloads.append(teacher.answer(asked)[1])
    result = student.train(round_, 1, *payloads)
    print(round_, f"loss {result['loss']:.3f}", dict(sorted(result["teacher_subsets"].items(), key=lambda kv: -kv[1])), flush=True)
