"""``emlabel`` command line: demo data, label import, label history, password hashes, and
the headless ``train`` / ``em`` / ``score`` / ``predict`` (:mod:`emlabel.headless`)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

from emlabel.errors import EMLabelError, NotFoundError


def _settings(config: str | None, studies: str | None = None):
    """The settings a server over ``studies`` would use (its plan, then ``config``); a
    folder without a plan is planned once, as the server would at start."""
    from emlabel.planning.effective import effective_settings
    from emlabel.settings import parse_settings

    conf = {"config": config} if config else {}
    if studies is None:
        return parse_settings(conf)
    return effective_settings(studies, conf).settings


def _open_datastore(studies: str, config: str | None):
    from emlabel.monailabel.datastore import VersionedDatastore

    if not Path(studies).is_dir():
        raise EMLabelError(f"studies folder {studies} does not exist")
    return VersionedDatastore(studies, settings=_settings(config, studies))


def import_demo_noisy_labels(out: Path, manifest: dict) -> int:
    """Import the demo's noisy labels under tag ``noisy``; returns how many."""
    from emlabel.imports import ImportPlan, import_labels

    datastore = _open_datastore(str(out), None)  # structures from the demo's dataset.json
    plans = [
        ImportPlan(image_id=case_id, path=out / case["noisy"])
        for case_id, case in sorted(manifest["cases"].items())
        if case.get("noisy")
    ]
    if plans:
        import_labels(datastore, plans, tag="noisy", user="emlabel-demo")
    return len(plans)


def cmd_demo(args: argparse.Namespace) -> int:
    from emlabel.data.demo import DemoOptions, write_demo_studies

    start = time.perf_counter()
    out = Path(args.out)
    manifest = write_demo_studies(out, DemoOptions(kind=args.kind, n=args.n, seed=args.seed))
    import_demo_noisy_labels(out, manifest)
    roles: dict[str, int] = {}
    for case in manifest["cases"].values():
        roles[case["role"]] = roles.get(case["role"], 0) + 1
    print(
        f"demo studies in {out}: {len(manifest['cases'])} images {roles}; "
        f"noisy labels imported under tag 'noisy' ({time.perf_counter() - start:.1f} s)"
    )
    return 0


