"""Ranks the test split of one round's checkpoint of a one-KB text-bench row (filtered, by degree); a diagnostic, not product code.

Usage: python rank_round.py ROW_STATE_DIR CHECKPOINT_DIR ROUND OUT_JSON
"""
import json
import sys
import time
import tomllib

from kdmkb.kb_worker.worker import KBWorker

state_dir, checkpoint_dir, round_, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
job = tomllib.load(open(f"{state_dir}/job.toml", "rb"))
kb = job["kb"][0]
worker = KBWorker(kb["name"], kb["data"], kb["worker_type"], kb["settings"])
worker.configure("rank-round", job["job"]["seed"])
step = worker.load(checkpoint_dir, round_)
started = time.perf_counter()
metrics = worker.evaluate("test", by_degree=True)
seconds = time.perf_counter() - started
json.dump({"row": kb["name"], "round": round_, "step": step, "ranking_seconds": seconds, "test": metrics}, open(out, "w"), indent=1)
print(f"round {round_} (step {step}): test MRR {metrics['mrr']:.4f} MR {metrics['mr']:.2f} H@1 {metrics['hits_at_1']:.4f} H@3 {metrics['hits_at_3']:.4f} H@10 {metrics['hits_at_10']:.4f} ranked in {seconds:.0f} s")
