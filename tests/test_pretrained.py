"""Pretrained tags, loud loading and fine-tuning changes (on the official-format fixtures, no network)."""
import argparse
import urllib.error

import pytest
import torch
import torch.nn.functional as F

import timm
import timm_cct
from timm_cct.loading import CheckpointError, WeightsUnavailableError

from official import FIXTURE_NAMES, fixture, rel_error, seeded_state_dict, timm_name

URL = 'https://shi-labs.com/projects/cct/checkpoints/'
CIFAR10 = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 1.0, 10)
CIFAR100 = ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761), 1.0, 100)
FLOWERS = ((0.4353, 0.3773, 0.2872), (0.2966, 0.2455, 0.2698), 1.0, 102)
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 0.9, 1000)
# tag -> (url path, (mean, std, crop_pct, classes), img size, reported top-1), from the official release notes
OFFICIAL = {
    'cct_7_3x1_32.cifar10_300e': ('pretrained/cct_7_3x1_32_cifar10_300epochs.pth', CIFAR10, 32, 96.53),
    'cct_7_3x1_32_sine.cifar10_1500e': ('pretrained/cct_7_3x1_32_sine_cifar10_1500epochs.pth', CIFAR10, 32, 97.48),
    'cct_7_3x1_32_sine.cifar10_5000e': ('pretrained/cct_7_3x1_32_sine_cifar10_5000epochs.pth', CIFAR10, 32, 98.00),
    'cct_7_3x1_32_c100.cifar100_300e': ('pretrained/cct_7_3x1_32_cifar100_300epochs.pth', CIFAR100, 32, 80.92),
    'cct_7_3x1_32_sine_c100.cifar100_1500e': (
        'pretrained/cct_7_3x1_32_sine_cifar100_1500epochs.pth', CIFAR100, 32, 82.72),
    'cct_7_3x1_32_sine_c100.cifar100_5000e': (
        'pretrained/cct_7_3x1_32_sine_cifar100_5000epochs.pth', CIFAR100, 32, 82.87),
    'cct_7_7x2_224_sine.flowers102_300e': ('pretrained/cct_7_7x2_224_flowers102.pth', FLOWERS, 224, 97.19),
    'cct_14_7x2_224.in1k': ('pretrained/cct_14_7x2_224_imagenet.pth', IMAGENET, 224, 80.67),
    'cct_14_7x2_384.in1k_ft_384': ('finetuned/cct_14_7x2_384_imagenet.pth', IMAGENET, 384, 82.71),
    'cct_14_7x2_384_fl.in1k_ft_flowers102_384': ('finetuned/cct_14_7x2_384_flowers102.pth', FLOWERS, 384, 99.76),
}
# the checkpoint the official code loads for each model
DEFAULT_TAGS = {
    'cct_7_3x1_32': 'cifar10_300e', 'cct_7_3x1_32_sine': 'cifar10_5000e', 'cct_7_3x1_32_c100': 'cifar100_300e',
    'cct_7_3x1_32_sine_c100': 'cifar100_5000e', 'cct_7_7x2_224_sine': 'flowers102_300e',
    'cct_14_7x2_224': 'in1k', 'cct_14_7x2_384': 'in1k_ft_384', 'cct_14_7x2_384_fl': 'in1k_ft_flowers102_384',
}


def _save(state_dict, path):
    torch.save(state_dict, path)
    return str(path)


def _load(name, path, **kwargs):
    kwargs.setdefault('pretrained_cfg_overlay', dict(file=str(path)))
    return timm.create_model(name, pretrained=True, **kwargs).eval()


def test_list_pretrained_has_the_ten_official_checkpoints():
    assert sorted(timm.list_pretrained('cct_*')) == sorted(OFFICIAL)
    assert timm.list_pretrained('cvt_*') == [] and timm.list_pretrained('vit_lite_*') == []


@pytest.mark.parametrize('tag', sorted(OFFICIAL))
def test_pretrained_cfg_matches_official_release(tag):
    path, (mean, std, crop_pct, classes), size, top1 = OFFICIAL[tag]
    cfg = timm.models.get_pretrained_cfg(tag)
    assert cfg.url == URL + path
    assert cfg.mean == pytest.approx(mean) and cfg.std == pytest.approx(std)
    assert cfg.crop_pct == crop_pct and cfg.num_classes == classes and cfg.input_size == (3, size, size)
    assert f'{top1:.2f}%' in cfg.description