def cmd_import_labels(args: argparse.Namespace) -> int:
    import tempfile

    from emlabel.imports import import_labels, plan_import
    from emlabel.label_map_import import parse_value_map, remap_plans, report_lines

    datastore = _open_datastore(args.studies, args.config)
    plans = plan_import(args.paths)
    with tempfile.TemporaryDirectory(prefix="emlabel-map-") as tmp:
        if args.map is not None:
            structures = datastore.settings.stored_label_map
            value_map = parse_value_map(args.map, structures=structures)
            plans, reports = remap_plans(plans, value_map, tmp)
            names = {value: name for name, value in structures.items()}
            print("\n".join(report_lines(plans, reports, names=names)))
        stored = import_labels(datastore, plans, tag=args.tag, user=args.user)
    by = f", user '{args.user}'" if args.user else ""
    for version in stored:
        print(f"{version.image_id}: stored as tag '{version.tag}' (version {version.version}{by})")
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    datastore = _open_datastore(args.studies, args.config)
    datastore.require_image(args.image)
    best = datastore.best_label(args.image)
    annotators = {v.tag for v in datastore.annotator_labels(args.image).values()}
    rows = [
        {
            "tag": v.tag,
            "version": v.version,
            "kind": str(v.kind),
            "source": v.provenance.source,
            "user": v.provenance.user,
            "annotator": v.tag in annotators,
            "archived": v.provenance.archived,
            "best": best is not None and v.tag == best.tag,
            "reason": v.provenance.reason,
        }
        for v in datastore.versions(args.image)
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        mark = "*" if row["best"] else "+" if row["annotator"] else " "
        print(
            f"{mark} v{row['version']:<3} {row['tag']:<16} {row['kind']:<10} {row['source']:<10}"
            f"{row['user'] or '-':<14}{' (archived)' if row['archived'] else ''} {row['reason']}"
        )
    return 0


def cmd_demo_quality(args: argparse.Namespace) -> int:
    """Mean Dice of every image's best label to the demo's truth (demo folders only)."""
    from emlabel.data.demo_truth import DemoTruth

    truth = DemoTruth.find(args.studies)
    if truth is None:
        raise NotFoundError(f"{args.studies} has no demo truth (emlabel_demo/manifest.json)")
    datastore = _open_datastore(args.studies, args.config)
    labels = {}
    for image_id in datastore.list_images():
        best = datastore.best_label(image_id)
        if best is not None:
            labels[image_id] = datastore.get_label_uri(image_id, best.tag)
    print(json.dumps({"label_quality_vs_truth": truth.quality(labels), "images": len(labels)}))
    return 0


def cmd_export_bundle(args: argparse.Namespace) -> int:
    from emlabel.bundle import export_bundle

    checkpoint = Path(args.app_dir) / "model" / f"{args.model}.pt"
    if not checkpoint.is_file():
        known = sorted(p.stem for p in (Path(args.app_dir) / "model").glob("*.pt"))
        raise EMLabelError(
            f"no trained model '{args.model}' in {checkpoint.parent}; trained models: "
            f"{', '.join(known) or '(none)'}"
        )
    out = export_bundle(
        checkpoint=checkpoint, out_dir=args.out, schema=args.schema, overwrite=args.overwrite
    )
    print(f"bundle written to {out} (metadata verified against the MONAI schema)")
    return 0


def cmd_import_stats(args: argparse.Namespace) -> int:
    from emlabel.data.statistics import read_csv

    datastore = _open_datastore(args.studies, args.config)
    count = datastore.import_statistics(read_csv(args.csv), user=args.user)
    print(f"imported {count} statistics from {args.csv}")
    return 0


def cmd_orthanc(args: argparse.Namespace) -> int:
    """A private Orthanc in the foreground (Ctrl-C stops it), studies uploaded first."""
    import signal

    from emlabel.dicomweb.orthanc import OrthancConfig, start_orthanc
    from emlabel.dicomweb.upload import upload_studies

    orthanc = start_orthanc(OrthancConfig(work_dir=Path(args.dir), http_port=args.port))
    with orthanc:
        if args.upload:
            labels = _settings(args.config).labels
            uploaded = upload_studies(args.upload, orthanc.url, labels=labels)
            print(f"uploaded {len(uploaded)} series from {args.upload}")
        print(f"Orthanc on {orthanc.url}, DICOMweb {orthanc.dicomweb_url} (Ctrl-C stops it)")
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        with contextlib.suppress(KeyboardInterrupt):
            orthanc.process.wait()
    return 0


def cmd_dicomweb_upload(args: argparse.Namespace) -> int:
    from emlabel.dicomweb.upload import upload_studies

    labels = _settings(args.config).labels
    uploaded = upload_studies(args.studies, args.url, labels=labels)
    for image_id, item in uploaded.items():
        seg = f", final label as SEG {item.seg_series_uid}" if item.seg_series_uid else ""
        print(f"{image_id}: study {item.ids.study_uid} series {item.ids.series_uid}{seg}")
    return 0


def cmd_serve_dicomweb(args: argparse.Namespace) -> int:
    from emlabel.dicomweb.serve import DICOMwebServeOptions, serve_dicomweb

    options = DICOMwebServeOptions(
        studies=Path(args.studies),
        state_dir=Path(args.state_dir),
        orthanc_port=args.orthanc_port,
        host=args.host,
        port=args.port,
        app_dir=Path(args.app_dir),
        labels=_settings(args.config).labels,
        server_args=tuple(
            args.server_args[1:] if args.server_args[:1] == ["--"] else args.server_args
        ),
    )
    return serve_dicomweb(options)


def cmd_hash_password(args: argparse.Namespace) -> int:
    """Print a pbkdf2_sha256 hash for the ``auth_users`` file (password from stdin or a prompt)."""
    from emlabel.monailabel.auth import hash_password

    if sys.stdin.isatty():
        import getpass

        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat it: ") != password:
            raise EMLabelError("the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise EMLabelError("the password is empty")
    print(hash_password(password))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """Plan settings from the studies' data; write ``<studies>/.emlabel-plan.json``."""
    from emlabel.planning import PLAN_FILE, format_plan, plan_studies, write_plan

    studies = Path(args.studies)
    if not studies.is_dir():
        raise EMLabelError(f"studies folder {studies} does not exist")
    plan = plan_studies(studies, patch_voxels=args.patch_voxels)
    print(format_plan(plan))
    if not args.print_only:
        print(f"plan written to {write_plan(plan, studies / PLAN_FILE)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emlabel", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="write the synthetic demo studies folder")
    demo.add_argument("--out", required=True, help="studies folder to create")
    demo.add_argument("--n", type=int, default=8, help="number of volumes (default 8)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument(
        "--kind",
        choices=("phantom", "xray"),
        default="phantom",
        help="phantom: 3D CT-like volumes (default); xray: 2D chest X-ray-like PNGs",
    )
    demo.set_defaults(func=cmd_demo)

    imp = sub.add_parser("import-labels", help="import label files as versions under a tag")
    imp.add_argument("--studies", required=True, help="studies folder")
    imp.add_argument("--tag", default="noisy", help="tag to store under (default 'noisy')")
    imp.add_argument("--config", help="settings JSON (for the label map), e.g. sample-config.json")
    imp.add_argument("--user", help="who provided the labels (kept in provenance)")
    imp.add_argument(
        "--map",
        metavar="VALUE=NAME[,...]",
        help="relabel the files first: these values become the app's structures "
        "(e.g. 5=liver,1=spleen), every other value becomes background",
    )
    imp.add_argument("paths", nargs="+", help="label files or folders; file name = image id")
    imp.set_defaults(func=cmd_import_labels)

    sts = sub.add_parser("import-stats", help="import per-structure volumes/areas from a CSV")
    sts.add_argument("csv", help="CSV with columns image,structure,statistic,value")
    sts.add_argument("--studies", required=True, help="studies folder")
    sts.add_argument("--config", help="settings JSON (for the label map)")
    sts.add_argument("--user", help="who measured them (kept with each value)")
    sts.set_defaults(func=cmd_import_stats)

    exp = sub.add_parser("export-bundle", help="export a trained model as a MONAI bundle")
    exp.add_argument("--model", required=True, help="model name, e.g. segmentation")
    exp.add_argument("--out", required=True, help="bundle folder to create")
    exp.add_argument("--app-dir", default="apps/emlabel", help="app folder (default apps/emlabel)")
    exp.add_argument("--schema", help="local copy of the MONAI metadata schema JSON")
    exp.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    exp.set_defaults(func=cmd_export_bundle)

    ver = sub.add_parser(
        "versions",
        help="list every label version of an image, with its user (* the best label, "
        "+ a user's latest label)",
    )
    ver.add_argument("--studies", required=True)
    ver.add_argument("--config")
    ver.add_argument("--json", action="store_true", help="print JSON")
    ver.add_argument("image", help="image id")
    ver.set_defaults(func=cmd_versions)

    dq = sub.add_parser("demo-quality", help="best labels vs the demo's truth (mean Dice)")
    dq.add_argument("--studies", required=True)
    dq.add_argument("--config")
    dq.set_defaults(func=cmd_demo_quality)

    orth = sub.add_parser("orthanc", help="run a private Orthanc (DICOMweb) in the foreground")
    orth.add_argument("--dir", required=True, help="folder for its configuration and database")
    orth.add_argument("--port", type=int, default=8042, help="HTTP port (default 8042)")
    orth.add_argument("--upload", help="studies folder to convert to DICOM and upload first")
    orth.add_argument("--config", help="settings JSON (label names for the SEG segments)")
    orth.set_defaults(func=cmd_orthanc)

    upl = sub.add_parser(
        "dicomweb-upload", help="upload a studies folder to Orthanc (finals as DICOM-SEG)"
    )
    upl.add_argument("--studies", required=True, help="studies folder")
    upl.add_argument("--url", default="http://127.0.0.1:8042", help="Orthanc REST URL")
    upl.add_argument("--config", help="settings JSON (label names for the SEG segments)")
    upl.set_defaults(func=cmd_dicomweb_upload)

    srv = sub.add_parser(
        "serve-dicomweb", help="Orthanc + upload + EMLabel on Orthanc's DICOMweb URL"
    )
    srv.add_argument("--studies", required=True, help="studies folder to upload")
    srv.add_argument("--state-dir", default=".dicomweb", help="Orthanc database and cache")
    srv.add_argument("--orthanc-port", type=int, default=8042)
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--app-dir", default="apps/emlabel")
    srv.add_argument("--config", help="settings JSON (label names for the SEG segments)")
    srv.add_argument(
        "server_args", nargs=argparse.REMAINDER, help="after --: extra start_server arguments"
    )
    srv.set_defaults(func=cmd_serve_dicomweb)

    pln = sub.add_parser("plan", help="derive settings from the studies' images and labels")
    pln.add_argument("--studies", required=True, help="studies folder")
    pln.add_argument("--patch-voxels", type=int, help="patch budget (default 64**3 / 256**2)")
    pln.add_argument("--print-only", action="store_true", help="print the plan, write nothing")
    pln.set_defaults(func=cmd_plan)

    pwd = sub.add_parser(
        "hash-password",
        help="print a password hash for the auth_users file (reads the password from stdin "
        "or asks for it)",
    )
    pwd.set_defaults(func=cmd_hash_password)

    from emlabel.headless import add_commands

    add_commands(sub)  # train, em, score, predict: the server's tasks without the server
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (EMLabelError, ValueError) as e:
        message = e.message if isinstance(e, EMLabelError) else str(e)
        print(f"emlabel {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
