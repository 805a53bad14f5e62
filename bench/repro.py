"""KD-MKB's Tables 2-3 and Figures 3-4 (Sourty et al., COLING 2020) re-run through kdmkb's own service.

Run from the repository root, inside the loopback-only namespace that Ray needs here::

    scripts/loopback-only .venv/bin/python bench/repro.py run --dataset ../shared/data/wn18rr --kbs 2 \\
        --worker-settings '{"dim": 200, "negatives": 128, "batch_size": 512}' --job-settings '{"rounds": 40, "steps_per_round": 85}' \\
        --out bench/results/repro/wn18rr-n2
    .venv/bin/python bench/repro.py render bench/results/repro/*/results.json --doc docs/results.md

``run`` cuts the dataset's train triples into ``--kbs`` KBs exactly like ``kdmkb split`` (random
partition, entity alignment ``--align``), then, for every strategy in ``--strategies``, submits the
same job (same KBs, worker settings, budget and seed) to an embedded coordinator through its gRPC
API and records every KB's filtered test metrics. ``--strategy-settings`` holds the strategies' own
settings (``warmup_steps``, ``pretrain_rounds``, ``teacher``, ``exchange``, ...); each strategy is
given the ones it accepts. ``--kbs 1`` trains the whole dataset as one KB
(strategy ``none``): the paper's n = 1 row. ``--align`` accepts several rules for the alignment
sweep of Figures 3-4 (e.g. ``co-occurring co-occurring+0.2 ... all``), each a separate split with
the same seed, so the partition is the same and only the alignment grows.

It writes ``results.json`` (every KB, strategy and alignment) and ``results.md`` (the paper's
Table 3 layout: per metric the best and worst value over the KBs, and %Chg, the cooperative
best's relative gain over that strategy's best) into ``--out``. ``render`` gathers several ``results.json`` into the
section between ``<!-- quality:begin -->`` and ``<!-- quality:end -->`` of a Markdown document.
"""

from __future__ import annotations

import _common  # first: sets OMP_WAIT_POLICY before torch and faiss are imported

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from kdmkb.coordinator.strategies import STRATEGIES as REGISTERED_STRATEGIES
from kdmkb.services.client import embedded_coordinator, job_report
from kdmkb.services.config import JobFile
from kdmkb.services.split import SplitSummary, job_file_dict, split_dataset

STRATEGIES = ("none", "one-way", "sequential", "cooperative")
METRICS = ("hits@1", "hits@3", "hits@10", "mrr")  # job_report keys
HEADINGS = ("H@1", "H@3", "H@10", "MRR")
# Job settings that became the strategies' own settings (architecture v2), with their defaults:
# --job-settings still takes them, and results.json files written before record them in job_settings.
MOVED_TO_STRATEGIES = {"warmup_steps": 0, "pretrain_rounds": None, "teacher": None}
# Job settings added since, whose defaults are what every earlier run did (paper eq. 5).
ADDED_JOB_SETTINGS = {"combination": "mean-kl", "combination_settings": {}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="Split, train every strategy, write results.json and results.md.")
    run.add_argument("--dataset", type=Path, required=True, help="Dataset folder (train/valid/test TSV).")
    run.add_argument("--kbs", type=int, default=2, help="Number of KBs (1: the whole dataset as one KB, strategy none).")
    run.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    run.add_argument("--align", nargs="+", default=["co-occurring"], help="Entity alignment rule(s), as kdmkb split --align.")
    run.add_argument("--worker-type", default="transe")
    run.add_argument("--worker-settings", type=json.loads, default={}, help="JSON object of worker settings.")
    run.add_argument("--job-settings", type=json.loads, default={}, help="JSON object of job settings (rounds, steps_per_round, alpha, ...).")
    run.add_argument(
        "--strategy-settings",
        type=json.loads,
        default={},
        help="JSON object of the strategies' own settings (warmup_steps: cooperative; pretrain_rounds: one-way, sequential; "
        "teacher: one-way, a KB of the split such as kb1; exchange, candidates: all but none); each strategy is given the ones it accepts.",
    )
    run.add_argument("--seed", type=int, default=0, help="Split seed and job seed.")
    run.add_argument("--out", type=Path, required=True)
    render = commands.add_parser("render", help="Write the tables of several results.json into a Markdown document.")
    render.add_argument("inputs", nargs="+", type=Path)
    render.add_argument("--doc", type=Path, default=Path("docs/results.md"))
    return parser.parse_args(argv)


