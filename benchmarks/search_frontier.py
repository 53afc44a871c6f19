"""Do the published TinyViT-5M / 11M / 21M satisfy their own budgets, and where do they sit on the
parameters-vs-throughput frontier of the student search's space around them?

    python benchmarks/search_frontier.py [--threads 1] [--batch-size 16] [--two-moves 6] [--device cpu]

For each preset at 224 (1000 classes): its parameters and MACs (torch.utils.flop_counter) against the
paper's 5.4M / 11M / 21M and 1.3G / 2.0G / 4.3G, then every architecture one search move away, every
one-head width shift between two stages and a few seeded two-move ones, all measured like the search
measures them (`hf_tinyvit.measure_student`: images/s in inference mode on this device). On a shared
machine the load drifts, so the preset is measured again right before every candidate and each
candidate's speed is taken relative to that measurement (paired, as `_common.interleaved_medians`
alternates its functions). The frontier at a preset's size is the best throughput of any measured
candidate with at least its parameters; a preset is on it when none of them is faster. MACs give the
same check without timing noise. Writes benchmarks/results/search-frontier-<machine>.md/.json
and docs/search/preset-frontier.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine_info, machine_slug, torch_threads  # noqa: E402
from hf_tinyvit import SearchSpace, TinyViTConfig, TinyViTForImageClassification, measure_student  # noqa: E402
from hf_tinyvit.tools.search import measure_throughput  # noqa: E402

# TinyViT paper, Table 1 / the brief: parameters and MACs at 224, at the precision the paper gives them.
PUBLISHED = {
    "tinyvit-5m-224": {"params": 5.4e6, "macs": 1.3e9, "params_digits": 1},
    "tinyvit-11m-224": {"params": 11e6, "macs": 2.0e9, "params_digits": 0},
    "tinyvit-21m-224": {"params": 21e6, "macs": 4.3e9, "params_digits": 0},
}
REPO = Path(__file__).resolve().parents[1]


def within_published(measured: float, published: float, digits: int, scale: float) -> bool:
    """True when `measured` rounds to at most the published figure at the precision it was printed with."""
    return round(measured / scale, digits) <= round(published / scale, digits)


def width_shifts(arch, space: SearchSpace) -> list[tuple[str, object]]:
    """Two-move candidates that move one head's width from one stage to another (both directions), the
    trade the paper's per-stage widths make: parameters are cheap in late, low-resolution stages."""
    found = []
    for source in range(len(arch.embed_dims)):
        narrowed = dict(space.neighbours(arch, 224)).get(
            f"embed_dims[{source}] {arch.embed_dims[source]}->{arch.embed_dims[source] - space.width_step}"
        )
        if narrowed is None:
            continue
        for target in range(len(arch.embed_dims)):
            if target == source:
                continue
            change = f"embed_dims[{target}] {arch.embed_dims[target]}->{arch.embed_dims[target] + space.width_step}"
            widened = dict(space.neighbours(narrowed, 224)).get(change)
            if widened is not None:
                found.append((f"width {space.width_step} from stage {source} to {target}", widened))
    return found


def candidates(preset: str, space: SearchSpace, two_moves: int, seed: int) -> list[tuple[str, object]]:
    """The preset, every one-move neighbour, every one-head width shift between stages, and `two_moves`
    seeded random two-move ones (all distinct)."""
    base = space.architecture(TinyViTConfig.from_preset(preset), 224)
    found = [("preset", base)] + space.neighbours(base, 224)
    seen = {arch for _, arch in found}
    for change, arch in width_shifts(base, space):
        if arch not in seen:
            seen.add(arch)
            found.append((change, arch))
    rng = np.random.Generator(np.random.PCG64(seed))
    one_move = space.neighbours(base, 224)
    attempts = 0
    while two_moves and attempts < 50 * two_moves:
        attempts += 1
        first_change, first = one_move[int(rng.integers(len(one_move)))]
        second = space.neighbours(first, 224)
        change, arch = second[int(rng.integers(len(second)))]
        if arch not in seen:
            seen.add(arch)
            found.append((f"{first_change}; {change}", arch))
            two_moves -= 1
    return found


