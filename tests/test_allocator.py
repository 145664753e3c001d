"""The glibc allocator settings (:mod:`emlabel.allocator`)."""

from __future__ import annotations

import subprocess
import sys


def run(code: str, **env: str) -> str:
    import os

    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, **env),
                         capture_output=True, encoding="utf-8", check=True)  # fmt: skip
    return out.stdout.strip()


def test_the_settings_apply_on_linux_glibc_and_can_be_turned_off() -> None:
    code = "from emlabel.allocator import keep_freed_memory as k; print(k(), k())"
    assert run(code) == "True True"  # applied once, the answer kept
    assert run(code, EMLABEL_MALLOC_TUNING="0") == "False False"
