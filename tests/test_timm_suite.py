"""timm's model checks that its suite limits to a list of timm's own families, run on our models.

timm's ``test_models.py`` runs forward_intermediates / features-getter / pruning checks only on the model
modules it names, and its non-standard cfg check only on the name patterns it names (``vit_*`` among them, so
``vit_lite_*`` is covered there). Here the same functions run on every timm_cct model. The suite is the one of the
installed timm release: a check that release's suite does not have is skipped, saying so, and the arguments passed
are the ones its signature takes.
"""
import importlib.util
import inspect
import sys
from pathlib import Path

import pytest
import timm

import timm_cct  # noqa: F401

SUITE = Path(__file__).resolve().parents[1] / '.timm-tests' / 'tests' / 'test_models.py'
MODELS = timm.list_models(['cct_*', 'cvt_*', 'vit_lite_*'])
TOKEN_MODELS = [m for m in MODELS if not m.startswith('vit_lite_')]  # the suite checks vit_lite_* itself

if not SUITE.is_file():
    pytest.skip("timm's test suite is not here; fetch it with `python tests/get_timm_tests.py`",
                allow_module_level=True)


def _load_suite():
    if 'timm_suite_models' not in sys.modules:
        spec = importlib.util.spec_from_file_location('timm_suite_models', SUITE)
        module = importlib.util.module_from_spec(spec)
        sys.modules['timm_suite_models'] = module
        spec.loader.exec_module(module)
    return sys.modules['timm_suite_models']


suite = _load_suite()
SUITE_VERSION = (SUITE.parents[1] / 'VERSION').read_text().strip() if (SUITE.parents[1] / 'VERSION').is_file() else '?'


def run_suite_test(test_name: str, model_name: str, **kwargs) -> None:
    """Call timm's ``test_name`` on ``model_name`` with the keyword arguments its signature names."""
    test = getattr(suite, test_name, None)
    if test is None:
        pytest.skip(f"timm {SUITE_VERSION}'s test suite has no {test_name}")
    params = inspect.signature(test).parameters
    test(model_name, **{k: v for k, v in kwargs.items() if k in params})


@pytest.mark.parametrize('model_name', TOKEN_MODELS)
def test_default_cfgs_non_std(model_name):
    run_suite_test('test_model_default_cfgs_non_std', model_name, batch_size=1, cfg_device='meta')


def _needs_three_levels(model_name: str) -> None:
    if len(timm.create_model(model_name, device='meta').feature_info) < 3:
        pytest.skip('a depth-2 model has 2 feature levels; this check asks for at least 3 '
                    '(covered by tests/test_model_api.py)')


@pytest.mark.parametrize('model_name', MODELS)
def test_forward_intermediates(model_name):
    _needs_three_levels(model_name)
    run_suite_test('test_model_forward_intermediates', model_name, batch_size=1)


@pytest.mark.parametrize('model_name', MODELS)
def test_forward_intermediates_features(model_name):
    run_suite_test('test_model_forward_intermediates_features', model_name, batch_size=1)


@pytest.mark.parametrize('model_name', MODELS)
def test_prune_intermediate_layers_contract(model_name):
    run_suite_test('test_prune_intermediate_layers_contract', model_name)