def frontier_gap(params: np.ndarray, speed: np.ndarray, index: int) -> tuple[float, int]:
    """(the best speed among the others with at least `index`'s parameters / its own speed, how many of
    those others are also faster). A ratio <= 1 means it is on the frontier."""
    others = np.arange(len(params)) != index
    bigger = others & (params >= params[index])
    if not bigger.any():
        return 0.0, 0
    return float(speed[bigger].max() / speed[index]), int((bigger & (speed > speed[index])).sum())


def measure_all(presets, args, space) -> dict:
    """Per preset: the preset's own row, then one row per candidate whose `relative_speed` is its img/s
    over the preset's, measured right before it; `images_per_second` is that ratio times the median of
    the preset's measurements."""
    results = {}
    for preset in presets:
        found = candidates(preset, space, args.two_moves, args.seed)
        config = found[0][1].to_config(space.head_dim, image_size=224, num_labels=1000)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            reference = TinyViTForImageClassification(config)

        def preset_speed() -> float:
            return measure_throughput(reference, batch_size=args.batch_size, image_size=224,
                                      device=torch.device(args.device), repeats=3, warmup=1)  # fmt: skip

        preset_speed()  # the first measurement of a process or a shape also sets up kernels
        rows, references = [], []
        for change, arch in found:
            before = preset_speed()
            config = arch.to_config(space.head_dim, image_size=224, num_labels=1000)
            cost = measure_student(config, batch_size=args.batch_size, image_size=224, device=args.device, repeats=3)
            references.append(before)
            rows.append({"change": change, "architecture": arch.describe(), **cost.to_dict(),
                         "measured_images_per_second": cost.images_per_second,
                         "relative_speed": cost.images_per_second / before})  # fmt: skip
        typical = float(np.median(references))
        # The preset is the reference: its own paired ratio only shows the timing noise of this machine.
        rows[0]["self_check"], rows[0]["relative_speed"] = rows[0]["relative_speed"], 1.0
        for row in rows:
            row["images_per_second"] = row["relative_speed"] * typical
            print(f"  {preset:<16s} {row['change']:<48s} {row['parameters'] / 1e6:6.2f}M {row['macs'] / 1e9:5.2f}G "
                  f"{row['relative_speed']:5.2f}x the preset", flush=True)  # fmt: skip
        results[preset] = rows
    return results


def summarise(results: dict) -> dict:
    summary = {}
    for preset, rows in results.items():
        params = np.array([r["parameters"] for r in rows], dtype=float)
        speed = np.array([r["images_per_second"] for r in rows])
        inverse_macs = 1.0 / np.array([r["macs"] for r in rows], dtype=float)
        published = PUBLISHED[preset]
        preset_row = rows[0]
        in_budget = params <= params[0]
        speed_gap, faster = frontier_gap(params, speed, 0)
        macs_gap, cheaper = frontier_gap(params, inverse_macs, 0)
        summary[preset] = {
            "parameters": preset_row["parameters"],
            "macs": preset_row["macs"],
            "images_per_second": preset_row["images_per_second"],
            "params_within_published": within_published(
                preset_row["parameters"], published["params"], published["params_digits"], 1e6
            ),
            "macs_within_published": within_published(preset_row["macs"], published["macs"], 1, 1e9),
            "candidates": len(rows) - 1,
            "candidates_within_its_parameters": int(in_budget[1:].sum()),
            "preset_against_itself": preset_row["self_check"],
            "frontier_speed_over_preset": speed_gap,
            "candidates_with_more_params_and_speed": faster,
            "frontier_inverse_macs_over_preset": macs_gap,
            "candidates_with_more_params_and_fewer_macs": cheaper,
        }
    return summary


