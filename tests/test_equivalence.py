"""Our models against the official implementation: names, parameter counts, state-dict keys, logits."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import timm
from safetensors.torch import load_file, save_file

import timm_cct
from timm_cct import checkpoint_filter_fn
from official import FIXTURES, FIXTURE_NAMES, VARIANTS, fixture, rel_error, seeded_state_dict, timm_name

TOL = 1e-5  # max abs error / max abs logit: float32 rounding


def test_every_official_variant_is_registered():
    ours = set(timm.list_models(['cct_*', 'cvt_*', 'vit_lite_*']))
    assert ours == {timm_name(n) for n in VARIANTS}
    assert len(ours) == 35


@pytest.mark.parametrize('official_name', sorted(n for n in VARIANTS if n.startswith('vit_')))
def test_official_vit_names_resolve_to_vit_lite(official_name):
    with pytest.warns(UserWarning, match='deprecated'):
        model = timm.create_model(official_name, device='meta')
    assert model.pretrained_cfg['architecture'] == timm_name(official_name)


@pytest.mark.parametrize('official_name', sorted(VARIANTS))
def test_parameter_count_matches_official(official_name):
    """All parameters are trainable; the sine table is a buffer, so sine variants count the official trainable ones."""
    variant = VARIANTS[official_name]
    model = timm.create_model(timm_name(official_name), device='meta')
    params = sum(p.numel() for p in model.parameters())
    assert params == variant['trainable_params']
    if variant['pos_embed'] == 'sine':
        assert 'pos_embed' not in dict(model.named_parameters())
        assert 'pos_embed' in dict(model.named_buffers())
    else:
        assert params == variant['params']


@pytest.mark.parametrize('official_name', sorted(VARIANTS))
def test_official_state_dict_maps_onto_model(official_name):
    """Every official key maps to exactly one of ours, with the same shape, and nothing is left over."""
    model = timm.create_model(timm_name(official_name), device='meta')
    official = {key: torch.empty(shape) for key, shape in VARIANTS[official_name]['keys']}
    if 'classifier.positional_emb' in official and VARIANTS[official_name]['pos_embed'] == 'sine':
        shape = official['classifier.positional_emb'].shape
        official['classifier.positional_emb'] = timm_cct.sine_pos_embed(shape[1], shape[2])
    converted = checkpoint_filter_fn(official, model)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == expected


@pytest.mark.parametrize('official_name', FIXTURE_NAMES)
def test_official_logits(official_name, tmp_path):
    """An official-format checkpoint, loaded by timm's own loader, gives the official logits."""
    state_dict, x, logits = fixture(official_name)
    path = tmp_path / f'{official_name}.pth'
    torch.save(state_dict, path)
    model = timm.create_model(
        timm_name(official_name), pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == logits.shape
    assert rel_error(out, logits) < TOL


@pytest.mark.parametrize('official_name', [n for n in FIXTURE_NAMES if n.endswith('_sine')])
def test_sine_table_is_the_official_one_and_frozen(official_name):
    table = load_file(FIXTURES / f'{official_name}.safetensors')['official.classifier.positional_emb']
    model = timm.create_model(timm_name(official_name))
    assert not any(name == 'pos_embed' for name, _ in model.named_parameters())
    torch.testing.assert_close(model.pos_embed, table, rtol=0, atol=1e-6)
    # the frozen table survives training steps: it gets no gradient and no optimizer state
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(2, 3, *model.img_size)).sum().backward()
    opt.step()
    torch.testing.assert_close(model.pos_embed, table, rtol=0, atol=1e-6)


OFFICIAL_SRC = os.environ.get('CCT_OFFICIAL_SRC')  # path of the official repository's `src` package


@pytest.mark.skipif(not OFFICIAL_SRC, reason='set CCT_OFFICIAL_SRC to the official src/ package to compare live')
@pytest.mark.parametrize('seed', [1, 2])
def test_against_official_source(seed, tmp_path):
    """Every variant, fresh seeds, logits computed by the official code itself (run in a subprocess)."""
    names = sorted(VARIANTS)
    weights = {}
    for name in names:
        state_dict = seeded_state_dict(name, seed)
        if VARIANTS[name]['pos_embed'] == 'sine':
            shape = state_dict['classifier.positional_emb'].shape
            state_dict['classifier.positional_emb'] = timm_cct.sine_pos_embed(shape[1], shape[2])
        weights[name] = state_dict
        torch.save(state_dict, tmp_path / f'{name}.pth')
    x32 = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    x224 = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(seed))
    x384 = torch.randn(2, 3, 384, 384, generator=torch.Generator().manual_seed(seed))
    save_file({'x32': x32, 'x224': x224, 'x384': x384}, tmp_path / 'inputs.safetensors')
    script = Path(__file__).parent / 'official_logits.py'
    subprocess.run([sys.executable, str(script), OFFICIAL_SRC, str(tmp_path)] + names, check=True)
    reference = load_file(tmp_path / 'logits.safetensors')
    inputs = {32: x32, 224: x224, 384: x384}
    for name in names:
        model = timm.create_model(timm_name(name), pretrained=True,
                                  pretrained_cfg_overlay=dict(file=str(tmp_path / f'{name}.pth'))).eval()
        with torch.no_grad():
            out = model(inputs[VARIANTS[name]['img_size']])
        assert rel_error(out, reference[name]) < TOL, name


def test_key_maps_are_inverse():
    from timm_cct.cct import official_to_timm_key, timm_to_official_key
    keys = {key for variant in VARIANTS.values() for key, _ in variant['keys']}
    assert all(timm_to_official_key(official_to_timm_key(k)) == k for k in keys)
    assert official_to_timm_key('classifier.blocks.12.norm1.bias') == 'blocks.12.norm2.bias'
