"""Every benchmark that shows what fast pretraining distillation buys, in one run: training-step cost
with stored vs online teacher, data path, inference vs timm, logit saving and storage, against the goals.

    python benchmarks/run_all.py [--quick] [--device cuda] [--output-dir benchmarks/results]

Writes `<output-dir>/<machine>.md` and `.json` (machine, versions, settings, medians, ratios) and
prints the same tables. `--quick` runs the tiny 32x32 pair and a few inference rows at batch 8 (< 3 min on 2
CPU cores); the full mode adds the TinyViT-21M -> 5M pair at 224 and every inference row.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import inference  # noqa: E402
import inference_deit  # noqa: E402
import teacher_logits  # noqa: E402
import training_step  # noqa: E402
from _common import interleaved_medians, machine_info, machine_slug, torch_threads  # noqa: E402

IMAGENET_1K_IMAGES = 1_281_167
# TinyViT reports 481 GB for ImageNet-21k x 90 epochs at k=100 with 4 + 4k bytes per record; the image
# count this implies (481e9 / (90 * 404)) is the cleaned set the paper distilled on. The full fall-2011
# release has 14,197,122 images; both are projected.
IMAGENET_21K_IMAGES_PAPER = round(481e9 / (90 * (4 + 4 * 100)))
IMAGENET_21K_IMAGES_FULL = 14_197_122
PAPER_V100_IMAGES_PER_S = {"tinyvit-5m-224": 3060, "tinyvit-11m-224": 2468, "tinyvit-21m-224": 1571}


def settings(quick: bool, device: str) -> dict:
    cuda = device.startswith("cuda")
    return {
        "quick": quick,
        "device": device,
        "training_pairs": ["tiny-32"] if quick else ["tiny-32", "tinyvit-21m-to-5m-224"],
        "training_repeats": 4 if quick else 7,
        "training_threads": None if cuda else 1,
        "dataloader_workers": 0,
        "loader_steps": 2 if quick else 4,
        "inference_cases": ["tinyvit-5m-224"] if quick else [case.name for case in inference.CASES],
        "deit_variants": ["tiny"] if quick else ["tiny", "small"],
        "inference_dtype": "bfloat16" if cuda else "float32",
        # The quick run is a smoke run of every row; its CPU inference batch is halved to stay under 3 minutes.
        "inference_batch_size": 256 if cuda else (8 if quick else 16),
        "inference_warmup": 1,
        "inference_iterations": 1 if quick else 3,
        "inference_repeats": 1 if quick else 2,
        "compile": cuda,
        "data_images": 8 if quick else 32,
        "data_repeats": 2 if quick else 4,
        "saving_batches": 1 if quick else 4,
        "storage_records": 4096 if quick else 65536,
    }


# ---- sections ------------------------------------------------------------------------------------


def training_section(config: dict) -> list[dict]:
    """Per core on CPU: with other jobs on the machine, a second OpenMP thread mostly waits at barriers,
    which blurs the small tiny-pair steps far more than it speeds the large ones."""
    results = []
    with torch_threads(config["training_threads"]):
        for name in config["training_pairs"]:
            result = training_step.benchmark_pair(
                training_step.PAIRS[name], repeats=config["training_repeats"], device=config["device"],
                workers=config["dataloader_workers"], loader_steps=config["loader_steps"],
            )  # fmt: skip
            print("\n".join(training_step.format_rows(result)), flush=True)
            results.append(result)
    return results


def data_and_saving_section(config: dict) -> dict:
    """Replay throughput and saving overhead, per core (one intra-op thread) as the figures are per core."""
    recipe = teacher_logits.AugmentationRecipe.tinyvit_pretrain(224)
    with torch_threads(1):
        dataset = teacher_logits.photo_dataset(config["data_images"])
        saving = teacher_logits.saving_overhead(dataset, recipe, batches=config["saving_batches"], batch_size=32)
        e2e = teacher_logits.end_to_end(dataset, recipe, batch_size=16, repeats=config["data_repeats"])
    rates = e2e["replay_per_s"]
    return {
        "images": len(dataset),
        "replay_images_per_core_s": rates,
        "stored_over_timm": rates["stored"] / rates["timm"],
        "augment_over_timm": rates["ours"] / rates["timm"],
        "saving": saving,
        "saving_overhead": saving["storing_s"] / saving["forward_s"],
        "saving_records_per_s": saving["records"] / (saving["forward_s"] + saving["storing_s"]),
        "end_to_end": {"bare_s": e2e["bare_s"], "save_s": e2e["save_s"], "overhead": e2e["save_s"] / e2e["bare_s"] - 1},
    }


def _compiled_rows(case, args) -> list[dict]:
    """torch.compile'd timm and ours (fused) on the same weights; the GPU rows the issue asks for."""
    import timm

    dtype = getattr(torch, args.dtype)
    reference = timm.create_model(case.timm_name, pretrained=False, num_classes=1000).eval()
    ours = inference._Logits(case.build_ours(reference).eval().fuse())
    models = {
        "timm compiled": torch.compile(reference.to(args.device, dtype)),
        "ours fused compiled": torch.compile(ours.to(args.device, dtype)),
    }
    inputs = torch.randn(
        args.batch_size, 3, case.image_size, case.image_size, generator=torch.Generator().manual_seed(args.seed)
    ).to(args.device, dtype)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else None
    with torch.inference_mode():
        timings = interleaved_medians(
            {name: (lambda m=model: m(inputs)) for name, model in models.items()},
            repeats=args.repeats * args.iterations, warmup=args.warmup + 2, sync=sync,
        )  # fmt: skip
    speed = {name: args.batch_size / timing["median_s"] for name, timing in timings.items()}
    return [
        {"case": case.name, "model": name, "images_per_s": value, "ratio": value / speed["timm compiled"]}
        for name, value in speed.items()
    ]