def markdown(summary: dict, results: dict, settings: dict) -> str:
    lines = [
        "# Published TinyViT presets against the student search's frontier",
        "",
        f"Machine: {settings['machine']['cpu']} ({settings['machine']['cpu_count']} cores, shared), "
        f"{settings['threads']} thread(s), batch {settings['batch_size']}, 224x224, 1000 classes, "
        f"{settings['device']}; {settings['wall_s']:.0f} s. Candidates: every one-move neighbour in the search "
        f"space, every one-head width shift between two stages and {settings['two_moves']} seeded two-move ones "
        "per preset. Throughput is measured on a shared "
        "CPU (fastest of >= 3 batches), each candidate relative to the preset measured just before it, so the "
        "ratios hold better than the absolute img/s; MACs are exact.",
        "",
        "| preset | params (M) | MACs (G) | within the paper's 5.4/11/21M and 1.3/2.0/4.3G | img/s | itself, paired "
        "(noise) | candidates | frontier img/s at >= its params / its own | faster and larger | same by 1/MACs | "
        "fewer MACs and larger |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for preset, s in summary.items():
        budget = "yes" if s["params_within_published"] and s["macs_within_published"] else "no"
        lines.append(
            f"| {preset} | {s['parameters'] / 1e6:.2f} | {s['macs'] / 1e9:.2f} | {budget} | "
            f"{s['images_per_second']:.1f} | {s['preset_against_itself']:.2f}x | {s['candidates']} | "
            f"{s['frontier_speed_over_preset']:.2f}x | "
            f"{s['candidates_with_more_params_and_speed']} | {s['frontier_inverse_macs_over_preset']:.2f}x | "
            f"{s['candidates_with_more_params_and_fewer_macs']} |"
        )
    lines += ["", "Candidates that have at least the preset's parameters and run faster:", ""]
    for preset, rows in results.items():
        base = rows[0]
        better = [r for r in rows[1:] if r["parameters"] >= base["parameters"]
                  and r["images_per_second"] > base["images_per_second"]]  # fmt: skip
        better.sort(key=lambda r: -r["images_per_second"])
        lines.append(f"- {preset} ({base['architecture']}): " + (
            "none" if not better else "; ".join(
                f"{r['change']} ({r['parameters'] / 1e6:.2f}M, {r['macs'] / 1e9:.2f}G, "
                f"{r['images_per_second'] / base['images_per_second']:.2f}x img/s)" for r in better[:5]
            )
        ))  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for (preset, rows), colour in zip(results.items(), ("tab:blue", "tab:green", "tab:purple")):
        params = np.array([r["parameters"] / 1e6 for r in rows])
        speed = np.array([r["images_per_second"] for r in rows])
        ax.scatter(params[1:], speed[1:], s=14, color=colour, alpha=0.5, label=f"{preset} neighbours")
        ax.scatter(params[:1], speed[:1], s=120, marker="*", color=colour, edgecolor="k", label=preset, zorder=3)
    everything = [r for rows in results.values() for r in rows]
    params = np.array([r["parameters"] / 1e6 for r in everything])
    speed = np.array([r["images_per_second"] for r in everything])
    order = np.argsort(-params)
    best, front = -np.inf, []
    for i in order:  # sweep from the largest: a point is on the frontier when it is faster than all larger ones
        if speed[i] > best:
            best = speed[i]
            front.append(i)
    front = np.array(front)[np.argsort(params[front])]
    ax.step(params[front], speed[front], where="post", color="0.4", linewidth=1, label="frontier (all candidates)")
    ax.set_xlabel("parameters (M)")
    ax.set_ylabel("img/s (CPU, measured)")
    ax.set_yscale("log")
    from matplotlib.ticker import ScalarFormatter

    for axis in (ax.yaxis,):
        axis.set_major_formatter(ScalarFormatter())
        axis.set_minor_formatter(ScalarFormatter())
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("TinyViT presets and their search neighbourhoods at 224", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=list(PUBLISHED), choices=list(PUBLISHED))
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1 is steadiest on a shared machine)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--two-moves", type=int, default=4, help="seeded random two-move candidates per preset")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output-dir", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--figure", default=str(REPO / "docs" / "search" / "preset-frontier.png"))
    args = parser.parse_args(argv)
    space = SearchSpace()
    start = time.perf_counter()
    with torch_threads(args.threads):
        results = measure_all(args.presets, args, space)
    info = machine_info(args.device)
    settings = {
        "machine": info, "threads": args.threads, "batch_size": args.batch_size, "two_moves": args.two_moves,
        "seed": args.seed, "device": args.device, "wall_s": time.perf_counter() - start,
    }  # fmt: skip
    summary = summarise(results)
    text = markdown(summary, results, settings)
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    name = f"search-frontier-{machine_slug(info)}"
    (output / f"{name}.md").write_text(text)
    (output / f"{name}.json").write_text(json.dumps({"settings": settings, "summary": summary, "results": results},
                                                    indent=2, default=str) + "\n")  # fmt: skip
    plot(results, Path(args.figure))
    print("\n" + text)
    return summary


if __name__ == "__main__":
    main()
