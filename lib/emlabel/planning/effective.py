"""The settings a server or CLI run uses: defaults < the data's plan < config file < --conf.

The plan lives in the studies folder (``.emlabel-plan.json``, written by ``emlabel plan``
or, when missing, by the first server start over a folder that has images). A DICOMweb
studies URL has no local files to plan from: its settings are the defaults and ``--conf``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from emlabel.planning.plan import PLAN_FILE, Plan, plan_studies, read_plan, write_plan
from emlabel.settings import AppSettings, parse_settings

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class EffectiveSettings:
    """The settings of one run and the plan they came from (None: not planned)."""

    settings: AppSettings
    plan: Plan | None
    plan_path: Path | None


def studies_plan(studies: str | Path, *, write: bool) -> tuple[Plan | None, Path | None]:
    """The studies folder's plan: read, or made from the data (and written when ``write``).

    None for a DICOMweb URL or a folder without images (nothing to plan from).
    """
    if str(studies).startswith(("http://", "https://")):
        return None, None
    folder = Path(studies)
    path = folder / PLAN_FILE
    if path.is_file():
        return read_plan(path), path
    if not folder.is_dir():
        return None, None
    plan = plan_studies(folder)
    if plan.images == 0:
        return None, None
    if write:
        try:
            write_plan(plan, path)
            logger.info("EMLabel: planned %s from %d images -> %s", folder, plan.images, path)
        except OSError as e:  # a read-only studies folder: plan in memory only
            logger.warning("EMLabel: could not write the plan %s (%s)", path, e)
    return plan, path


def effective_settings(
    studies: str | Path,
    conf: Mapping[str, Any] | None,
    *,
    base_dir: Path | None = None,
    write_plan_file: bool = True,
) -> EffectiveSettings:
    """Plan ``studies`` (see :func:`studies_plan`) and apply ``conf`` over the plan."""
    plan, path = studies_plan(studies, write=write_plan_file)
    planned = plan.settings_values() if plan is not None else None
    settings = parse_settings(conf, base_dir=base_dir, planned=planned)
    return EffectiveSettings(settings=settings, plan=plan, plan_path=path)
