"""Import cost of the package, side by side with transformers in the same run.

Each statement runs in a fresh interpreter, in turn, `--repeats` times (interleaved, so load from other
processes falls on all of them alike); the figures are medians of wall seconds, and the ratios are
against `import transformers` (lazy: it loads almost nothing) and against importing transformers'
model base class (torch and the modeling stack: what any transformers model family pays). It also
lists which heavy packages each statement loads: `import hf_tinyvit` must not load datasets or timm.

    python benchmarks/import_time.py [--repeats 7] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

STATEMENTS = {
    "import transformers": "import transformers",
    "transformers PreTrainedModel + ViT processor": (
        "from transformers import PreTrainedModel, ViTImageProcessor"
    ),
    "import hf_tinyvit": "import hf_tinyvit",
    "from hf_tinyvit import DistillationTrainer": "from hf_tinyvit import DistillationTrainer",
}
HEAVY = ("torch", "torchvision", "datasets", "timm", "accelerate", "pyarrow", "evaluate", "sklearn")


def run_once(statement: str) -> tuple[float, list[str]]:
    probe = f"{statement}\nimport sys, json\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return time.perf_counter() - start, json.loads(done.stdout.strip().splitlines()[-1])


def measure(repeats: int) -> dict:
    samples = {name: [] for name in STATEMENTS}
    loaded = {}
    for name, statement in STATEMENTS.items():  # warm the file cache once
        _, loaded[name] = run_once(statement)
    for _ in range(repeats):
        for name, statement in STATEMENTS.items():
            seconds, _ = run_once(statement)
            samples[name].append(seconds)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    return {
        "repeats": repeats,
        "python": sys.version.split()[0],
        "rows": [
            {
                "statement": name,
                "median_s": medians[name],
                "min_s": min(samples[name]),
                "max_s": max(samples[name]),
                "vs_import_transformers": medians[name] / medians["import transformers"],
                "vs_transformers_modeling": medians[name] / medians["transformers PreTrainedModel + ViT processor"],
                "loads": loaded[name],
            }
            for name in STATEMENTS
        ],
    }


def markdown(results: dict) -> str:
    lines = [
        f"Fresh interpreter per statement, interleaved, median of {results['repeats']} (Python {results['python']}).",
        "",
        "| statement | median (s) | min-max (s) | / `import transformers` | / transformers modeling | heavy packages loaded |",
        "|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        lines.append(
            f"| `{row['statement']}` | {row['median_s']:.2f} | {row['min_s']:.2f}-{row['max_s']:.2f} | "
            f"{row['vs_import_transformers']:.2f}x | {row['vs_transformers_modeling']:.2f}x | {', '.join(row['loads'])} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--markdown", default=None, help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    results = measure(args.repeats)
    table = markdown(results)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if args.markdown:
        Path(args.markdown).write_text("# Import time\n\n`python benchmarks/import_time.py`\n\n" + table)
    return results


if __name__ == "__main__":
    main()
