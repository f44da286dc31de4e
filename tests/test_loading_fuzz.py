"""Seeded random corruptions of a checkpoint file never load silently: each raises a clear error, or (for
bytes that carry nothing, such as a zip header's version field) loads exactly the original weights."""
import random

import pytest
import torch
from safetensors.torch import save_file

import timm
from timm_cct.loading import CheckpointError

from official import fixture, seeded_state_dict

NAME = 'cct_2_3x2_32'
SEED = 1234


@pytest.fixture(scope='module')
def original(tmp_path_factory):
    sd, _, _ = fixture(NAME)
    path = tmp_path_factory.mktemp('fuzz') / 'original.pth'
    torch.save(sd, path)
    reference = timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    return sd, path.read_bytes(), reference.state_dict()


def _load(path):
    return timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def _refused_or_identical(path, reference):
    try:
        model = _load(path)
    except (CheckpointError, FileNotFoundError) as e:
        assert str(path) in str(e)
        return 'refused'
    loaded = model.state_dict()
    assert loaded.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(loaded[key], value), f'{key} changed silently'
    return 'identical'


def test_truncated_files_are_refused(original, tmp_path):
    _, data, reference = original
    rng = random.Random(SEED)
    for i, cut in enumerate([0, 1, len(data) - 1] + [rng.randrange(2, len(data) - 1) for _ in range(5)]):
        path = tmp_path / f'cut{i}.pth'
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match='original|cut'):
            _load(path)


def test_flipped_bytes_never_load_changed_weights(original, tmp_path):
    _, data, reference = original
    rng = random.Random(SEED)
    outcomes = []
    for i in range(24):
        corrupt = bytearray(data)
        for _ in range(rng.choice((1, 1, 3))):
            pos = rng.randrange(len(corrupt))
            corrupt[pos] ^= 1 << rng.randrange(8)
        path = tmp_path / f'flip{i}.pth'
        path.write_bytes(bytes(corrupt))
        outcomes.append(_refused_or_identical(path, reference))
    assert 'refused' in outcomes


def _mutations(sd, rng):
    keys = sorted(sd)
    for _ in range(4):
        key = rng.choice(keys)
        shape = list(sd[key].shape) or [1]
        dim = rng.randrange(len(shape))
        shape[dim] += rng.choice((1, 2, 5))
        yield f'wrong shape of {key}', key, dict(sd, **{key: torch.zeros(shape)})
    for _ in range(4):
        dropped = rng.sample(keys, rng.randint(1, 3))
        yield f'missing {dropped}', dropped[0], {k: v for k, v in sd.items() if k not in dropped}
    for _ in range(3):
        extra = f'classifier.extra_{rng.randrange(1000)}.weight'
        yield f'extra {extra}', extra, dict(sd, **{extra: torch.zeros(3)})
    key = rng.choice(keys)
    bad = sd[key].clone().reshape(-1)
    bad[rng.randrange(bad.numel())] = float('nan')
    yield f'NaN in {key}', key, dict(sd, **{key: bad.reshape(sd[key].shape)})
    for other in ('cct_4_3x2_32', 'cvt_2_4_32', 'vit_2_4_32', 'cct_7_3x1_32', 'cct_2_3x2_32_sine'):
        if other == 'cct_2_3x2_32_sine':
            continue  # a sine table into a learnable embedding is the same function; tested in test_pretrained
        yield f'checkpoint of {other}', '', seeded_state_dict(other, seed=rng.randrange(100))


@pytest.mark.parametrize('fmt', ['pth', 'safetensors'])
def test_content_corruptions_are_refused_with_the_key(original, tmp_path, fmt):
    sd, _, _ = original
    rng = random.Random(SEED + (fmt == 'safetensors'))
    for i, (what, key, corrupt) in enumerate(_mutations(sd, rng)):
        path = tmp_path / f'case{i}.{fmt}'
        if fmt == 'pth':
            torch.save(corrupt, path)
        else:
            save_file({k: v.contiguous() for k, v in corrupt.items()}, str(path))
        with pytest.raises(CheckpointError) as err:
            _load(path)
        msg = str(err.value)
        assert str(path) in msg, what
        official_key = key.replace('classifier.', '') if key else ''
        assert not key or key in msg or official_key.split('.')[-1] in msg, (what, msg)


def test_not_a_checkpoint_is_refused(tmp_path):
    for i, payload in enumerate([b'hello world', b'\x00' * 100, b'PK\x03\x04garbage']):
        path = tmp_path / f'junk{i}.pth'
        path.write_bytes(payload)
        with pytest.raises(CheckpointError, match=f'junk{i}.pth'):
            _load(path)
    path = tmp_path / 'list.pth'
    torch.save([torch.zeros(3)], path)
    with pytest.raises(CheckpointError, match='list.pth'):
        _load(path)
    path = tmp_path / 'strings.pth'
    torch.save({'a': 'b'}, path)
    with pytest.raises(CheckpointError, match='not tensors'):
        _load(path)
