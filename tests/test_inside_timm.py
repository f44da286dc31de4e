"""Our models go through timm's own mechanisms: its weight loader and settings, its checkpoint paths, its view of
the input size, its meta-device convention."""
import hashlib
import os
import subprocess
import sys

import pytest
import torch

import timm
import timm_cct
from timm.models import load_checkpoint, save_for_hf
from timm_cct.loading import CheckpointError

from official import fixture, rel_error, seeded_state_dict, timm_name

try:  # timm >= 1.0.31: what its scripts use; before, timm reads the input size from the pretrained cfg
    from timm.data.model_config import resolve_input_data_config as data_config
except ImportError:
    from timm.data import resolve_model_data_config as data_config

FAMILIES = ['cct_2_3x2_32', 'cct_2_3x2_32_sine', 'cvt_2_4_32', 'cvt_2_4_32_sine', 'vit_lite_2_4_32',
            'vit_lite_2_4_32_sine']


def _official_file(tmp_path, official_name='cct_7_3x1_32', name='official.pth'):
    sd, x, logits = fixture(official_name)
    path = tmp_path / name
    torch.save(sd, path)
    return path, x, logits


# -- timm's settings hold for our models ---------------------------------------------------------

@pytest.fixture
def check_hash():
    timm.models.set_pretrained_check_hash(True)
    yield
    timm.models.set_pretrained_check_hash(False)


@pytest.mark.parametrize('right_hash', [True, False])
def test_check_hash_setting_holds(tmp_path, monkeypatch, check_hash, right_hash):
    """A URL whose file name carries a sha256 prefix is checked when timm's check_hash is on (file:// URL, torch
    hub cache in a temporary folder)."""
    path, x, logits = _official_file(tmp_path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:8] if right_hash else 'deadbeef'
    served = tmp_path / 'served'
    served.mkdir()
    named = served / f'cct_7_3x1_32-{digest}.pth'
    path.rename(named)
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    overlay = dict(url=named.as_uri(), file=None, hf_hub_id=None)
    if right_hash:
        model = timm.create_model('cct_7_3x1_32', pretrained=True, pretrained_cfg_overlay=overlay).eval()
        with torch.no_grad():
            assert rel_error(model(x), logits) < 1e-5
    else:
        with pytest.raises(Exception, match='hash') as err:
            timm.create_model('cct_7_3x1_32', pretrained=True, pretrained_cfg_overlay=overlay)
        assert named.as_uri() in str(err.value)


def test_hub_offline_setting_fails_at_once_and_names_the_way_out(tmp_path):
    code = ("import timm, timm_cct\n"
            "try:\n"
            "    timm.create_model('cct_7_3x1_32', pretrained=True,\n"
            "                      pretrained_cfg_overlay=dict(hf_hub_id='someone/cct_7_3x1_32'))\n"
            "except Exception as e:\n"
            "    print(type(e).__name__, e)\n")
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_HOME=str(tmp_path / 'hf'))
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=120)
    assert 'someone/cct_7_3x1_32' in out.stdout
    assert 'HF_HUB_OFFLINE' in out.stdout and 'local-dir:' in out.stdout
    assert 'Traceback' not in out.stderr


# -- official checkpoints on every timm path -------------------------------------------------------

def test_create_model_checkpoint_path_takes_an_official_file(tmp_path):
    path, x, logits = _official_file(tmp_path)
    model = timm.create_model('cct_7_3x1_32', checkpoint_path=str(path)).eval()
    with torch.no_grad():
        assert rel_error(model(x), logits) < 1e-5


@pytest.mark.parametrize('official_name', ['cct_7_3x1_32_sine', 'vit_7_4_32_sine', 'cvt_7_4_32'])
def test_load_checkpoint_takes_an_official_file(tmp_path, official_name):
    """timm.models.load_checkpoint is what validate.py --checkpoint and train.py --initial-checkpoint call."""
    path, x, logits = _official_file(tmp_path, official_name)
    model = timm.create_model(timm_name(official_name))
    load_checkpoint(model, str(path))
    with torch.no_grad():
        assert rel_error(model.eval()(x), logits) < 1e-5


def test_another_variants_file_gets_the_clear_error_on_every_path(tmp_path):
    path, _, _ = _official_file(tmp_path, 'cct_7_3x1_32')
    for load in (lambda: timm.create_model('cct_2_3x2_32', checkpoint_path=str(path)),
                 lambda: load_checkpoint(timm.create_model('cct_2_3x2_32'), str(path)),
                 lambda: timm.create_model('cct_2_3x2_32', pretrained=True,
                                           pretrained_cfg_overlay=dict(file=str(path)))):
        with pytest.raises(CheckpointError, match='another variant') as err:
            load()
        assert 'unexpected keys' in str(err.value) and 'shape mismatches' in str(err.value)


