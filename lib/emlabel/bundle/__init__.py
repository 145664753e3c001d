"""Export trained EMLabel models as MONAI bundles (no server needed)."""

from emlabel.bundle.export import BundleError, export_bundle
from emlabel.bundle.schema import find_schema, verify_metadata_file

__all__ = ["BundleError", "export_bundle", "find_schema", "verify_metadata_file"]
