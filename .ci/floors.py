"""Print the lowest versions that pyproject.toml's dependencies allow, one pip requirement a line.

Every ``name>=X`` in ``[project] dependencies`` becomes ``name==X``; dependencies without a lower bound are
printed unchanged (pip picks releases that fit the pinned ones). CI installs these to test the declared floors.
"""
import re
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parents[1] / 'pyproject.toml'


def floors(pyproject: Path = PYPROJECT) -> list:
    deps = tomllib.loads(pyproject.read_text())['project']['dependencies']
    out = []
    for dep in deps:
        if ';' in dep:
            raise ValueError(f'{dep!r}: environment markers are not handled here')
        match = re.fullmatch(r'\s*([A-Za-z0-9._-]+)\s*(?:>=\s*([0-9][0-9A-Za-z.]*))?\s*(?:,.*)?', dep)
        if match is None:
            raise ValueError(f'{dep!r}: expected "name" or "name>=version[,...]"')
        name, low = match.groups()
        out.append(f'{name}=={low}' if low else name)
    return out


if __name__ == '__main__':
    print('\n'.join(floors()))
    sys.exit(0)