def inference_section(config: dict) -> dict:
    args = SimpleNamespace(
        device=config["device"],
        dtype=config["inference_dtype"],
        batch_size=config["inference_batch_size"],
        seed=0,
        warmup=config["inference_warmup"],
        iterations=config["inference_iterations"],
        repeats=config["inference_repeats"],
    )
    known = {case.name: case for case in inference.CASES}
    tinyvit = []
    for name in config["inference_cases"]:
        tinyvit += inference.run_case(known[name], args)
        if config["compile"]:
            tinyvit += _compiled_rows(known[name], args)
    deit = inference_deit.benchmark_deit(
        config["deit_variants"], batch_size=args.batch_size, warmup=args.warmup,
        iterations=args.iterations * args.repeats, device=args.device, dtype=getattr(torch, args.dtype),
    )  # fmt: skip
    return {"tinyvit": tinyvit, "deit": deit}


def storage_section(config: dict) -> dict:
    rows = []
    for k, num_labels, images, epochs, source in (
        (10, 1000, IMAGENET_1K_IMAGES, 300, "ImageNet-1k train"),
        (100, 21841, IMAGENET_21K_IMAGES_PAPER, 90, "ImageNet-21k, count implied by the paper's 481 GB"),
        (100, 21841, IMAGENET_21K_IMAGES_FULL, 90, "ImageNet-21k fall 2011, full release"),
    ):
        measured = teacher_logits.bytes_per_record(k, num_labels, config["storage_records"], chunk_size=16384)
        official = 4 + 4 * k
        rows.append(
            {
                "k": k, "num_labels": num_labels, "bytes_per_record": measured, "official_bytes": official,
                "ratio": measured / official, "images": images, "epochs": epochs, "dataset": source,
                "projected_gb": measured * images * epochs / 1e9,
                "official_projected_gb": official * images * epochs / 1e9,
            }
        )  # fmt: skip
    return {"records_measured": config["storage_records"], "rows": rows}


# ---- goals ---------------------------------------------------------------------------------------


def _goal(name: str, value: float, threshold: float, *, at_least: bool = False, unit: str = "x", digits: int = 2):
    met = value >= threshold if at_least else value <= threshold
    return {
        "goal": name,
        "measured": f"{value:.{digits}f}{unit}",
        "target": f"{'>=' if at_least else '<='} {threshold:g}{unit}",
        "status": "met" if met else "missed",
    }


def goals(results: dict) -> list[dict]:
    """Each goal of the issue with its measured figure; goals whose rows did not run say so."""
    rows = []
    training = {row["pair"]: row for row in results["training"]}
    pair = training.get("tinyvit-21m-to-5m-224") or training.get("tiny-32")
    if pair is not None:
        label = f"({pair['pair']}, batch {pair['batch_size']})"
        rows += [
            _goal(f"stored step <= 1.05x labels-only {label}", pair["stored_over_labels"], 1.05, digits=3),
            _goal(f"online step >= 1.8x stored {label}", pair["online_over_stored"], 1.8, at_least=True),
            _goal(f"stored peak memory <= labels-only + 5% {label}", pair["stored_memory_over_labels"], 1.05, digits=3),
        ]
    data = results["data"]
    rows.append(_goal("replay (StoredLogitsDataset) >= 0.9x timm's pipeline, per core", data["stored_over_timm"], 0.9,
                      at_least=True))  # fmt: skip
    gpu = results["settings"]["device"].startswith("cuda")
    wanted = {"ours eager": 1.0, "ours fused compiled": 1.0} if gpu else {"ours eager": 1.0, "ours fused": 1.15}
    for row in results["inference"]["tinyvit"]:
        if row["model"] in wanted:
            where = "GPU bf16" if gpu else "CPU"
            name = f"{row['case']} {where} {row['model']} >= {wanted[row['model']]:g}x timm"
            rows.append(_goal(name, row["ratio"], wanted[row["model"]], at_least=True))
    if not gpu:
        rows.append({"goal": "GPU bf16 >= 1.0x timm", "measured": "-", "target": ">= 1x",
                     "status": "not measured (no GPU lent; run_all.py --device cuda)"})  # fmt: skip
    for row in results["storage"]["rows"][:2]:
        name = f"bytes/record <= 4+4k at k={row['k']}"
        rows.append(_goal(name, row["bytes_per_record"], row["official_bytes"], unit=" B", digits=1))
    rows.append(_goal("saving overhead <= 10% of the teacher forward", 100 * data["saving_overhead"], 10, unit="%"))
    return rows


