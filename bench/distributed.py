"""1 vs 2 processes (torchrun, gloo on CPU) for a segmentation training and an EM E-step.

Drives the product's headless commands (``emlabel train`` / ``emlabel em`` / ``emlabel
score``, the same app and library code the server runs) on copies of one demo studies
folder the project generates, in three set-ups on this 2-core machine, one after the other:

- ``1p x 2t``: one process, two torch threads (what ``emlabel train`` does by default);
- ``1p x 1t``: one process, one thread (one rank's share of the machine);
- ``2p x 1t``: ``torchrun --nproc_per_node 2``, one thread each (torchrun's default).

Per set-up: wall time of each command (app build included), the in-process time (epochs
for training, the E-step's and M-step's own seconds for em), images per second, and whether
the results match the one-process run (model weights within tolerance; the label versions
of the E-step exactly). Then a written projection of one EM iteration over 47,315 CTs on 8
and 64 GPUs from the measured per-voxel costs, with every assumption stated.

    .venv/bin/python bench/distributed.py [--quick] [--out bench/results/distributed]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import format_table, run_header, write_json
from tests.support.server import make_app_dir, server_env
from tests.test_distributed import relative_difference, stored_versions


@dataclasses.dataclass(frozen=True, kw_only=True)
class Protocol:
    """The demo data and training budget (the same for every set-up)."""

    images: int = 24
    finals: int = 4
    unlabeled: int = 4
    shape: tuple[int, int, int] = (64, 64, 48)
    epochs: int = 4
    min_steps: int = 16
    batch: int = 2

    def conf(self) -> dict[str, str]:
        return {
            "roi_size": "48,48,48",
            "target_spacing": "1.6,1.6,2.5",  # the phantoms' own: voxels = shape
            "network_channels": "16,32,64",
            "num_res_units": "1",
            "train_batch_size": str(self.batch),
            "min_steps_per_epoch": str(self.min_steps),
            "max_epochs": str(self.epochs),
        }


QUICK = Protocol(images=8, finals=2, unlabeled=2, shape=(40, 40, 32), epochs=1, min_steps=4)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Setup:
    name: str
    processes: int
    threads: int


SETUPS = (
    Setup(name="1p x 2t", processes=1, threads=2),
    Setup(name="1p x 1t", processes=1, threads=1),
    Setup(name="2p x 1t", processes=2, threads=1),
)


def write_studies(root: Path, protocol: Protocol) -> Path:
    """The demo studies (noisy labels imported), as ``emlabel demo`` writes them."""
    from emlabel.cli import import_demo_noisy_labels
    from emlabel.data.demo import DemoOptions, write_demo_studies
    from emlabel.data.phantoms import PhantomOptions

    studies = root / "studies"
    options = DemoOptions(
        n=protocol.images, seed=0, n_final=protocol.finals, n_unlabeled=protocol.unlabeled,
        phantom=PhantomOptions(shape=protocol.shape),
    )  # fmt: skip
    import_demo_noisy_labels(studies, write_demo_studies(studies, options))
    return studies


def run_command(args: list[str], setup: Setup, log: Path) -> float:
    """Run ``emlabel ARGS`` in ``setup``; its wall seconds (raises with the log on failure)."""
    if setup.processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={setup.processes}"]  # fmt: skip
    else:
        launcher = [sys.executable]
    env = server_env({"OMP_NUM_THREADS": str(setup.threads)})
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.run([*launcher, "-m", "emlabel.cli", *args], env=env, stdout=out,
                              stderr=subprocess.STDOUT, check=False)  # fmt: skip
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(
            f"{args[0]} in {setup.name} failed; log {log}:\n{log.read_text()[-3000:]}"
        )
    return seconds


def measure(setup: Setup, template: Path, work: Path, protocol: Protocol) -> dict[str, Any]:
    """Train, then one EM iteration, then a forced verifier pass, on a private copy."""
    root = work / setup.name.replace(" ", "")
    shutil.copytree(template, root / "studies")
    app = make_app_dir(root)
    base = ["--studies", str(root / "studies"), "--app", str(app)]
    for key, value in protocol.conf().items():
        base += ["--conf", key, value]
    row: dict[str, Any] = {"setup": setup.name, "processes": setup.processes,
                           "threads": setup.threads, "root": str(root)}  # fmt: skip
    row["train_wall"] = run_command(["train", "--method", "segmentation", *base], setup,
                                    root / "train.log")  # fmt: skip
    stats = json.loads((app / "model" / "segmentation.train_stats.json").read_text())
    row["train_epochs_seconds"] = stats["total_time"]
    row["train_best_dice"] = stats["best_metric"]
    row["train_samples"] = protocol.epochs * max(protocol.min_steps * protocol.batch, 0)
    # the E-step starts from the same model in every set-up: the 1p x 2t one's
    model_from = work / SETUPS[0].name.replace(" ", "") / "app" / "model" / "segmentation.pt"
    before = root / "app" / "model" / "own-segmentation.pt"
    shutil.copy(app / "model" / "segmentation.pt", before)
    if model_from != app / "model" / "segmentation.pt":
        shutil.copy(model_from, app / "model" / "segmentation.pt")
    row["em_wall"] = run_command(["em", "--iterations", "1", "--option", "epochs=1", *base],
                                 setup, root / "em.log")  # fmt: skip
    em = json.loads((app / "model" / "em.train_stats.json").read_text())["iterations"][0]
    row["e_step_seconds"] = em["e_step_seconds"]
    row["e_step_parts"] = em["e_step_parts"]
    row["m_step_seconds"] = em["m_step_seconds"]
    row["e_step_images"] = em["verified"] + em["m_step"].get("pseudo_labels", 0)
    row["score_wall"] = run_command(["score", "--force", *base], setup, root / "score.log")
    return row


def projection(one: dict[str, Any], two: dict[str, Any], protocol: Protocol) -> dict[str, Any]:
    """One EM iteration over 47,315 CTs on 8 and 64 GPUs, from the 1-thread costs here.

    The E-step's network inference (pseudo-labels, the flip ensemble) is what a GPU
    speeds up; the verifier's features (surface distances), the expert and the label
    writing run on the rank's CPU as they do here. Each part scales with the voxel count.
    """
    voxels_here = protocol.shape[0] * protocol.shape[1] * protocol.shape[2]
    a = {
        "ct_count": 47_315,
        "ct_voxels": 256 * 256 * 200,
        "ct_voxels_note": "a CT resampled to the training spacing (about 1.5 mm in-plane, "
        "2 mm slices) and cropped to the body: 256 x 256 x 200 voxels",
        "gpu_over_cpu_core": 100.0,
        "gpu_over_cpu_core_note": "one data-centre GPU runs the UNet's 3D convolutions about "
        "100 times faster than one CPU core here (assumed, not measured: no GPU here)",
        "cpu_parts_note": "features, expert and writing stay on one CPU core per rank (as the "
        "code runs them: one process per GPU), linear in voxels (an upper bound: MONAI's "
        "surface distances crop to the masks' bounding box, so small structures cost less)",
        "cpu_cores_per_gpu_variant": 8,
        "cpu_cores_per_gpu_variant_note": "NOT BUILT: the same with the CPU parts spread over "
        "8 cores per GPU (a process pool per rank), for comparison",
        "scaling_note": "the E-step shards per image with one gather at the end, so ranks "
        "scale at the efficiency measured here with 2 processes; the same for DDP training",
        "m_step_samples_per_epoch": 47_315,
        "m_step_note": "one M-step epoch draws one patch per CT, 96^3 patches (8x the voxels "
        "of the 48^3 patches here)",
        "roi_voxels_here": 48**3,
    }
    images = max(one["e_step_images"], 1)
    parts = one["e_step_parts"]
    gpu_part = parts["pseudo_labels"] + parts.get("ensemble_work", 0.0)
    cpu_part = one["e_step_seconds"] - gpu_part
    per_voxel_gpu = gpu_part / images / voxels_here / a["gpu_over_cpu_core"]
    per_voxel_cpu = cpu_part / images / voxels_here
    e_eff = min((one["e_step_seconds"] / two["e_step_seconds"]) / 2, 1.0)
    per_sample_core = one["train_epochs_seconds"] / max(one["train_samples"], 1)
    per_sample_gpu = per_sample_core * 8 / a["gpu_over_cpu_core"]
    m_eff = min((one["train_epochs_seconds"] / two["train_epochs_seconds"]) / 2, 1.0)
    per_ct = {"gpu_inference_s": per_voxel_gpu * a["ct_voxels"],
              "cpu_features_expert_s": per_voxel_cpu * a["ct_voxels"]}  # fmt: skip
    out: dict[str, Any] = {
        "assumptions": a,
        "measured": {
            "e_step_inference_share": gpu_part / one["e_step_seconds"],
            "e_step_cpu_seconds_per_megavoxel": per_voxel_cpu * 1e6,
            "e_step_inference_seconds_per_megavoxel_one_core": per_voxel_gpu
            * 1e6
            * a["gpu_over_cpu_core"],
            "e_step_scaling_efficiency_2_ranks": e_eff,
            "m_step_seconds_per_sample_one_core": per_sample_core,
            "m_step_scaling_efficiency_2_ranks": m_eff,
        },
        "per_ct_on_one_gpu_rank": per_ct,
        "gpus": {},
    }
    pooled = (
        per_ct["gpu_inference_s"] + per_ct["cpu_features_expert_s"] / a["cpu_cores_per_gpu_variant"]
    )
    for gpus in (8, 64):
        e_hours = a["ct_count"] * sum(per_ct.values()) / (gpus * e_eff) / 3600
        m_hours = a["m_step_samples_per_epoch"] * per_sample_gpu / (gpus * m_eff) / 3600
        out["gpus"][gpus] = {"e_step_hours": e_hours, "m_step_epoch_hours": m_hours,
                             "e_step_hours_8_cores_per_gpu_not_built":
                             a["ct_count"] * pooled / (gpus * e_eff) / 3600}  # fmt: skip
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny run for development")
    parser.add_argument("--out", default="bench/results/distributed")
    args = parser.parse_args()
    protocol = QUICK if args.quick else Protocol()
    header = run_header()
    with tempfile.TemporaryDirectory(prefix="emlabel-distributed-") as tmp:
        work = Path(tmp)
        template = write_studies(work / "template", protocol)
        rows = [measure(setup, template, work, protocol) for setup in SETUPS]
        # the reference: one process with one thread, the per-process arithmetic of the
        # ranks (a different thread count changes float sums, and so borderline voxels)
        reference = Path(rows[1]["root"])
        import torch  # noqa: F401  (load_payload needs it)

        from emlabel.checkpoints import load_payload

        ref_model = load_payload(reference / "app/model/own-segmentation.pt")["model"]
        ref_versions = stored_versions(reference / "studies")
        for row in rows:
            root = Path(row["root"])
            model = load_payload(root / "app/model/own-segmentation.pt")["model"]
            row["model_relative_difference"] = relative_difference(ref_model, model)
            versions = stored_versions(root / "studies")
            row["e_step_versions_identical"] = sorted(versions) == sorted(ref_versions) and all(
                versions[k][0] == ref_versions[k][0]
                and (versions[k][1] == ref_versions[k][1]).all()
                for k in ref_versions
            )
            row.pop("root")
    by = {row["setup"]: row for row in rows}
    plan = projection(by["1p x 1t"], by["2p x 1t"], protocol)
    table = format_table(
        ["set-up", "train wall s", "epochs s", "samples/s", "em wall s", "E-step s",
         "images/s", "M-step s", "score wall s", "model rel. diff", "same versions"],
        [[r["setup"], f"{r['train_wall']:.1f}", f"{r['train_epochs_seconds']:.1f}",
          f"{r['train_samples'] / r['train_epochs_seconds']:.2f}", f"{r['em_wall']:.1f}",
          f"{r['e_step_seconds']:.1f}", f"{r['e_step_images'] / r['e_step_seconds']:.2f}",
          f"{r['m_step_seconds']:.1f}", f"{r['score_wall']:.1f}",
          f"{r['model_relative_difference']:.1e}", r["e_step_versions_identical"]]
         for r in rows],
    )  # fmt: skip
    parts = by["1p x 1t"]["e_step_parts"]
    lines = [table, "", "E-step parts, 1p x 1t (s): " + ", ".join(f"{k} {v:.1f}"
                                                       for k, v in parts.items()),
             "", "Projection of one EM iteration over 47,315 CTs (assumptions in the JSON):"]  # fmt: skip
    for gpus, p in plan["gpus"].items():
        lines.append(f"  {gpus} GPUs: E-step {p['e_step_hours']:.1f} h (as built; "
                     f"{p['e_step_hours_8_cores_per_gpu_not_built']:.1f} h with 8 cores per "
                     f"GPU, not built), one M-step epoch {p['m_step_epoch_hours']:.2f} h")  # fmt: skip
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out.with_suffix(".json"), header | {"protocol": dataclasses.asdict(protocol),
               "rows": rows, "projection": plan, "cpu_count": os.cpu_count()})  # fmt: skip
    out.with_suffix(".txt").write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