def job_file(args: argparse.Namespace, summary: SplitSummary | None) -> tuple[JobFile, dict]:
    """The job of one strategy run and its aligned counts; no split trains the whole dataset as one KB."""
    job = {"eval_every": 0, "checkpoint_every": 0, "seed": args.seed, **args.job_settings}
    if summary is None:
        raw = {"job": job, "kb": [{"name": "full", "data": str(args.dataset.resolve()), "worker_type": args.worker_type, "settings": args.worker_settings}]}
        return JobFile.model_validate(raw), {}
    raw = job_file_dict(summary, worker_type=args.worker_type, worker_settings=args.worker_settings, job=job, relative=False)
    return JobFile.model_validate(raw), {f"{a}~{b}": list(counts) for (a, b), counts in summary.pair_counts.items()}


def split_strategy_settings(args: argparse.Namespace) -> dict:
    """``--strategy-settings``, with the keys of ``--job-settings`` that are now strategy settings moved into it."""
    settings = dict(args.strategy_settings)
    for key in MOVED_TO_STRATEGIES:
        if key in args.job_settings:
            if key in settings:
                raise SystemExit(f"{key} is given in both --job-settings and --strategy-settings")
            settings[key] = args.job_settings.pop(key)
    accepted = {name for strategy in REGISTERED_STRATEGIES for name in REGISTERED_STRATEGIES.get(strategy).settings_model.model_fields}
    unknown = sorted(set(settings) - accepted)
    if unknown:
        raise SystemExit(f"--strategy-settings: no strategy accepts {', '.join(unknown)} (accepted: {', '.join(sorted(accepted))})")
    return settings


def for_strategy(config: JobFile, strategy: str, settings: dict, prefix: str) -> JobFile:
    """The job file of one strategy run: the strategy and the settings it accepts (``teacher`` named as renamed)."""
    accepted = REGISTERED_STRATEGIES.get(strategy).settings_model.model_fields
    own = {key: value for key, value in settings.items() if key in accepted}
    if own.get("teacher") is not None:
        own["teacher"] = prefix + own["teacher"]
    return JobFile.model_validate({**config.model_dump(mode="json", exclude_none=True), "strategy": strategy, "strategy_settings": own})