# ---- report --------------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def _header(results: dict) -> list[str]:
    info, config = results["machine"], results["settings"]
    sections = ", ".join(f"{k} {v:.0f} s" for k, v in results["section_s"].items())
    return [
        f"# Benchmarks on {info['cpu']}" + (f" + {info['gpu']}" if info.get("gpu") else ""),
        "",
        f"{info['cpu_count']} CPU cores, torch {info['torch']} ({info['torch_threads']} threads), "
        f"transformers {info['transformers']}, timm {info['timm']}, Python {info['python']}. "
        f"Load average (1, 5, 15 min) at start {info['load_average']}, at end {results['load_average_end']}: "
        "the machine was shared, so read the ratios, which interleaved repeats keep fair, more than the times. "
        f"Mode {'quick' if config['quick'] else 'full'}, device {config['device']}, "
        f"{results['wall_s']:.0f} s in all ({sections}). Times are medians over repeats (TinyViT inference rows: "
        "best of repeats, as benchmarks/inference.py reports them).",
        "",
        "## Goals",
        "",
        *_table(["goal", "measured", "target", "status"], [list(g.values()) for g in results["goals"]]),
        "",
    ]


def _training(results: dict) -> list[str]:
    out = [
        "## Training step (DistillationTrainer.training_step + optimizer step)",
        "",
        "Labels only (`none`), stored top-k logits (`stored`, rebuilt with `sparse_to_dense`), online teacher "
        "(`soft` at alpha=1, tau=1: the teacher's full distribution, under `inference_mode`). Same student "
        "weights, batches and pixels; peak memory from a fresh process per mode, over the steps only. "
        f"torch threads: {results['settings']['training_threads'] or 'default'} (per core on CPU).",
        "",
    ]
    for pair in results["training"]:
        key, memory, loader = pair["peak_memory_key"], pair["memory"], pair["loader"]
        peak = "CUDA max allocated" if "cuda" in key else "RSS"
        out += [f"**{pair['pair']}**: batch {pair['batch_size']} at {pair['image_size']} px, top-{pair['topk']}, "
                f"{pair['repeats']} repeats", ""]  # fmt: skip
        out += _table(
            ["mode", "step s (median)", "images/s", f"peak MiB ({peak})", "RSS growth in steps MiB"],
            [
                [mode, f"{pair['step_s'][mode]:.3f}", f"{pair['images_per_s'][mode]:.1f}",
                 f"{memory[mode][key]:.0f}", f"{memory[mode].get('step_rss_growth_mib', float('nan')):.0f}"]
                for mode in training_step.MODES
            ],
        )  # fmt: skip
        out += [
            "",
            f"stored/labels **{pair['stored_over_labels']:.3f}x**, "
            f"online/stored **{pair['online_over_stored']:.2f}x**; "
            f"peak memory stored/labels {pair['stored_memory_over_labels']:.3f}x, online/stored "
            f"{pair['online_memory_over_stored']:.3f}x. Trainer DataLoader, {loader['workers']} workers: "
            f"{loader['data_s_per_step']:.3f} s waiting for data per {loader['compute_s_per_step']:.3f} s of step, "
            f"**{100 * loader['data_share']:.1f}%** of the loop's time.",
            "",
        ]
    return out