@pytest.mark.parametrize('name', sorted(DEFAULT_TAGS))
def test_default_tag_is_the_official_one(name):
    assert timm.models.get_pretrained_cfg(name).tag == DEFAULT_TAGS[name]


def test_pickles_load_with_weights_only(tmp_path):
    marker = tmp_path / 'code_ran'

    class Payload:
        def __reduce__(self):
            return (marker.touch, ())

    sd, _, _ = fixture('cct_2_3x2_32')
    path = tmp_path / 'evil.pth'
    torch.save(dict(sd, payload=Payload()), path)
    with pytest.raises(CheckpointError, match='never unpickled') as err:
        _load('cct_2_3x2_32', path)
    assert str(path) in str(err.value)
    assert 'weights_only=False' not in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize('official_name', FIXTURE_NAMES)
def test_official_checkpoint_files_give_official_logits(official_name, tmp_path):
    sd, x, logits = fixture(official_name)
    model = _load(timm_name(official_name), _save(sd, tmp_path / 'w.pth'))
    with torch.no_grad():
        assert rel_error(model(x), logits) < 1e-5
    assert model.pretrained_cfg.get('state_dict') is None  # the read state dict is not kept in the cfg


def test_train_script_checkpoint_prefers_ema(tmp_path):
    sd, x, logits = fixture('cct_2_3x2_32')
    model = timm.create_model('cct_2_3x2_32')
    ema = {k: v.clone() for k, v in timm_cct.checkpoint_filter_fn(sd, model).items()}
    noise = {k: v + 1 for k, v in ema.items()}
    path = _save({'epoch': 3, 'state_dict': noise, 'state_dict_ema': ema, 'args': argparse.Namespace(lr=1e-3)},
                 tmp_path / 'last.pth.tar')
    with torch.no_grad():
        assert rel_error(_load('cct_2_3x2_32', path)(x), logits) < 1e-5


def test_unreachable_url_names_it_and_the_ways_out(monkeypatch, tmp_path):
    def offline(url, **kwargs):
        raise urllib.error.URLError('Name or service not known')
    monkeypatch.setattr(timm.models._builder, 'load_state_dict_from_url', offline)  # timm's own download call
    with pytest.raises(WeightsUnavailableError) as err:
        timm.create_model('cct_7_3x1_32', pretrained=True)
    msg = str(err.value)
    assert URL + 'pretrained/cct_7_3x1_32_cifar10_300epochs.pth' in msg
    assert "pretrained_cfg_overlay=dict(file=" in msg and "hf-hub:" in msg and 'local-dir:' in msg


def test_model_without_weights_says_so():
    with pytest.raises(WeightsUnavailableError, match='no pretrained weights'):
        timm.create_model('cvt_7_4_32', pretrained=True)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match='nothing_here.pth'):
        _load('cct_2_3x2_32', tmp_path / 'nothing_here.pth')


def test_other_variant_names_file_keys_and_shapes(tmp_path):
    path = _save(seeded_state_dict('cct_7_3x1_32'), tmp_path / 'cct7.pth')
    with pytest.raises(CheckpointError) as err:
        _load('cct_2_3x2_32', path)
    msg = str(err.value)
    assert path in msg and 'missing keys' in msg and 'unexpected keys' in msg
    assert 'blocks.0.norm1.weight: checkpoint (256,) vs model (128,)' in msg


def test_other_class_count_is_refused_without_overlay(tmp_path):
    path = _save(seeded_state_dict('cct_7_3x1_32_c100'), tmp_path / 'c100.pth')
    with pytest.raises(CheckpointError, match=r'classifier has 100 classes .* says 10'):
        _load('cct_7_3x1_32', path)


def test_learned_embedding_into_sine_model_is_refused(tmp_path):
    sd, _, _ = fixture('cct_7_3x1_32')
    with pytest.raises(CheckpointError, match='frozen sine table'):
        _load('cct_7_3x1_32_sine', _save(sd, tmp_path / 'w.pth'))