def run(args: argparse.Namespace) -> None:
    _common.header(f"KD-MKB reproduction: {args.dataset.name}, n = {args.kbs}")
    if args.kbs == 1 and len(args.align) > 1:
        raise SystemExit("--kbs 1 trains the whole dataset as one KB: there is no alignment to sweep")
    strategy_settings = split_strategy_settings(args)
    strategies = ["none"] if args.kbs == 1 else args.strategies
    runs = []
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kdmkb-repro-") as scratch, embedded_coordinator(str(Path(scratch) / "state")) as client:
        for number, align in enumerate(args.align):
            summary = None if args.kbs == 1 else split_dataset(args.dataset, Path(scratch) / f"split-{number}", kbs=args.kbs, seed=args.seed, align=align)
            config, aligned = job_file(args, summary)
            # One set of KB workers per alignment (names unique per coordinator), reused by every
            # strategy: a job starts from fresh models, and idle workers would hold their memory.
            prefix = f"a{number}-"
            renamed = rename_kbs(config, prefix)
            client.register(renamed)
            for strategy in strategies:
                started = time.perf_counter()
                job = client.run(client.create_job(for_strategy(renamed, strategy, strategy_settings, prefix)).job_id)
                report = job_report(job)
                seconds = time.perf_counter() - started
                if report["state"] != "SUCCEEDED":
                    raise SystemExit(f"{strategy} ({align}) ended {report['state']}: {job.error}")
                kbs = {name.removeprefix(prefix): metrics for name, metrics in report["kbs"].items()}
                runs.append({"strategy": strategy, "align": align if args.kbs > 1 else "-", "aligned": aligned, "seconds": round(seconds, 1), "kbs": kbs})
                print(f"{strategy:12s} align={runs[-1]['align']:22s} {seconds:7.1f} s  " + "  ".join(f"{kb}: MRR {m['mrr']:.4f} H@10 {m['hits@10']:.4f}" for kb, m in kbs.items()))
                sys.stdout.flush()
    result = {
        "dataset": args.dataset.name,
        "kbs": args.kbs,
        "worker_type": args.worker_type,
        "worker_settings": args.worker_settings,
        "job_settings": config.job.model_dump(exclude_none=True),
        "strategy_settings": strategy_settings,
        "seed": args.seed,
        "command": sys.argv,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "runs": runs,
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (args.out / "results.md").write_text(tables(result) + "\n", encoding="utf-8")
    print(tables(result))
    print(f"load average at end: {_common.load_average()}")


def rename_kbs(config: JobFile, prefix: str) -> JobFile:
    raw = config.model_dump(mode="json", exclude_none=True)
    for kb in raw["kb"]:
        kb["name"] = prefix + kb["name"]
    for alignment in raw["alignment"]:
        alignment["kbs"] = [prefix + name for name in alignment["kbs"]]
    return JobFile.model_validate(raw)


def best_and_worst(run: dict) -> tuple[dict, dict]:
    """Per metric, the highest and the lowest value over the run's KBs (the paper's Best and Worst columns)."""
    values = list(run["kbs"].values())
    return {m: max(v[m] for v in values) for m in METRICS}, {m: min(v[m] for v in values) for m in METRICS}


def percent(value: float, metric: str) -> str:
    return f"{value:.4f}" if metric == "mrr" else f"{100 * value:.2f}"


def tables(result: dict) -> str:
    """Table 3's layout per alignment: best/worst value over the KBs per strategy and the cooperative best's %Chg over that best."""
    by_align: dict[str, list[dict]] = {}
    for run in result["runs"]:
        by_align.setdefault(run["align"], []).append(run)
    compared = {align: runs for align, runs in by_align.items() if result["kbs"] == 1 or len(runs) > 1}
    if not compared:
        return ""  # a sweep of one strategy: sweep_tables shows it
    lines = [heading(result), ""]
    for align, runs in compared.items():
        cooperative = next((best_and_worst(run)[0] for run in runs if run["strategy"] == "cooperative"), None)
        lines += [f"alignment: {align}" + (f" ({', '.join(f'{pair}: {e} entities, {r} relations' for pair, (e, r) in runs[0]['aligned'].items())})" if runs[0]["aligned"] else ""), ""]
        lines.append("| strategy | " + " | ".join(f"{h} best | {h} worst | {h} %Chg" for h in HEADINGS) + " | wall s |")
        lines.append("|---|" + "---|" * (3 * len(HEADINGS) + 1))
        for run in runs:
            best, worst = best_and_worst(run)
            cells = []
            for metric in METRICS:
                change = "–" if cooperative is None or run["strategy"] == "cooperative" or not best[metric] else f"{100 * (cooperative[metric] - best[metric]) / best[metric]:+.1f}%"
                cells.append(f"{percent(best[metric], metric)} | {percent(worst[metric], metric)} | {change}")
            lines.append(f"| {run['strategy']} | " + " | ".join(cells) + f" | {run['seconds']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def heading(result: dict, title: str = "") -> str:
    settings = ", ".join(f"{k}={v}" for k, v in result["worker_settings"].items())
    job = result["job_settings"]
    steps = job["rounds"] * job["steps_per_round"]
    strategy = "".join(f"; {k}={v}" for k, v in protocol_settings(result)[1].items())
    return f"#### {title}{result['dataset']}, n = {result['kbs']}, {steps:,} steps per KB ({result['worker_type']}: {settings}{strategy}; seed {result['seed']})"


def protocol_settings(result: dict) -> tuple[dict, dict]:
    """The job settings and strategy settings a result ran with, the same whichever version of this script wrote it.

    Files written before architecture v2 keep ``warmup_steps`` (and ``pretrain_rounds``, ``teacher``
    when set) in ``job_settings`` and have no ``strategy_settings``; later ones record the
    ``combination`` every earlier run used. Settings at those defaults are left out.
    """
    job, strategy = dict(result["job_settings"]), dict(result.get("strategy_settings") or {})
    for key, default in MOVED_TO_STRATEGIES.items():
        if key in job:
            strategy.setdefault(key, job.pop(key))
        if key in strategy and strategy[key] == default:
            del strategy[key]
    for key, default in ADDED_JOB_SETTINGS.items():
        if key in job and job[key] == default:
            del job[key]
    return job, strategy


def protocol(result: dict, kbs: int | None = None) -> str:
    """What makes two results comparable: dataset, KB count, model, its settings, the job's and the strategies'."""
    job, strategy = protocol_settings(result)
    return json.dumps([result["dataset"], result["kbs"] if kbs is None else kbs, result["worker_type"], result["worker_settings"], job, strategy, result["seed"]])


def pooled(results: list[dict]) -> list[dict]:
    """One result per protocol, its runs gathered from every file (e.g. a sweep run beside the
    strategies' run, or strategies run in two sessions) and ordered by alignment, then strategy."""
    groups: dict[str, dict] = {}
    for result in results:
        key = protocol(result)
        if key in groups:
            groups[key]["runs"] = groups[key]["runs"] + result["runs"]
        else:
            groups[key] = {**result}
    for result in groups.values():
        aligns = list(dict.fromkeys(run["align"] for run in result["runs"]))
        result["runs"] = sorted(result["runs"], key=lambda run: (aligns.index(run["align"]), STRATEGIES.index(run["strategy"])))
    return sorted(groups.values(), key=lambda r: (r["dataset"], r["worker_type"], r["kbs"], r["job_settings"]["rounds"] * r["job_settings"]["steps_per_round"]))


def sweep_tables(results: list[dict]) -> str:
    """Figures 3-4 as tables: the best KB's metrics of cooperative per alignment size, beside none and n = 1.

    ``results`` are pooled (one per protocol); only protocols with two or more alignments are shown.
    """
    lines = []
    for result in results:
        runs = result["runs"]
        cooperative = {run["align"]: run for run in runs if run["strategy"] == "cooperative"}
        if len(cooperative) < 2:
            continue
        single = [run for other in results if protocol(other) == protocol(result, kbs=1) for run in other["runs"]]
        references = [("n = 1, whole dataset (no alignment)", run) for run in single]
        references += [(f"none ({run['align']})", run) for run in runs if run["strategy"] == "none"]
        rows = references + [(f"cooperative, {align}", run) for align, run in sorted(cooperative.items(), key=lambda item: aligned_entities(item[1]))]
        figure = 3 if result["dataset"] == "wn18rr" else 4
        lines += [f"{heading(result, 'alignment sweep: ')} (the paper's Figure {figure})", ""]
        lines.append("| run | aligned entities per pair | " + " | ".join(f"{h} best" for h in HEADINGS) + " | MRR worst |")
        lines.append("|---|---|" + "---|" * (len(HEADINGS) + 1))
        for label, run in rows:
            best, worst = best_and_worst(run)
            entities = aligned_entities(run)
            lines.append(f"| {label} | {entities:,.0f} | " if entities else f"| {label} | – | ")
            lines[-1] += " | ".join(percent(best[m], m) for m in METRICS) + f" | {percent(worst['mrr'], 'mrr')} |"
        lines.append("")
    return "\n".join(lines)


def aligned_entities(run: dict) -> float:
    """Mean aligned entity count over the run's KB pairs (0 without alignment)."""
    counts = [entities for entities, _ in run["aligned"].values()]
    return sum(counts) / len(counts) if counts else 0.0


def render(args: argparse.Namespace) -> None:
    results = pooled([json.loads(path.read_text(encoding="utf-8")) for path in args.inputs])
    body = "\n".join(table for table in map(tables, results) if table) + "\n" + sweep_tables(results)
    _common.write_between_markers(args.doc, "quality", body)
    print(f"{len(args.inputs)} result files, {len(results)} protocols written to {args.doc}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run(args) if args.command == "run" else render(args)


if __name__ == "__main__":
    main()