def _data(results: dict) -> list[str]:
    data = results["data"]
    rates, saving = data["replay_images_per_core_s"], data["saving"]
    return [
        "## Data path (one core, tinyvit_pretrain recipe at 224 px, real photos)",
        "",
        *_table(
            ["pipeline", "images/s per core", "vs timm"],
            [
                ["timm create_transform (PIL)", f"{rates['timm']:.1f}", "1.00x"],
                ["AugmentedDataset (torchvision v2)", f"{rates['ours']:.1f}", f"{data['augment_over_timm']:.2f}x"],
                ["StoredLogitsDataset (replay + lookup)", f"{rates['stored']:.1f}", f"{data['stored_over_timm']:.2f}x"],
            ],
        ),
        "",
        "## Logit saving (resnet18 teacher, one core, batch 32, top-10)",
        "",
        f"Bare forward {saving['forward_s']:.3f} s; top-k + encoding + Parquet write {saving['storing_s']:.4f} s for "
        f"{saving['records']} records: overhead **{100 * data['saving_overhead']:.2f}%**, "
        f"{data['saving_records_per_s']:.1f} records/s in all. End to end, save_teacher_logits against augment + "
        f"forward on {data['images']} images: +{100 * data['end_to_end']['overhead']:.1f}% (includes its probe "
        "forward and metadata).",
        "",
    ]


def _inference(results: dict) -> list[str]:
    config, rows = results["settings"], results["inference"]
    tinyvit = [
        [r["case"], r["model"], f"{r['images_per_s']:.1f}", f"{r['ratio']:.2f}x",
         f"{r.get('parity', float('nan')):.1e}"]
        for r in rows["tinyvit"]
    ]  # fmt: skip
    deit = [
        [r["model"], r["implementation"], f"{r['images_per_second']:.1f}", f"{r['ratio_to_timm']:.2f}x",
         f"{r['max_abs_logit_difference_to_timm']:.1e}"]
        for r in rows["deit"]
    ]  # fmt: skip
    paper = ", ".join(f"{k} {v:,}" for k, v in PAPER_V100_IMAGES_PER_S.items())
    return [
        f"## Inference (same weights; {config['device']} {config['inference_dtype']} "
        f"batch {config['inference_batch_size']})",
        "",
        *_table(["model", "implementation", "images/s", "vs timm", "max abs logit diff"], tinyvit + deit),
        "",
        f"Paper, one V100 (images/s): {paper}.",
        "",
    ]


def _storage(results: dict) -> list[str]:
    storage = results["storage"]
    rows = [
        [r["k"], r["num_labels"], f"{r['bytes_per_record']:.1f}", r["official_bytes"], f"{r['ratio']:.3f}",
         f"{r['dataset']} ({r['images']:,}) x {r['epochs']}", f"{r['projected_gb']:.1f}",
         f"{r['official_projected_gb']:.1f}"]
        for r in storage["rows"]
    ]  # fmt: skip
    return [
        f"## Storage (Parquet + zstd, {storage['records_measured']} synthetic peaked teacher outputs per k)",
        "",
        *_table(["k", "classes", "B/record", "official 4+4k", "ratio", "images x epochs", "GB", "official GB"], rows),
        "",
        "The paper reports 16 GB (ImageNet-1k, 300 epochs, k=10) and 481 GB (ImageNet-21k, 90 epochs, k=100).",
        "",
    ]


def markdown(results: dict) -> str:
    sections = (_header, _training, _data, _inference, _storage)
    return "\n".join(line for section in sections for line in section(results))


def run(quick: bool, device: str) -> dict:
    start = time.perf_counter()
    config = settings(quick, device)
    results: dict = {"machine": machine_info(device), "settings": config}
    results["section_s"] = {}
    sections = (("training", training_section), ("data", data_and_saving_section), ("inference", inference_section))
    for key, section in sections:
        begin = time.perf_counter()
        results[key] = section(config)
        results["section_s"][key] = time.perf_counter() - begin
        print(f"[{key}: {results['section_s'][key]:.0f} s]", flush=True)
    deit = results["inference"]["deit"]
    timm_speed = {r["model"]: r["images_per_second"] for r in deit if r["implementation"] == "timm"}
    for row in deit:
        row["ratio_to_timm"] = row["images_per_second"] / timm_speed[row["model"]]
    begin = time.perf_counter()
    results["storage"] = storage_section(config)
    results["section_s"]["storage"] = time.perf_counter() - begin
    results["goals"] = goals(results)
    results["load_average_end"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    results["wall_s"] = time.perf_counter() - start
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny training pair, few inference rows")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for bf16 batch-256 and torch.compile rows")
    parser.add_argument("--output-dir", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device} needs a CUDA GPU; torch sees none")
    results = run(args.quick, args.device)
    name = machine_slug(results["machine"]) + ("-quick" if args.quick else "")
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    report = markdown(results)
    (output / f"{name}.md").write_text(report + "\n")
    (output / f"{name}.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(report)
    print(f"\nwritten: {output / name}.md and .json")
    return results


if __name__ == "__main__":
    main()
