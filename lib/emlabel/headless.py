"""Headless commands: the server's trainers, scoring and infer, without a server.

``emlabel train / em / score / predict`` build the app the way MONAI Label's own task
process does (``monailabel.interfaces.utils.app.app_instance``: the app folder's
``main.py`` over the studies folder, with the ``--conf`` settings ``start_server`` would
get) and call the same entry points (``app.train``, ``app.scoring``, ``app.infer``). So
they read and write the same datastore, label versions, models and image info, and a
server started on the same folders sees the results. Progress bars (tqdm) show epochs and
images; a summary table ends each command. The commands follow nnU-Net's CLI
(``nnUNetv2_train``, ``nnUNetv2_predict``).

Each also runs under ``torchrun --nproc_per_node N`` (:mod:`emlabel.distributed`): every
rank builds the same app; trainers that support it (:attr:`DISTRIBUTED`) train as
DistributedDataParallel and shard their per-image work, ``predict`` shares the images out,
and rank 0 alone writes and prints. A trainer or scoring method without that support is
refused under torchrun rather than run N times over.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from emlabel.distributed import distributed_session, sharded_map, world
from emlabel.errors import EMLabelError, InvalidRequestError, NotFoundError
from emlabel.progress import showing_bars
from emlabel.tables import format_table

LABEL_SUFFIXES = (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".tif", ".tiff")


def parse_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> (key, value); the value is read as JSON when it is JSON (numbers,
    true/false), else kept as text (the task's option parser types and bounds it)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise InvalidRequestError(f"option {text!r} is not KEY=VALUE")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def options_of(args: argparse.Namespace) -> dict[str, Any]:
    return dict(parse_option(text) for text in args.option or [])


def open_app(args: argparse.Namespace) -> Any:
    """The app over ``args.studies`` from ``args.app`` with ``args.conf`` (as the server's)."""
    studies, app_dir = Path(args.studies), Path(args.app)
    if not studies.is_dir():
        raise NotFoundError(f"studies folder {studies} does not exist")
    if not (app_dir / "main.py").is_file():
        raise NotFoundError(
            f"app folder {app_dir} has no main.py (the folder start_server --app takes)"
        )
    from monailabel.config import settings as ml_settings
    from monailabel.interfaces.utils.app import app_instance

    # no server to ask for scoring after a training (``emlabel score`` does it), and no
    # folder watcher: MONAI Label's own training process runs the same way
    ml_settings.MONAI_LABEL_AUTO_UPDATE_SCORING = False
    ml_settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD = False
    conf = {key: value for key, value in args.conf or []}
    app = call(app_instance, app_dir=str(app_dir.resolve()), studies=str(studies.resolve()),
               conf=conf)  # fmt: skip
    if not app.datastore().list_images():
        raise InvalidRequestError(f"studies folder {studies} has no images")
    return app


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run an app entry point; its HTTP refusal becomes the CLI's error message."""
    from fastapi import HTTPException

    try:
        return fn(*args, **kwargs)
    except HTTPException as e:
        raise EMLabelError(str(e.detail)) from e
    except SystemExit as e:  # the app refuses a bad configuration at build time
        raise EMLabelError(str(e.code)) from e


def under_torchrun(command: Callable[[argparse.Namespace], int]) -> Callable[..., int]:
    """Run ``command`` inside torchrun's process group (a plain call without torchrun)."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        with distributed_session():
            return command(args)

    return run


@contextlib.contextmanager
def progress_bars() -> Iterator[None]:
    """Progress bars on rank 0 (the other ranks' would interleave)."""
    with showing_bars() if world().main else contextlib.nullcontext():
        yield


def show(text: str) -> None:
    """Print on rank 0 only."""
    if world().main:
        print(text)


def require_distributed(task: Any, kind: str, name: str) -> None:
    """Under torchrun, refuse a task that cannot split its work over the ranks."""
    if task is not None and world().distributed and not getattr(task, "DISTRIBUTED", False):
        raise InvalidRequestError(
            f"{kind} {name!r} runs in one process only; run it without torchrun"
        )


def scalar_rows(stats: Mapping[str, Any]) -> list[list[Any]]:
    """The top-level numbers and words of a stats dict, one row each."""
    return [[key, value] for key, value in stats.items()
            if isinstance(value, str | int | float | bool) or value is None]  # fmt: skip


def cmd_train(args: argparse.Namespace) -> int:
    """Train one of the app's trainers (as ``POST /train/{method}``)."""
    app = open_app(args)
    require_distributed(getattr(app, "_trainers", {}).get(args.method), "trainer", args.method)
    with progress_bars():
        stats = call(app.train, {"model": args.method} | options_of(args))
    show(format_table(["stat", "value"], scalar_rows(stats)))
    return 0


def cmd_em(args: argparse.Namespace) -> int:
    """EM relabeling iterations (as ``POST /train/em``); one row per iteration."""
    app = open_app(args)
    request = {"model": "em", "iterations": args.iterations} | options_of(args)
    if args.learner:
        request["learner"] = args.learner
    with progress_bars():
        stats = call(app.train, request)
    rows = [[row["iteration"], row["verified"], row["accepted"], row["corrected"], row["queued"],
             row["mean_score"], (row.get("remaining_errors") or {}).get("probably_wrong")]
            for row in stats.get("iterations", [])]  # fmt: skip
    headers = ["iteration", "verified", "accepted", "corrected", "queued", "mean score",
               "probably wrong"]  # fmt: skip
    show(format_table(headers, rows))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    """Score the labels (as ``POST /scoring/{method}``); the least trusted first."""
    if args.top < 0:
        raise InvalidRequestError(f"--top must be 0 or more, not {args.top}")
    app = open_app(args)
    require_distributed(getattr(app, "_scoring_methods", {}).get(args.method), "scoring method",
                        args.method)  # fmt: skip
    with progress_bars():
        scores = call(app.scoring, {"method": args.method, "force": args.force})
    rows = []
    for image_id, score in sorted(scores.items(), key=lambda kv: -float(kv[1] or 0))[: args.top]:
        info = app.datastore().get_image_info(image_id).get(f"emlabel.{args.method}") or {}
        rows.append([image_id, score, "; ".join(info.get("reasons", [])[:1])])
    show(format_table(["image", "score", "top reason"], rows))
    show(f"{len(scores)} image(s) scored")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """The served model's label of each image (as ``POST /infer/{model}``) into ``--out``."""
    app = open_app(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ids = sorted(app.datastore().list_images())
    if args.images:
        wanted = args.images.split(",")
        unknown = sorted(set(wanted) - set(ids))
        if unknown:
            raise NotFoundError(f"unknown image id(s) {unknown}")
        ids = wanted

    def predict(image_id: str) -> list[str]:
        result = call(app.infer, {"model": args.model, "image": image_id})
        source = Path(result["file"])
        suffix = next((s for s in LABEL_SUFFIXES if source.name.endswith(s)), source.suffix)
        target = out / f"{image_id}{suffix}"
        shutil.move(str(source), target)
        return [image_id, str(target)]

    # under torchrun each rank predicts its share of the images
    with progress_bars():
        rows = sharded_map(predict, ids, progress=f"{args.model} images")
    show(format_table(["image", "label"], rows))
    return 0


def add_commands(sub: Any) -> None:
    """The headless sub-commands of ``emlabel``."""

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--studies", required=True, help="studies folder")
        parser.add_argument(
            "--app", default="apps/emlabel",
            help="app folder, the one start_server --app takes (default apps/emlabel; its "
            "model/ folder holds the models)",
        )  # fmt: skip
        parser.add_argument(
            "--conf", nargs=2, action="append", metavar=("KEY", "VALUE"),
            help="a setting, as start_server --conf (repeatable)",
        )  # fmt: skip

    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--option", action="append", metavar="KEY=VALUE",
            help="a request option, as in POST /train/{name} (repeatable)",
        )  # fmt: skip

    train = sub.add_parser("train", help="train a method without the server (as POST /train)")
    common(train)
    options(train)
    train.add_argument("--method", required=True,
                       help="trainer: segmentation, aide, cgs, stats, verifier, em, or a bundle's")  # fmt: skip
    train.set_defaults(func=under_torchrun(cmd_train))

    em = sub.add_parser("em", help="EM relabeling without the server (as POST /train/em)")
    common(em)
    options(em)
    em.add_argument("--iterations", type=int, default=1, help="EM iterations (default 1)")
    em.add_argument("--learner", help="segmentation (default), aide or cgs")
    em.set_defaults(func=under_torchrun(cmd_em))

    score = sub.add_parser("score", help="score the labels without the server (verifier)")
    common(score)
    score.add_argument("--method", default="verifier", help="scoring method (default verifier)")
    score.add_argument("--force", action="store_true", help="judge every label again")
    score.add_argument("--top", type=int, default=20, help="rows to print (default 20)")
    score.set_defaults(func=under_torchrun(cmd_score))

    predict = sub.add_parser("predict", help="write a model's labels of the studies' images")
    common(predict)
    predict.add_argument("--model", required=True, help="infer task, e.g. segmentation")
    predict.add_argument("--out", required=True, help="folder for the label files")
    predict.add_argument("--images", help="comma-separated image ids (default: all)")
    predict.set_defaults(func=under_torchrun(cmd_predict))
