"""Run timm's own model test suite over every timm_cct model.

``python tests/get_timm_tests.py`` puts timm's ``tests/`` (from the sdist of the installed timm) in
``.timm-tests/``; pytest then collects its ``test_models.py`` (see ``testpaths``), which imports the module named by
``TORCH_BACKEND`` before listing models, so our models join its parametrisation. Here we keep only the cases of
our models and mark the few that cannot apply, with the reason.

``TIMM_CCT_TEST_STRIDE=N`` keeps every N-th parameter case of each test function (the first always), for a
shorter run that still calls every test; ``TIMM_CCT_TEST_INSTALLED=1`` refuses to run unless ``timm_cct`` is imported
from an installed package rather than a source tree.
"""
import os
from pathlib import Path

import pytest

os.environ.setdefault('TORCH_BACKEND', 'timm_cct')

TIMM_TESTS = Path(__file__).parent / '.timm-tests'

# test name -> why it cannot run here
SKIPPED = {
    'test_model_load_pretrained': 'downloads the official weights, and CI has no network; '
                                  'loading from local files is tested in tests/test_pretrained.py',
    'test_model_features_pretrained': 'downloads the official weights, and CI has no network; '
                                      'features_only is tested in tests/test_model_api.py',
}
# timm's "standard" cfg test wants NCHW maps from forward_features; like timm's vit_* (which it lists as
# non-standard), our forward_features returns tokens (B, N, D). The non-standard cfg test is run on them instead
# in tests/test_timm_suite.py.
TOKEN_OUTPUT_REASON = ("forward_features returns tokens (B, N, D) like timm's vit_*, so timm's non-standard "
                       "cfg test applies; it runs in tests/test_timm_suite.py")
SHALLOW_REASON = ("a depth-2 model has 2 blocks, so 2 feature levels, and this test asks for at least 3; "
                  "features_only of depth-2 models is tested in tests/test_model_api.py")


def _installed(path: Path) -> bool:
    return any(part in ('site-packages', 'dist-packages') for part in path.parts)


def pytest_report_header(config):
    import huggingface_hub
    import timm
    import torch

    import timm_cct
    where = Path(timm_cct.__file__).resolve().parent
    stride = os.environ.get('TIMM_CCT_TEST_STRIDE')
    return [f'timm_cct {timm_cct.__version__} from {where}',
            f'torch {torch.__version__}, timm {timm.__version__}, huggingface-hub {huggingface_hub.__version__}',
            f'timm test suite: {(TIMM_TESTS / "VERSION").read_text().strip() if (TIMM_TESTS / "VERSION").is_file() else "absent"}'
            + (f'; every {stride}th parameter case of each test (TIMM_CCT_TEST_STRIDE)' if stride else '')]


def pytest_sessionstart(session):
    if os.environ.get('TIMM_CCT_TEST_INSTALLED') == '1':
        import timm_cct
        where = Path(timm_cct.__file__).resolve()
        if not _installed(where):
            raise pytest.UsageError(f'TIMM_CCT_TEST_INSTALLED=1, but timm_cct was imported from {where}, '
                                    f'not from an installed package')


def _stride() -> int:
    value = os.environ.get('TIMM_CCT_TEST_STRIDE', '1')
    if not value.isdigit() or int(value) < 1:
        raise pytest.UsageError(f'TIMM_CCT_TEST_STRIDE must be a whole number >= 1, got {value!r}')
    return int(value)


def _every_nth(items, stride: int):
    """Every ``stride``-th parameter case of each test function, in collection order (the first always)."""
    seen = {}
    keep, drop = [], []
    for item in items:
        key = (item.path, getattr(item, 'originalname', item.name))
        index = seen[key] = seen.get(key, -1) + 1
        (keep if index % stride == 0 else drop).append(item)
    return keep, drop


def pytest_configure(config):
    for marker in ('base', 'cfg', 'cfg_nonstd', 'forward', 'backward', 'torchscript', 'features',
                   'fxforward', 'fxbackward'):
        config.addinivalue_line('markers', f"{marker}: timm's model-suite marker")


def _depth(model_name: str) -> int:
    """Depth from the name: cct_<depth>_..., cvt_<depth>_..., vit_lite_<depth>_..."""
    return int(model_name.split('_')[2 if model_name.startswith('vit_lite_') else 1])


def _ours(model_name: str) -> bool:
    import timm_cct  # noqa: F401  (registers the models)
    import timm
    return timm.is_model(model_name.split('.')[0]) and model_name.startswith(('cct_', 'cvt_', 'vit_lite_'))


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        if TIMM_TESTS not in item.path.parents:
            keep.append(item)
            continue
        params = getattr(getattr(item, 'callspec', None), 'params', {})
        model_name = params.get('model_name')
        if not isinstance(model_name, str) or not _ours(model_name):
            drop.append(item)
            continue
        test = item.originalname
        if test in SKIPPED:
            item.add_marker(pytest.mark.skip(reason=SKIPPED[test]))
        elif test == 'test_model_default_cfgs':
            item.add_marker(pytest.mark.skip(reason=TOKEN_OUTPUT_REASON))
        elif test == 'test_model_forward_features' and _depth(model_name) < 3:
            item.add_marker(pytest.mark.skip(reason=SHALLOW_REASON))
        keep.append(item)
    stride = _stride()
    if stride > 1:
        keep, more = _every_nth(keep, stride)
        drop += more
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
