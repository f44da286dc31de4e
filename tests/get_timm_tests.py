"""Fetch timm's own test suite (``tests/`` of the sdist of the installed timm) into ``.timm-tests/``.

timm's pip wheel has no tests; its sdist on PyPI does. With ``.timm-tests/tests/test_models.py`` present,
``python -m pytest`` also runs timm's model suite over every timm_cct model (see ``conftest.py``).
"""
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import timm

DEST = Path(__file__).resolve().parents[1] / '.timm-tests'


def main() -> int:
    version = timm.__version__
    if (DEST / 'VERSION').is_file() and (DEST / 'VERSION').read_text().strip() == version:
        print(f"timm {version} test suite already in {DEST}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, '-m', 'pip', 'download', '--quiet', '--no-deps', '--no-binary', ':all:',
             f'timm=={version}', '--dest', tmp],
            check=True,
        )
        sdist = next(Path(tmp).glob('timm-*.tar.gz'))
        with tarfile.open(sdist) as tar:
            prefix = f'{sdist.name[:-len(".tar.gz")]}/tests/'
            members = [m for m in tar.getmembers() if m.name.startswith(prefix) and m.isfile()]
            DEST.mkdir(exist_ok=True)
            for m in members:
                m.name = 'tests/' + m.name[len(prefix):]
                tar.extract(m, DEST, filter='data')
    (DEST / 'VERSION').write_text(version + '\n')
    print(f"timm {version} test suite ({len(members)} files) extracted to {DEST}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
