"""``clinalign review ...``: run the web reviewer and manage its database from the shell."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_DB = "sqlite:///feedback.db"


def _store(args: argparse.Namespace, *, must_exist: bool = False):
    from .db import Store  # imported late so `clinalign --help` stays fast

    return Store(args.db, must_exist=must_exist)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def serve_base_url(host: str, port: int) -> str | None:
    """The address ``serve --host H --port P`` is reached at, when the host names one."""
    if host in ("0.0.0.0", "::", ""):
        return None
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app
    from .serverlog import uvicorn_log_config

    base_url = args.base_url or serve_base_url(args.host, args.port)
    if base_url is None:
        log.warning(
            "--host %s without --base_url: the dashboard can make invite links only when opened on "
            "this machine (127.0.0.1); pass --base_url http://<this host>:%d",
            args.host,
            args.port,
        )
    app = create_app(args.db, trusted_origins=args.trusted_origin, base_url=base_url)
    # The event loop and the writer thread share the GIL; a shorter switch interval (default 5 ms)
    # lets the loop answer while the writer works through a batch.
    sys.setswitchinterval(0.001)
    print(
        f"clinalign review: serving {app.state.store.safe_url} on http://{args.host}:{args.port} "
        f"(reviewers: their private links; admin dashboard: /admin; API docs: /docs)",
        flush=True,
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_config=uvicorn_log_config(),
        log_level="warning" if args.quiet else "info",
        access_log=not args.quiet,
        proxy_headers=args.proxy_headers,
        forwarded_allow_ips="*" if args.proxy_headers else None,
        timeout_graceful_shutdown=5,
    )
    return 0


def cmd_add_batch(args: argparse.Namespace) -> int:
    from .ingest import add_batch, parse_checklist

    summary = add_batch(
        _store(args),
        args.samples,
        reference=args.reference,
        per_image=args.per_image,
        name=args.name,
        qc_share=args.qc_share,
        strip=args.strip,
        checklist=parse_checklist(args.checklist),
        seed=args.seed,
        reference_layout=args.reference_layout,
    )
    for line in summary.lines():
        print(line)
    return 0


def _add_person(args: argparse.Namespace, role: str) -> int:
    from .ingest import add_user, private_link

    token = add_user(_store(args), args.name, role, rotate=args.rotate)
    # The link is the credential: printed once, never stored in clear.
    print(private_link(args.base_url, token))
    return 0


def cmd_add_reviewer(args: argparse.Namespace) -> int:
    return _add_person(args, "reviewer")


def cmd_add_admin(args: argparse.Namespace) -> int:
    return _add_person(args, "admin")


def cmd_add_concept(args: argparse.Namespace) -> int:
    from .ingest import add_concept

    c = add_concept(_store(args, must_exist=True), args.batch, args.name, args.parent)
    print(f"concept {c.name!r} (parent {c.parent!r}) added to batch {args.batch!r}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_feedback

    summary = export_feedback(
        _store(args, must_exist=True), args.out, rule=args.rule, batch=args.batch, overwrite=args.overwrite
    )
    _print_json(summary.as_dict())
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from .stats import dashboard

    store = _store(args, must_exist=True)
    with store.read() as s:
        _print_json(dashboard(s, args.batch))
    return 0


def cmd_export_labelstudio(args: argparse.Namespace) -> int:
    from .labelstudio import export_labelstudio

    _print_json(
        export_labelstudio(
            _store(args, must_exist=True),
            args.out,
            batch=args.batch,
            image_prefix=args.image_prefix,
            overwrite=args.overwrite,
        )
    )
    return 0


def cmd_import_labelstudio(args: argparse.Namespace) -> int:
    from .labelstudio import import_labelstudio

    _print_json(import_labelstudio(_store(args, must_exist=True), args.json, batch=args.batch).as_dict())
    return 0


def _db_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        default=DEFAULT_DB,
        help=f"SQLAlchemy URL or SQLite file path (default {DEFAULT_DB}); "
        "PostgreSQL: postgresql+psycopg://user@host:port/dbname",
    )


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the web app")
    _db_flag(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--trusted_origin",
        action="append",
        default=[],
        help="extra Origin allowed to POST (e.g. https://review.lab.org behind a proxy); repeatable",
    )
    p.add_argument(
        "--base_url",
        help="the address reviewers open, e.g. https://review.lab.org; invite links made on the dashboard "
        "start with it (default: http://HOST:PORT, unless --host is 0.0.0.0)",
    )
    p.add_argument("--proxy_headers", action="store_true", help="trust X-Forwarded-* (behind an https proxy)")
    p.add_argument("--quiet", action="store_true", help="no access log")
    p.set_defaults(func=cmd_serve)


def _add_add_batch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("add-batch", help="load a folder of synthetic images to review")
    _db_flag(p)
    p.add_argument("--samples", required=True, type=Path, help="folder of CLASS_*.png (or with manifest.csv)")
    p.add_argument(
        "--reference", type=Path, help="real images (CLASS_*.png or CLASS/img.png): reference strip + QC pool"
    )
    p.add_argument(
        "--reference_layout",
        default="auto",
        choices=["auto", "folders", "prefix"],
        help="folders = CLASS/img.png, prefix = CLASS_*.png; auto = folders when every image is "
        "exactly one folder deep (default)",
    )
    p.add_argument("--per_image", type=int, default=1, help="how many reviewers judge each image (default 1)")
    p.add_argument("--name", help="batch name (default: the samples folder name)")
    p.add_argument(
        "--qc_share",
        type=float,
        default=0.1,
        help="share of the queue that is real images shown as if synthetic (default 0.1)",
    )
    p.add_argument("--strip", type=int, default=6, help="reference images per class shown beside each image")
    p.add_argument("--checklist", type=Path, help='JSON {"*": [tags], "CLASS": [tags]} of reason tags')
    p.add_argument("--seed", type=int, default=0, help="seed for queue order and QC selection")
    p.set_defaults(func=cmd_add_batch)


def _add_people_and_concepts(sub: argparse._SubParsersAction) -> None:
    for name, what, func in (
        ("add-reviewer", "a reviewer", cmd_add_reviewer),
        ("add-admin", "an admin", cmd_add_admin),
    ):
        p = sub.add_parser(name, help=f"create {what} and print their private link")
        p.add_argument("name")
        _db_flag(p)
        p.add_argument("--base_url", default="http://127.0.0.1:8000", help="where the app is reachable")
        p.add_argument("--rotate", action="store_true", help="issue a new link for an existing name (revokes the old)")
        p.set_defaults(func=func)

    p = sub.add_parser("add-concept", help="add a finer class (e.g. neutrophil-band) under a parent class")
    _db_flag(p)
    p.add_argument("--batch", required=True)
    p.add_argument("--name", required=True, help="concept name, words joined by '-' (never '_')")
    p.add_argument("--parent", required=True, help="the declared class it refines")
    p.set_defaults(func=cmd_add_concept)


def _add_outputs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write CLASS/align and CLASS/notalign folders + votes.csv")
    _db_flag(p)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--rule", default="majority", help="majority | unanimous | reviewer:NAME (default majority)")
    p.add_argument("--batch", help="only this batch")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("stats", help="print the dashboard numbers as JSON")
    _db_flag(p)
    p.add_argument("--batch")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("export-labelstudio", help="write Label Studio tasks.json + labeling_config.xml + images/")
    _db_flag(p)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--batch")
    p.add_argument("--image_prefix", default="images/", help="prefix of data.image (where Label Studio finds images/)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_export_labelstudio)

    p = sub.add_parser("import-labelstudio", help="import judgements from a Label Studio JSON export")
    _db_flag(p)
    p.add_argument("--json", required=True, type=Path, help="Label Studio JSON export (list of tasks)")
    p.add_argument("--batch", required=True, help="batch holding the same images (matched by file name)")
    p.set_defaults(func=cmd_import_labelstudio)


def register(subparsers: argparse._SubParsersAction) -> None:
    review = subparsers.add_parser(
        "review",
        help="web reviewer for expert feedback (plausible / implausible)",
        description="Collect pathologists' judgements of synthetic images.",
    )
    sub = review.add_subparsers(dest="review_cmd", metavar="<command>")
    review.set_defaults(func=lambda args: (review.print_help(), 2)[1])
    _add_serve(sub)
    _add_add_batch(sub)
    _add_people_and_concepts(sub)
    _add_outputs(sub)


def main(argv: list[str] | None = None) -> int:
    """``python -m clinalign.review.cli ...``: the review commands alone, without importing the
    other stages (and torch), so the server starts in about a second."""
    from ..errors import ClinalignError

    parser = argparse.ArgumentParser(prog="clinalign")
    register(parser.add_subparsers(dest="stage", metavar="<stage>"))
    args = parser.parse_args(["review", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    try:
        return int(args.func(args) or 0)
    except ClinalignError as exc:
        print(f"clinalign: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
