#!/usr/bin/env bash
# Before (d96ccd4, /work/baseline) and after (this tree), one after the other on a quiet machine.
set -u
export MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296
NEW=/work/main; OLD=/work/baseline; PY=/work/main/.venv/bin/python; PK=/tmp/benchvenv/bin/python
out=/tmp/bench_out; mkdir -p $out
run() { echo "### $1"; shift; echo "\$ $*"; /usr/bin/time -f "wall %e s" "$@"; }
cd /tmp
run "demo before" env PYTHONPATH=$OLD $PY -m services.cli demo --report $out/demo_before.json > $out/demo_before.txt 2>&1
run "demo after" $NEW/.venv/bin/kdmkb demo --report $out/demo_after.json > $out/demo_after.txt 2>&1
cd $NEW
for side in before after; do
  if [ $side = before ]; then root=$OLD; env="env PYTHONPATH=$OLD"; else root=$NEW; env=""; fi
  run "throughput umls $side" $env $PK -W ignore $root/bench/throughput.py --data $NEW/services/datasets/umls --blocks 10 --epochs-per-block 5 --variants ours bare pykeen > $out/throughput_umls_$side.txt 2>&1
  run "step_cost wn18rr $side" $env $PY $root/bench/step_cost.py --data ../shared/data/wn18rr --split-dir /tmp/wn18rr-split --refresh-epochs 4 --warmup-epochs 1 --measure-steps 120 > $out/step_cost_$side.txt 2>&1
done
echo done