def test_load_state_dict_of_our_own_keys_is_unchanged_and_strict():
    model = timm.create_model('cct_2_3x2_32')
    sd = model.state_dict()
    other = timm.create_model('cct_2_3x2_32')
    other.load_state_dict(sd)
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in sd.items())
    del sd['head.bias']
    with pytest.raises(CheckpointError, match='missing keys .*head.bias'):
        other.load_state_dict(sd)
    assert other.load_state_dict(sd, strict=False).missing_keys == ['head.bias']


# -- timm's view of the model is true ----------------------------------------------------------------

@pytest.mark.parametrize('how', ['img_size', 'set_input_size'])
def test_data_config_follows_the_input_size(how):
    if how == 'img_size':
        model = timm.create_model('cct_2_3x2_32', img_size=48)
    else:
        model = timm.create_model('cct_2_3x2_32')
        model.set_input_size(48)
    assert tuple(data_config(model)['input_size']) == (3, 48, 48)


@pytest.mark.parametrize('name', FAMILIES)
def test_save_for_hf_round_trip_after_resizing(tmp_path, name):
    model = timm.create_model(name).eval()
    model.set_input_size(48)
    save_for_hf(model, tmp_path / 'export')
    loaded = timm.create_model(f'local-dir:{tmp_path / "export"}', pretrained=True).eval()
    assert loaded.img_size == (48, 48)
    assert tuple(data_config(loaded)['input_size']) == (3, 48, 48)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_export_to_hub_round_trip_built_at_another_size(tmp_path):
    from timm_cct.hub import export_to_hub
    model = timm.create_model('cct_2_3x2_32_sine', img_size=40, num_classes=3).eval()
    export_to_hub(model, tmp_path / 'export', label_names=['a', 'b', 'c'])
    loaded = timm.create_model(f'local-dir:{tmp_path / "export"}', pretrained=True).eval()
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize('pool', ['avg', 'max', 'token'])
def test_fine_tune_load_with_another_pooling_drops_seq_pool(tmp_path, pool):
    official = 'vit_7_4_32' if pool == 'token' else 'cct_7_3x1_32'
    sd = seeded_state_dict(official)
    if pool == 'token':  # a ViT-Lite file into a ViT-Lite: no SeqPool anywhere, the class token pools
        name = 'vit_lite_7_4_32'
    else:
        name = 'cct_7_3x1_32'
    path = tmp_path / 'w.pth'
    torch.save(sd, path)
    model = timm.create_model(name, pretrained=True, global_pool=pool, pretrained_cfg_overlay=dict(file=str(path)))
    assert model.seq_pool is None and model.global_pool == pool
    ref = timm.create_model(name, global_pool='seq' if pool != 'token' else 'token')
    ref.load_state_dict(timm_cct.checkpoint_filter_fn(sd, ref))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval().forward_features(x), ref.eval().forward_features(x))


def test_class_token_checkpoint_into_seq_pool_keeps_the_new_seq_pool(tmp_path):
    sd = seeded_state_dict('vit_7_4_32')
    path = tmp_path / 'w.pth'
    torch.save(sd, path)
    model = timm.create_model('vit_lite_7_4_32', pretrained=True, global_pool='seq',
                              pretrained_cfg_overlay=dict(file=str(path)))
    assert model.seq_pool is not None
    assert torch.equal(model.cls_token.detach(), sd['classifier.class_emb'])


# -- meta-device construction --------------------------------------------------------------------

@pytest.mark.parametrize('name', FAMILIES)
def test_meta_device_materialisation(name):
    reference = timm.create_model(name).eval()
    with torch.device('meta'):
        model = timm.create_model(name)
    model = model.to_empty(device='cpu')
    reinit = getattr(timm.models, 'reinit_non_persistent_buffers', None)
    if reinit is not None:
        reinit(model)
    else:  # timm releases without the helper: the module method it calls
        model.init_non_persistent_buffers()
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), reference(x), rtol=0, atol=0)


@pytest.mark.parametrize('name', FAMILIES)
def test_init_weights_initialises_every_parameter(name):
    model = timm.create_model(name)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float('nan'))
        for b in model.buffers():
            b.fill_(float('nan'))
    model.init_weights()
    bad = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if not torch.isfinite(t).all()]
    assert not bad
    if 'sine' in name:
        torch.testing.assert_close(model.pos_embed, timm_cct.sine_pos_embed(model.pos_embed.shape[1], model.embed_dim))


# -- the model keeps timm's forward contract -------------------------------------------------------

def test_forward_is_forward_head_of_forward_features():
    model = timm.create_model('cct_2_3x2_32').eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_head(model.forward_features(x)), rtol=0, atol=0)


def test_features_only_takes_timm_feature_cfg():
    model = timm.create_model('cct_2_3x2_32', features_only=True, feature_cfg=dict(output_fmt='NLC', norm=True)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model(x)
        _, expected = model.model.forward_intermediates(x, indices=2, norm=True, output_fmt='NLC')
    assert [tuple(f.shape) for f in feats] == [(2, 64, 128), (2, 64, 128)]
    for got, want in zip(feats, expected):
        torch.testing.assert_close(got, want)
