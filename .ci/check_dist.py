"""Check the built sdist and wheel: one version everywhere, and the files a user needs are inside.

    python .ci/check_dist.py DIST_DIR
"""
import re
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def source_version() -> str:
    text = (ROOT / 'timm_cct' / '__init__.py').read_text()
    match = re.search(r"^__version__ = ['\"]([^'\"]+)['\"]", text, re.M)
    if match is None:
        raise SystemExit('timm_cct/__init__.py has no __version__ = "..." line')
    return match.group(1)


def main(dist: Path) -> int:
    version = source_version()
    sdists = sorted(dist.glob('timm_cct-*.tar.gz'))
    wheels = sorted(dist.glob('timm_cct-*.whl'))
    if len(sdists) != 1 or len(wheels) != 1:
        raise SystemExit(f'expected one sdist and one wheel in {dist}, found {[p.name for p in dist.iterdir()]}')
    sdist, wheel = sdists[0], wheels[0]
    problems = []
    for path in (sdist, wheel):
        if f'-{version}' not in path.name:
            problems.append(f'{path.name}: version is not {version} (timm_cct.__version__)')

    package = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / 'timm_cct').rglob('*')
                     if p.is_file() and p.suffix in ('.py', '.yaml') and '__pycache__' not in p.parts)
    configs = [p for p in package if p.startswith('timm_cct/configs/') and p.endswith('.yaml')]
    if not configs:
        problems.append('no timm_cct/configs/*.yaml in the source tree')

    with tarfile.open(sdist) as tar:
        prefix = f'timm_cct-{version}/'
        names = {m.name[len(prefix):] for m in tar.getmembers() if m.name.startswith(prefix)}
        pkg_info = tar.extractfile(prefix + 'PKG-INFO').read().decode() if 'PKG-INFO' in names else ''
    for need in ['README.md', 'LICENSE', 'pyproject.toml', 'PKG-INFO', *package]:
        if need not in names:
            problems.append(f'sdist lacks {need}')
    if f'\nVersion: {version}\n' not in pkg_info:
        problems.append(f'sdist PKG-INFO does not say Version: {version}')

    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        info = f'timm_cct-{version}.dist-info/'
        metadata = whl.read(info + 'METADATA').decode() if info + 'METADATA' in names else ''
    for need in package:
        if need not in names:
            problems.append(f'wheel lacks {need}')
    if not any(n.startswith(info) and n.endswith('/LICENSE') for n in names):
        problems.append('wheel lacks the LICENSE file')
    stray = sorted(n for n in names if not n.startswith(('timm_cct/', info)))
    if stray:
        problems.append(f'wheel holds files outside the package: {stray[:10]}')
    if f'\nVersion: {version}\n' not in metadata:
        problems.append(f'wheel METADATA does not say Version: {version}')
    if 'Compact Transformers' not in metadata:
        problems.append('wheel METADATA lacks the README as long description')

    for p in problems:
        print('check_dist:', p, file=sys.stderr)
    if not problems:
        print(f'check_dist: {sdist.name} and {wheel.name} hold version {version}, {len(package)} package files '
              f'({len(configs)} configs), README and LICENSE')
    return 1 if problems else 0


if __name__ == '__main__':
    if len(sys.argv) != 2:
        print('usage: python .ci/check_dist.py DIST_DIR', file=sys.stderr)
        sys.exit(2)
    sys.exit(main(Path(sys.argv[1])))
