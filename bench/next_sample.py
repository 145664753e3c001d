"""Seconds per "Next Sample" click on the demo, before and after incremental scoring.

Both arms drive the real server (``python -m monailabel.main start_server`` on 127.0.0.1,
``MONAI_LABEL_AUTO_UPDATE_SCORING`` on: MONAI Label's default) over copies of the same demo
studies (``emlabel demo``, default settings) with ``MONAILabelClient`` only: train
``segmentation`` once, wait until the server is idle, then ``clicks`` times click "Next
Sample" (strategy ``verifier``) and save the demo's truth as the final, as a reviewer would.

A click costs the time from the click until the server is idle again (no scoring process
running or queued): the two cores it takes from the annotator's next training. ``before``
is the app at an earlier commit (a git worktree; its ``lib`` first on ``PYTHONPATH``, its
``apps/emlabel/main.py``), ``after`` this checkout. Both run in the same invocation.

    .venv/bin/python bench/next_sample.py [--before 67477fe] [--clicks 5]
                                          [--out bench/results/next_sample]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import format_table, run_header, write_json
from tests.support.server import REPO, running_server
from tests.test_server import wait_for_training

BEFORE = "67477fe"
"""The last commit whose app scored on every click (MONAI Label's stock behaviour)."""


def scoring_busy(url: str) -> bool:
    """Whether a scoring task is submitted or running (MONAI Label's ``GET /scoring/``)."""
    try:
        with urllib.request.urlopen(f"{url}/scoring/?all=true", timeout=30) as r:
            tasks = json.loads(r.read())
    except urllib.error.HTTPError as e:
        if e.code == 404:  # none ever started
            return False
        raise
    return any(t.get("status") not in ("DONE", "ERROR") for t in tasks)


def wait_idle(url: str, timeout: float = 900) -> float:
    """Seconds until no scoring task is pending (polled every 0.2 s). A task a call asked
    for is registered before the call answers (MONAI Label's AsyncTask.run)."""
    start = time.monotonic()
    while scoring_busy(url):
        if time.monotonic() - start > timeout:
            raise RuntimeError("scoring did not finish")
        time.sleep(0.2)
    return time.monotonic() - start


def run_arm(
    name: str, studies: Path, work: Path, *, clicks: int, app_main: Path, lib: Path
) -> dict[str, Any]:
    """Train once, then ``clicks`` x (Next Sample, wait until idle, save the truth)."""
    from monailabel.client import MONAILabelClient

    env = {
        "MONAI_LABEL_AUTO_UPDATE_SCORING": "true",
        "PYTHONPATH": os.pathsep.join([str(lib), os.environ.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        ),
    }
    conf = {"review_budget": "1.0", "max_epochs": "2"}  # enough samples for every click
    imported = subprocess.run(
        [sys.executable, "-c", "import emlabel; print(emlabel.__file__)"],
        env=os.environ | env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    if not imported.startswith(str(lib)):
        raise RuntimeError(f"{name}: the server would import {imported}, not {lib}")
    manifest = json.loads((studies / "emlabel_demo" / "manifest.json").read_text())
    with running_server(studies, work, conf=conf, env=env, timeout=300, app_main=app_main) as srv:
        client = MONAILabelClient(server_url=srv.url, tmpdir=str(work))
        startup_idle = wait_idle(srv.url)
        t0 = time.monotonic()
        client.train_start("segmentation", {})
        status = wait_for_training(client, timeout=1800)
        if status.get("status") != "DONE":
            raise RuntimeError(f"{name}: training ended {status}")
        after_training = wait_idle(srv.url)
        train_s = time.monotonic() - t0
        rows = []
        for _ in range(clicks):
            t = time.monotonic()
            sample = client.next_sample("verifier", {})
            answer_s = time.monotonic() - t
            if not sample.get("id"):
                break
            idle_s = wait_idle(srv.url)
            truth = studies / manifest["cases"][sample["id"]]["truth"]
            client.save_label(sample["id"], str(truth), tag="final")
            rows.append({"id": sample["id"], "answer_seconds": round(answer_s, 3),
                         "click_seconds": round(answer_s + idle_s, 3)})  # fmt: skip
        log = srv.log()
    return {
        "arm": name,
        "startup_scoring_seconds": round(startup_idle, 2),
        "train_and_scoring_seconds": round(train_s, 2),
        "scoring_after_training_seconds": round(after_training, 2),
        "clicks": rows,
        "median_click_seconds": float(np.median([r["click_seconds"] for r in rows]))
        if rows
        else None,
        "emlabel": imported,
        "scoring_processes": log.count("monailabel.interfaces.utils.app -m scoring"),
        "needs_model_errors_in_log": log.count("the verifier needs a model"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default=BEFORE, help="git ref of the 'before' app")
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--out", default="bench/results/next_sample")
    args = parser.parse_args(argv)
    from emlabel.cli import import_demo_noisy_labels
    from emlabel.data.demo import DemoOptions, write_demo_studies

    header = run_header()
    results = []
    with tempfile.TemporaryDirectory(prefix="emlabel-next-sample-") as tmp:
        root = Path(tmp)
        template = root / "demo"
        import_demo_noisy_labels(template, write_demo_studies(template, DemoOptions()))
        old = root / "before-checkout"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(old),
                        args.before], check=True, capture_output=True)  # fmt: skip
        try:
            for name, checkout in (("before", old), ("after", REPO)):
                studies = root / name / "studies"
                shutil.copytree(template, studies)
                app_main = checkout / "apps" / "emlabel" / "main.py"
                arm = run_arm(name, studies, root / name, clicks=args.clicks,
                              app_main=app_main, lib=checkout / "lib")  # fmt: skip
                results.append(arm)
                print(json.dumps(results[-1]), flush=True)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old)],
                           check=False, capture_output=True)  # fmt: skip
    before, after = results
    ratio = (
        before["median_click_seconds"] / after["median_click_seconds"]
        if before["median_click_seconds"] and after["median_click_seconds"]
        else None
    )
    table = format_table(
        ["arm", "median s per click", "clicks", "scoring at start (s)", "scoring after train (s)"],
        [[r["arm"], r["median_click_seconds"], len(r["clicks"]), r["startup_scoring_seconds"],
          r["scoring_after_training_seconds"]] for r in results],
    )  # fmt: skip
    text = table + (f"\n\nbefore / after per click: {ratio:.1f}x" if ratio else "")
    print(text)
    write_json(Path(args.out).with_suffix(".json"),
               {**header, "before": args.before, "results": results, "ratio": ratio})  # fmt: skip
    Path(args.out).with_suffix(".txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
