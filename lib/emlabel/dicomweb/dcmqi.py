"""Find dcmqi's ``itkimage2segimage``, which MONAI Label uses to write DICOM-SEG.

Why: MONAI Label's DICOMweb datastore downloads dcmqi from GitHub at start when the tool
is not on PATH, and dies offline. The PyPI package ``dcmqi`` (in requirements.txt)
installs the tool beside the venv's Python, which is not on PATH when the venv was not
activated (``.venv/bin/python -m monailabel.main ...``); this puts that folder on PATH.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from emlabel.errors import EMLabelError

TOOL = "itkimage2segimage"


def ensure_dcmqi() -> str:
    """Path of ``itkimage2segimage``; adds the venv's bin folder to PATH when needed."""
    found = shutil.which(TOOL)
    if found:
        return found
    beside_python = Path(sys.executable).parent / TOOL
    if beside_python.is_file():
        os.environ["PATH"] = f"{beside_python.parent}{os.pathsep}{os.environ.get('PATH', '')}"
        return str(beside_python)
    raise EMLabelError(
        f"dcmqi's {TOOL} is not installed; DICOMweb mode needs it to write DICOM-SEG: "
        "pip install dcmqi (it is in requirements.txt)"
    )
