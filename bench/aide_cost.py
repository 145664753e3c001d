"""AIDE's training cost over conventional training, and its results, before and after a change.

The setting of ``bench/aide.py``'s experiment 2 (Shenzhen, 128 px, 5 clean masks, the rest
pseudo-labelled by a model trained on those 5; the same UNet, loss, optimizer, epochs and
batches for both methods), one seed at a time and one method at a time on both cores, so
the wall times are a cost ratio (``bench/aide.py`` runs seeds in parallel workers). Each
seed runs twice in the same invocation: with the library of an earlier commit (``--before``,
a git worktree first on ``PYTHONPATH``) and with this checkout's, both through the library
code the ``aide`` trainer runs (``AIDETrainer``). Reported: seconds of conventional training
and of AIDE, their ratio, test Dice of both (AIDE: the mean softmax of its two networks),
and a paired test of AIDE's per-image test Dice before vs after, with the seed-to-seed spread
of AIDE's mean test Dice to judge it by. Both arms train AIDE with training-time augmentation,
as the app does (``--no-train-augment``: the spec); the after arm also with the app's speed
options where its library has them (``identity_copy``, ``no_grad_precision="auto"``) and the
library's allocator settings (:mod:`emlabel.allocator`) for both of its methods.

    .venv/bin/python bench/aide_cost.py [--before REF] [--seeds 2] [--quick] [--no-train-augment]
                                        [--out bench/results/aide_cost]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import format_table, paired_wilcoxon, run_header, write_json  # noqa: E402

BEFORE = "1f5726c"
"""The last commit computing AIDE's consistency targets for the whole batch."""


