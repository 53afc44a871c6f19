"""Student accuracy with and without quantised teacher logits: the digits demo (examples/demo.py) run twice with
the same seeds, once storing the teacher's top-k as float16 and once as sqrt8 (`--topk_encoding sqrt8`), every
other setting equal. Prints and writes the accuracy of each student per seed, the paired differences, and the
store's bytes per record.

    python benchmarks/demo_quantisation.py [--seeds 3] [--quick] [--output benchmarks/results/demo-quantisation-<machine>.md]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine_info, machine_slug  # noqa: E402

DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "demo.py")
ENCODINGS = ("float16", "sqrt8")


def run_demo(encoding: str, seeds: int, quick: bool, folder: str) -> dict:
    output = os.path.join(folder, encoding)
    argv = [sys.executable, DEMO, "--seeds", str(seeds), "--output_dir", output, "--topk_encoding", encoding]
    if quick:
        argv += ["--max_train_samples", "256", "--max_eval_samples", "128", "--epochs", "2", "--deit_epochs", "2",
                 "--teacher_epochs", "2", "--stored_epochs", "2"]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(output, "results.json")) as handle:
        summary = json.load(handle)
    summary["bench_wall_s"] = time.perf_counter() - started
    return summary


def markdown(results: dict) -> str:
    info, runs = results["machine"], results["runs"]
    seeds = runs["float16"]["seeds"]
    lines = [
        "# Student accuracy with quantised teacher logits (digits demo)",
        "",
        f"`{results['command']}` on {info['cpu']} ({info['cpu_count']} cores, shared), {results['seconds']:.0f} s. "
        f"`examples/demo.py` run twice with seeds {seeds}, the store's top-k encoded as float16 and as sqrt8, every "
        "other setting the demo's default (a test_resnet teacher, top-3 of 10 classes over 8 stored epochs). The "
        "teacher, its views and every student's initialisation are the same in both runs; only the stored targets "
        "differ.",
        "",
        f"Store: float16 {runs['float16']['store_bytes_per_record']:.2f} B/record, sqrt8 "
        f"{runs['sqrt8']['store_bytes_per_record']:.2f} B/record (the official 4 + 4k: 16).",
        "",
        "| setting | student | float16 accuracy per seed (%) | sqrt8 accuracy per seed (%) | mean difference, "
        "sqrt8 - float16 (points) |",
        "|---|---|---|---|---|",
    ]
    for key, row in runs["float16"]["runs"].items():
        other = runs["sqrt8"]["runs"][key]
        differences = [100 * (b - a) for a, b in zip(row["accuracies"], other["accuracies"])]
        spread = f" (per seed {', '.join(f'{d:+.1f}' for d in differences)})" if len(differences) > 1 else ""
        setting, label = key.split("/", 1)
        lines.append(
            f"| {setting} | {label} | {', '.join(f'{100 * a:.1f}' for a in row['accuracies'])} | "
            f"{', '.join(f'{100 * a:.1f}' for a in other['accuracies'])} | {statistics.fmean(differences):+.2f}{spread} |"
        )
    lines += ["", "Labels-only and online-teacher students read no stored targets: their two runs are the same run."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a few samples and epochs: a smoke run")
    parser.add_argument("--output", default=None, help="markdown file for the results (and .json beside it)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        runs = {encoding: run_demo(encoding, args.seeds, args.quick, folder) for encoding in ENCODINGS}
    command = f"python benchmarks/demo_quantisation.py --seeds {args.seeds}" + (" --quick" if args.quick else "")
    results = {"command": command, "machine": machine_info(), "seconds": time.perf_counter() - start, "runs": runs}
    text = markdown(results)
    print(text)
    if args.output or not args.quick:
        output = args.output or os.path.join(
            os.path.dirname(os.path.abspath(__file__)), "results", f"demo-quantisation-{machine_slug(results['machine'])}.md"
        )
        with open(output, "w") as handle:
            handle.write(text)
        with open(os.path.splitext(output)[0] + ".json", "w") as handle:
            json.dump(results, handle, indent=1)
    return results


if __name__ == "__main__":
    main()