def test_sine_checkpoint_into_learnable_model_keeps_logits(tmp_path):
    sd, x, logits = fixture('cct_7_3x1_32_sine')
    model = _load('cct_7_3x1_32', _save(sd, tmp_path / 'w.pth'))
    with torch.no_grad():
        assert rel_error(model(x), logits) < 1e-5


def test_grid_mismatch_without_resize_request_is_refused(tmp_path):
    path = _save(seeded_state_dict('cct_7_3x1_32'), tmp_path / 'w.pth')
    with pytest.raises(CheckpointError, match=r'pos_embed: checkpoint \(1, 256, 256\) vs model \(1, 1024, 256\)'):
        _load('cct_7_3x1_32', path, img_size=64, pretrained_cfg_overlay=dict(file=path, input_size=(3, 64, 64)))


def _grid_resize(pos, old, new):
    """Independent bilinear resize of a (1, old*old, D) embedding to (1, new*new, D)."""
    grid = pos.reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new, new), mode='bilinear', align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, new * new, -1)


def _sine_table(num, dim):
    """Independent sinusoidal table: angle p / 10000^(2*(i//2)/dim), sine on even, cosine on odd channels."""
    p = torch.arange(num, dtype=torch.float64)[:, None]
    i = torch.arange(dim)[None, :]
    angle = p / 10000 ** (2 * torch.div(i, 2, rounding_mode='floor') / dim)
    return torch.where(i % 2 == 0, torch.sin(angle), torch.cos(angle)).unsqueeze(0).float()


def test_new_img_size_resamples_learnable_embedding(tmp_path):
    sd, _, _ = fixture('cct_7_3x1_32')
    model = _load('cct_7_3x1_32', _save(sd, tmp_path / 'w.pth'), img_size=48)
    expected = _grid_resize(sd['classifier.positional_emb'], 16, 24)
    torch.testing.assert_close(model.pos_embed.detach(), expected)
    torch.testing.assert_close(model.blocks[0].mlp.fc1.weight.detach(), sd['classifier.blocks.0.linear1.weight'])
    assert model(torch.randn(1, 3, 48, 48)).shape == (1, 10)


def test_new_img_size_regenerates_sine_table(tmp_path):
    sd, _, _ = fixture('cct_7_3x1_32_sine')
    stored = sd['classifier.positional_emb']
    torch.testing.assert_close(_sine_table(256, 256), stored, atol=1e-4, rtol=0)  # the formula is the official one
    model = _load('cct_7_3x1_32_sine', _save(sd, tmp_path / 'w.pth'), img_size=40)
    torch.testing.assert_close(model.pos_embed, _sine_table(400, 256), atol=1e-4, rtol=0)


def test_new_num_classes_reinitialises_head(tmp_path):
    sd, _, _ = fixture('cct_7_3x1_32')
    torch.manual_seed(0)
    model = _load('cct_7_3x1_32', _save(sd, tmp_path / 'w.pth'), num_classes=37)
    assert model.head.weight.shape == (37, 256)
    assert torch.count_nonzero(model.head.bias) == 0
    assert 0.01 < model.head.weight.std().item() < 0.03  # trunc-normal(0.02), not the checkpoint's 0.1
    torch.testing.assert_close(model.seq_pool.attn.weight.detach(), sd['classifier.attention_pool.weight'])


def test_one_input_channel_sums_first_conv(tmp_path):
    sd, _, _ = fixture('cct_7_3x1_32')
    model = _load('cct_7_3x1_32', _save(sd, tmp_path / 'w.pth'), in_chans=1)
    expected = sd['tokenizer.conv_layers.0.0.weight'].sum(dim=1, keepdim=True)
    torch.testing.assert_close(model.tokenizer.layers[0].conv.weight.detach(), expected)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_features_only_loads_and_drops_the_head(tmp_path):
    sd, x, _ = fixture('cct_7_3x1_32')
    model = _load('cct_7_3x1_32', _save(sd, tmp_path / 'w.pth'), features_only=True, out_indices=(-1,))
    feats = model(x)
    assert feats[-1].shape == (2, 256, 16, 16)
    assert model.pretrained_cfg.get('state_dict') is None
