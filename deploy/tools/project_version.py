"""Print the project's version from pyproject.toml (for `docker build --build-arg VERSION=...`)."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def project_version(pyproject: Path = PYPROJECT) -> str:
    version: str = tomllib.loads(pyproject.read_text())["project"]["version"]
    return version


if __name__ == "__main__":
    print(project_version(Path(sys.argv[1]) if len(sys.argv) > 1 else PYPROJECT))