def run_arm(seed: int, quick: bool, train_augment: bool) -> dict[str, Any]:
    """One seed in this process: the pseudo-labelled task, conventional training, AIDE."""
    import torch

    sys.path.insert(0, str(ROOT / "bench"))
    import aide as bench_aide  # bench/aide.py: its data, network and conventional training

    from emlabel.methods.aide import AIDETrainer, standardize_semi_supervised

    torch.set_num_threads(2)
    try:  # the library's allocator settings, for both methods (absent before 2026-12-07)
        from emlabel.allocator import keep_freed_memory

        keep_freed_memory()
    except ImportError:
        pass
    s = bench_aide.quick_settings()[1] if quick else bench_aide.ShenzhenSettings()
    data = bench_aide.load_shenzhen(s.size)
    split = bench_aide.shenzhen_split(len(data["names"]), s)
    pool = split["pool"]
    rng = np.random.default_rng([bench_aide.SPLIT_SEED, seed])
    clean = sorted(rng.choice(len(pool), s.n_clean, replace=False).tolist())
    rest = [i for i in range(len(pool)) if i not in clean]
    images, truth = data["images"][pool], data["masks"][pool]
    opts = dataclasses.replace(s.budget.aide_options(seed), train_augment=train_augment)
    speed = {"identity_copy": True, "no_grad_precision": "auto"}  # the app's, where they exist
    fields = {f.name for f in dataclasses.fields(opts)}
    opts = dataclasses.replace(opts, **{k: v for k, v in speed.items() if k in fields})
    factory = bench_aide.net_factory(s.budget.channels)
    repeat = max(1, len(pool) // s.n_clean)

    def train_fn(hq_images: torch.Tensor, hq_labels: torch.Tensor) -> torch.nn.Module:
        net = bench_aide.build_seeded(factory, seed)
        x, y = hq_images.repeat(repeat, 1, 1, 1), hq_labels.repeat(repeat, 1, 1)
        bench_aide.train_conventional(net, lambda _e: (x, y), opts)
        return net

    task = standardize_semi_supervised(images[clean], truth[clean], images[rest], train_fn=train_fn)
    start = time.perf_counter()
    conv = bench_aide.build_seeded(factory, seed)
    bench_aide.train_conventional(conv, lambda _e: (task.images, task.labels), opts)
    conventional_s = time.perf_counter() - start
    start = time.perf_counter()
    trainer = AIDETrainer(factory, task.images, task.labels, hq_mask=task.hq_mask, options=opts)
    trainer.fit()
    aide_s = time.perf_counter() - start
    te = split["test"]
    x, y = data["images"][te], data["masks"][te]
    names = [data["names"][i] for i in te]
    dice_conv = [
        r["dsc"] for r in bench_aide.score(bench_aide.predict(conv, x).argmax(1), y, names)
    ]
    dice_aide = [r["dsc"] for r in bench_aide.score(trainer.predict(x).argmax(1), y, names)]
    return {
        "seed": seed, "conventional_s": conventional_s, "aide_s": aide_s,
        "ratio": aide_s / conventional_s, "epochs": opts.max_epochs,
        "batches_per_epoch": task.images.shape[0] // opts.batch_size,
        "dice_conventional": dice_conv, "dice_aide": dice_aide,
        "aide_epoch_seconds": [h.seconds for h in trainer.history],
        "aide_options": dataclasses.asdict(opts),
    }  # fmt: skip


def arm_in_subprocess(lib: Path, seed: int, quick: bool, train_augment: bool) -> dict[str, Any]:
    """:func:`run_arm` with ``lib`` first on the path (the before or the after library)."""
    env = dict(os.environ, PYTHONPATH=f"{lib}{os.pathsep}{ROOT}", OMP_NUM_THREADS="2")
    command = [sys.executable, str(Path(__file__).resolve()), "--arm", "--seed", str(seed)]
    command += (["--quick"] if quick else []) + ([] if train_augment else ["--no-train-augment"])
    out = subprocess.run(command, env=env, capture_output=True, encoding="utf-8",
                         errors="replace", check=False)  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"arm with {lib} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=BEFORE, help=f"earlier commit (default {BEFORE})")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="bench/results/aide_cost")
    parser.add_argument(
        "--no-train-augment", dest="train_augment", action="store_false",
        help="AIDE without training-time augmentation (the spec; the app turns it on)",
    )  # fmt: skip
    parser.add_argument("--arm", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        print(json.dumps(run_arm(args.seed, args.quick, args.train_augment)))
        return 0
    header = run_header()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="emlabel-aide-cost-") as tmp:
        worktree = Path(tmp) / "before"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree),
                        args.before], check=True, capture_output=True)  # fmt: skip
        try:
            for seed in range(args.seeds):
                for arm, lib in (("before", worktree / "lib"), ("after", ROOT / "lib")):
                    row = {"arm": arm} | arm_in_subprocess(
                        lib, seed, args.quick, args.train_augment
                    )
                    rows.append(row)
                    print(f"seed {seed} {arm}: ratio {row['ratio']:.2f}", file=sys.stderr)
                    partial = Path(args.out).with_suffix(".partial.json")
                    write_json(partial, header | {"before": args.before, "rows": rows})
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(worktree)], check=False)  # fmt: skip
    by_arm = {arm: [r for r in rows if r["arm"] == arm] for arm in ("before", "after")}
    summary = {}
    for arm, arm_rows in by_arm.items():
        summary[arm] = {
            "ratio_mean": float(np.mean([r["ratio"] for r in arm_rows])),
            "aide_s_mean": float(np.mean([r["aide_s"] for r in arm_rows])),
            "conventional_s_mean": float(np.mean([r["conventional_s"] for r in arm_rows])),
            "dice_aide_mean": float(np.mean([np.mean(r["dice_aide"]) for r in arm_rows])),
            "dice_conventional_mean": float(
                np.mean([np.mean(r["dice_conventional"]) for r in arm_rows])
            ),
        }
    seed_means = {arm: [float(np.mean(r["dice_aide"])) for r in arm_rows]
                  for arm, arm_rows in by_arm.items()}  # fmt: skip
    summary["aide_dice_seed_spread"] = {
        arm: float(max(v) - min(v)) if len(v) > 1 else None for arm, v in seed_means.items()
    }  # what seed noise alone moves AIDE's mean test Dice by, in each arm
    after_dice = [d for r in by_arm["after"] for d in r["dice_aide"]]
    before_dice = [d for r in by_arm["before"] for d in r["dice_aide"]]
    summary["aide_dice_after_minus_before"] = paired_wilcoxon(after_dice, before_dice)
    table = format_table(
        ["arm", "seed", "conventional s", "AIDE s", "ratio", "Dice conventional", "Dice AIDE"],
        [[r["arm"], r["seed"], f"{r['conventional_s']:.1f}", f"{r['aide_s']:.1f}",
          f"{r['ratio']:.2f}", f"{np.mean(r['dice_conventional']):.4f}",
          f"{np.mean(r['dice_aide']):.4f}"] for r in rows],
    )  # fmt: skip
    test = summary["aide_dice_after_minus_before"]
    text = (
        f"{table}\n\nmean ratio: before {summary['before']['ratio_mean']:.2f}, after "
        f"{summary['after']['ratio_mean']:.2f} (goal <= 3)\nAIDE test Dice after - before: "
        f"{test.get('mean_diff') or float('nan'):+.4f} (paired Wilcoxon p = "
        f"{test.get('p_value')}; over test images, not seeds)\nseed spread of AIDE's mean test "
        f"Dice (max - min over seeds): before {summary['aide_dice_seed_spread']['before']}, "
        f"after {summary['aide_dice_seed_spread']['after']}"
    )
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out.with_suffix(".json"), header | {"before": args.before, "quick": args.quick,
               "train_augment": args.train_augment, "rows": rows, "summary": summary})  # fmt: skip
    out.with_suffix(".txt").write_text(text + "\n", encoding="utf-8")
    out.with_suffix(".partial.json").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
