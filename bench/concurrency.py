"""Served latency under concurrent clients: 4 clients x N mixed requests vs 1 client.

Drives the real server (``python -m monailabel.main start_server`` on 127.0.0.1) over a
private copy of the demo; every client sends the same mix of requests a viewer sends
(``/info/``, datastore listing, image info, ``next_sample``, infer). Goals from the lockdown
issue, as ratios measured in this one run: ``/info/`` p95 <= 0.2 s under 4 clients, and
infer p95 under 4 clients <= 2x the single-client infer p95.

    .venv/bin/python bench/concurrency.py [--requests 50] [--clients 4] [--quick]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import PROJECT_ROOT, format_table, run_header, write_json
from tests.conftest import write_tiny_demo
from tests.support.server import running_server

MIX = ("info", "datastore", "infer", "info", "image_info", "next_sample", "info", "infer")
"""One client's request cycle: 3 of 8 requests are /info/, 2 are infer."""


def send(url: str, kind: str, image: str) -> tuple[str, float, int]:
    """One request of ``kind``; (kind, seconds, status)."""
    start = time.perf_counter()
    if kind == "info":
        r = requests.get(f"{url}/info/", timeout=300)
    elif kind == "datastore":
        r = requests.get(f"{url}/datastore/", timeout=300)
    elif kind == "image_info":
        r = requests.get(f"{url}/datastore/image/info", params={"image": image}, timeout=300)
    elif kind == "next_sample":
        r = requests.post(f"{url}/activelearning/first", json={}, timeout=300)
    else:
        r = requests.post(
            f"{url}/infer/segmentation", params={"image": image, "output": "image"}, timeout=300
        )
    return kind, time.perf_counter() - start, r.status_code


def run_clients(url: str, n_clients: int, n_requests: int, images: list[str]) -> list[tuple]:
    """``n_clients`` threads, each sending ``n_requests`` of the mix; every answer kept."""
    results: list[tuple] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        for i in range(n_requests):
            out = send(url, MIX[(i + c) % len(MIX)], images[(i + c) % len(images)])
            with lock:
                results.append((c, *out))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def percentiles(results: list[tuple], kind: str) -> dict[str, float]:
    seconds = np.array([r[2] for r in results if r[1] == kind])
    return {
        "n": int(seconds.size),
        "p50": float(np.percentile(seconds, 50)),
        "p95": float(np.percentile(seconds, 95)),
        "max": float(seconds.max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=50, help="requests per client")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="10 requests per client")
    args = parser.parse_args()
    n_requests = 10 if args.quick else args.requests

    work = Path(tempfile.mkdtemp(prefix="emlabel-bench-concurrency-"))
    try:
        studies = work / "studies"
        write_tiny_demo(studies, n=6)
        images = sorted(p.name.removesuffix(".nii.gz") for p in studies.glob("*.nii.gz"))
        with running_server(studies, work) as server:
            r = requests.post(
                f"{server.url}/train/segmentation", json={"max_epochs": 1}, timeout=60
            )
            r.raise_for_status()
            while requests.get(f"{server.url}/train/", timeout=30).json().get("status") in (
                "SUBMITTED", "RUNNING", "QUEUED",
            ):  # fmt: skip
                time.sleep(1)
            send(server.url, "infer", images[0])  # warm the model cache
            runs = {}
            for n_clients in (1, args.clients):
                start = time.perf_counter()
                results = run_clients(server.url, n_clients, n_requests, images)
                runs[n_clients] = {
                    "wall_seconds": time.perf_counter() - start,
                    "errors": sum(1 for r in results if r[3] >= 500),
                    "non_200": sum(1 for r in results if r[3] != 200),
                    "kinds": {k: percentiles(results, k) for k in sorted(set(MIX))},
                }
    finally:
        shutil.rmtree(work, ignore_errors=True)

    single, many = runs[1], runs[args.clients]
    info_p95 = many["kinds"]["info"]["p95"]
    infer_ratio = many["kinds"]["infer"]["p95"] / single["kinds"]["infer"]["p95"]
    goals = {
        "info_p95_under_load_s": {"value": info_p95, "goal": 0.2, "met": info_p95 <= 0.2},
        "infer_p95_ratio": {"value": infer_ratio, "goal": 2.0, "met": infer_ratio <= 2.0},
    }
    rows = []
    for kind in sorted(set(MIX)):
        a, b = single["kinds"][kind], many["kinds"][kind]
        rows.append(
            [kind, f"{a['p50']:.3f}", f"{a['p95']:.3f}", f"{b['p50']:.3f}", f"{b['p95']:.3f}"]
        )
    table = format_table(
        ["request", "1 client p50 s", "1 client p95 s", f"{args.clients} clients p50 s",
         f"{args.clients} clients p95 s"],
        rows,
    )  # fmt: skip
    summary = (
        f"/info/ p95 under {args.clients} clients: {info_p95:.3f} s (goal <= 0.2: "
        f"{'met' if goals['info_p95_under_load_s']['met'] else 'NOT met'}); infer p95 ratio "
        f"{infer_ratio:.2f}x (goal <= 2: {'met' if goals['infer_p95_ratio']['met'] else 'NOT met'});"
        f" 5xx answers: {single['errors'] + many['errors']}"
    )
    print(table)
    print(summary)
    name = "concurrency_quick" if args.quick else "concurrency"
    out = PROJECT_ROOT / "bench" / "results"
    write_json(
        out / f"{name}.json",
        run_header()
        | {"requests_per_client": n_requests, "mix": MIX, "runs": runs, "goals": goals},
    )
    (out / f"{name}.txt").write_text(table + "\n" + summary + "\n")


if __name__ == "__main__":
    main()
