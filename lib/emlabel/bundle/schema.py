"""The MONAI bundle metadata schema, used from a local copy (no network at run time)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from emlabel.errors import EMLabelError

SCHEMA_NAME = "meta_schema_20240725.json"
SCHEMA_URL = (
    f"https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/{SCHEMA_NAME}"
)
SCHEMA_ENV = "EMLABEL_BUNDLE_SCHEMA"


class SchemaUnavailableError(EMLabelError):
    """No local schema and it could not be downloaded."""


def find_schema(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """A local copy of the schema: ``explicit``, ``$EMLABEL_BUNDLE_SCHEMA``, or ``../shared``."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise SchemaUnavailableError(f"schema file {path} does not exist")
        return path
    if os.environ.get(SCHEMA_ENV):
        return find_schema(os.environ[SCHEMA_ENV])
    repo = Path(__file__).resolve().parents[3]
    candidate = repo.parent / "shared" / "bundle-schema" / SCHEMA_NAME
    return candidate if candidate.is_file() else None


def verify_metadata_file(meta_file: str | os.PathLike[str], schema: Path | None) -> None:
    """Validate ``metadata.json`` with MONAI's ``verify_metadata`` against the schema.

    MONAI downloads the schema unless ``filepath`` names an existing file; without a local
    copy this tries the download once and turns a failure into a clear message.
    """
    from monai.bundle import verify_metadata

    if schema is None:
        target = Path(tempfile.mkdtemp(prefix="emlabel-schema-")) / SCHEMA_NAME
        try:
            verify_metadata(meta_file=str(meta_file), filepath=str(target))
            return
        except ValueError:
            raise
        except Exception as e:
            raise SchemaUnavailableError(
                "cannot verify metadata.json: no local copy of the MONAI bundle schema "
                f"({SCHEMA_NAME}) and downloading it failed ({type(e).__name__}); "
                f"pass --schema PATH or set {SCHEMA_ENV}"
            ) from e
    verify_metadata(meta_file=str(meta_file), filepath=str(schema))
