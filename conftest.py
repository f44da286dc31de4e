"""Run timm's own model test suite over every timm_cct model.

``python tests/get_timm_tests.py`` puts timm's ``tests/`` (from the sdist of the installed timm) in
``.timm-tests/``; pytest then collects its ``test_models.py`` (see ``testpaths``), which imports the module named by
``TORCH_BACKEND`` before listing models, so our models join its parametrisation. Here we keep only the cases of
our models and mark the few that cannot apply, with the reason.
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
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
