from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_the_error_modules_import_without_numpy_pydantic_or_orjson() -> None:
    """The CLI imports ``features.errors`` to start; the package's ``__init__`` must stay empty
    and the error modules light, or every command pays for the numeric stack first."""
    code = (
        "import sys, features.errors, features.exceptions; "
        "print(','.join(sorted(m for m in ('numpy', 'pydantic', 'orjson') if m in sys.modules)))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == ""


def test_every_shipped_package_carries_py_typed() -> None:
    """Users type-check against the installed packages (``FeatureClient``, the catalog); without
    ``py.typed`` in the wheel mypy treats every import of them as ``Any``."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"][
        "setuptools"
    ]
    assert "py.typed" in setuptools["package-data"]["*"]
    packages = [pattern.rstrip("*") for pattern in setuptools["packages"]["find"]["include"]]
    assert "features" in packages
    missing = [name for name in packages if not (ROOT / name / "py.typed").is_file()]
    assert missing == []
