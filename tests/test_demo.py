"""The demo command (tiny runs of its real code path) and the SeqPool attention maps."""
import csv
import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip('sklearn')
pytest.importorskip('matplotlib')
pytest.importorskip('tqdm')

import timm  # noqa: E402

import timm_cct  # noqa: E402
from timm_cct import demo  # noqa: E402
from timm_cct.visualize import seqpool_attention  # noqa: E402

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
TINY = ['--epochs', '1', '--warmup-epochs', '0', '--seeds', '0', '--img-size', '16', '--batch-size', '16',
        '--quiet']


@pytest.fixture(scope='module')
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp('digits')
    args = demo.parse_args(TINY + ['--models', 'cct_2_3x2_32', demo.CNN_BASELINE, '--max-train-images', '64',
                                   '--max-test-images', '40', '--output', str(out)])
    return demo.run_demo(args)


def test_digits_run_writes_table(digits_run):
    out = digits_run['output']
    with open(out / 'results.csv') as f:
        rows = list(csv.DictReader(f))
    assert [r['model'] for r in rows] == ['cct_2_3x2_32', demo.CNN_BASELINE]
    # Official CCT-2/3x2 has 283,723 parameters at 32x32 (64 tokens); at 16x16 the learnable position
    # embedding has 16 rows instead of 64, each of width 128.
    assert int(rows[0]['params']) == 283_723 - (64 - 16) * 128
    for r in rows:
        assert 0. <= float(r['top1_mean']) <= 100.
        assert float(r['top1_std']) == 0.  # one seed
        assert int(r['macs']) > 0
    md = (out / 'results.md').read_text()
    assert '| `cct_2_3x2_32` | CCT |' in md and f'| `{demo.CNN_BASELINE}` |' in md
    meta = json.loads((out / 'results.json').read_text())
    assert meta['meta']['train_images'] == 64 and meta['meta']['test_images'] == 40
    assert len(meta['runs']) == 2 and all(len(r['history']['test_top1']) == 1 for r in meta['runs'])


def test_digits_run_top1_is_the_held_out_accuracy(digits_run):
    """The reported top-1 is recomputed here from the trained model on the held-out images."""
    run = next(r for r in digits_run['runs'] if r['net'] is not None and r['model'] == 'cct_2_3x2_32')
    args = demo.parse_args(TINY + ['--max-train-images', '64', '--max-test-images', '40'])
    data = demo.load_data(args)
    from timm.data import create_transform
    data.set_transforms(None, create_transform(16, interpolation='bicubic', crop_pct=1.0, mean=data.mean,
                                               std=data.std))
    x = torch.stack([data.test[i][0] for i in range(len(data.test))])
    y = torch.tensor([data.test[i][1] for i in range(len(data.test))])
    with torch.no_grad():
        acc = (run['net'].eval()(x).argmax(-1) == y).float().mean().item() * 100
    assert acc == pytest.approx(run['top1'], abs=1e-4)


def test_digits_run_writes_plots(digits_run):
    out = digits_run['output']
    for name in ('curves.png', 'seqpool.png'):
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5_000, name


def test_digits_run_hub_folder_loads_back(digits_run):
    meta = digits_run['meta']['export']
    folder = Path(meta['folder'])
    assert meta['model'] == 'cct_2_3x2_32'  # the only transformer of the run
    assert (folder / 'config.json').is_file()
    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    net = next(r['net'] for r in digits_run['runs'] if r['net'] is not None and r['model'] == meta['model'])
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net.eval()(x))
    cfg = json.loads((folder / 'config.json').read_text())
    assert cfg.get('label_names', cfg['pretrained_cfg'].get('label_names')) == [str(i) for i in range(10)]


def _write_image_folder(root: Path, classes=('circle', 'square'), per_class: int = 6) -> None:
    from PIL import Image
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new('RGB', (20, 24), (40 * i, 200 * c, 90)).save(root / name / f'{i}.png')


def test_image_folder_run(tmp_path):
    _write_image_folder(tmp_path / 'data')
    out = tmp_path / 'out'
    args = demo.parse_args(TINY + ['--data-dir', str(tmp_path / 'data'), '--models', 'cvt_2_4_32',
                                   '--batch-size', '4', '--test-frac', '0.25', '--output', str(out)])
    assert args.dataset == 'folder' and args.hflip == demo.PAPER_RECIPE['hflip']
    result = demo.run_demo(args)
    meta = json.loads((out / 'results.json').read_text())['meta']
    assert (meta['train_images'], meta['test_images']) == (8, 4)  # 25 % of 6 per class, rounded, held out
    assert result['rows'][0]['model'] == 'cvt_2_4_32'
    cfg = json.loads((Path(meta['export']['folder']) / 'config.json').read_text())
    assert cfg['num_classes'] == 2


def test_image_folder_train_val_layout(tmp_path):
    _write_image_folder(tmp_path / 'train', per_class=3)
    _write_image_folder(tmp_path / 'val', per_class=2)
    data = demo.load_data(demo.parse_args(['--data-dir', str(tmp_path)]))
    assert (len(data.train), len(data.test), data.label_names) == (6, 4, ['circle', 'square'])


def test_stratified_split():
    labels = [0] * 50 + [1] * 30 + [2] * 20
    train, test = demo.stratified_split(labels, 0.2, seed=3)
    assert sorted(train + test) == list(range(100)) and not set(train) & set(test)
    assert [sum(labels[i] == c for i in test) for c in range(3)] == [10, 6, 4]
    assert demo.stratified_split(labels, 0.2, seed=3) == (train, test)
    assert demo.stratified_split(labels, 0.2, seed=4) != (train, test)
    with pytest.raises(ValueError, match='test_frac'):
        demo.stratified_split(labels, 1.5, seed=0)


def test_digits_split_is_stratified_and_fixed():
    data = demo.load_data(demo.parse_args([]))
    assert len(data.train) + len(data.test) == 1797
    test_counts = torch.bincount(torch.tensor(data.test.labels), minlength=10)
    train_counts = torch.bincount(torch.tensor(data.train.labels), minlength=10)
    assert ((test_counts.float() / (test_counts + train_counts) - 0.2).abs() < 0.01).all()
    assert data.test.images[0].size == (demo.DIGITS_RECIPE['img_size'],) * 2


def test_command_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        demo.parse_args(['--dataset', 'cifar10'])
    assert '--data-dir' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        demo.parse_args(['--models', 'no_such_model'])
    assert 'no_such_model' in capsys.readouterr().err
    assert demo.main(['--dataset', 'cifar10', '--data-dir', str(tmp_path), '--output', str(tmp_path / 'o')]) == 2
    assert 'torchvision download' in capsys.readouterr().err
    assert demo.main(['--data-dir', str(tmp_path / 'missing'), '--output', str(tmp_path / 'o')]) == 2
    assert 'ImageFolder' in capsys.readouterr().err


def test_missing_extra_is_explained(monkeypatch):
    monkeypatch.setitem(sys.modules, 'tqdm', None)
    with pytest.raises(ImportError, match=r'pip install timm-cct\[demo\]'):
        demo._require_demo_deps()


# -- SeqPool attention --------------------------------------------------------------------------------

def _independent_weights(model, x):
    """Softmax over tokens of the SeqPool Linear applied to forward_features, as (B, h, w)."""
    with torch.no_grad():
        tokens = model.forward_features(x)
        scores = tokens @ model.seq_pool.attn.weight[0] + model.seq_pool.attn.bias[0]
        weights = torch.exp(scores - scores.max(dim=1, keepdim=True).values)
        weights = weights / weights.sum(dim=1, keepdim=True)
    side = int(weights.shape[1] ** 0.5)
    return weights.reshape(x.shape[0], side, side)


@pytest.mark.parametrize('name,grid', [('cct_2_3x2_32', 8), ('cvt_2_4_32', 8)])
def test_seqpool_attention_token_grid(name, grid):
    torch.manual_seed(0)
    model = timm.create_model(name).train()
    x = torch.randn(3, 3, 32, 32)
    maps = seqpool_attention(model, x, upsample=False)
    assert maps.shape == (3, grid, grid)
    torch.testing.assert_close(maps.sum(dim=(1, 2)), torch.ones(3))
    torch.testing.assert_close(maps, _independent_weights(model.eval(), x))
    assert not (maps == maps[:, :1, :1]).all()  # not uniform


def test_seqpool_attention_image_resolution():
    torch.manual_seed(0)
    model = timm.create_model('cct_2_3x2_32').train()
    x = torch.randn(2, 3, 32, 32)
    maps = timm_cct.seqpool_attention(model, x)
    assert maps.shape == (2, 32, 32)
    torch.testing.assert_close(maps.sum(dim=(1, 2)), torch.ones(2))
    assert model.training  # mode restored
    expected = torch.nn.functional.interpolate(
        _independent_weights(model.eval(), x)[:, None], size=(32, 32), mode='bilinear', align_corners=False)[:, 0]
    torch.testing.assert_close(maps, expected / expected.sum(dim=(1, 2), keepdim=True))
    single = timm_cct.seqpool_attention(model, x[0])
    torch.testing.assert_close(single, maps[0])


def test_seqpool_attention_bad_input():
    with pytest.raises(TypeError, match='torch.Tensor'):
        seqpool_attention(timm.create_model('cct_2_3x2_32'), [[0.]])
    with pytest.raises(ValueError, match='SeqPool'):
        seqpool_attention(timm.create_model('vit_lite_2_4_32'), torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r'\(B, C, H, W\)'):
        seqpool_attention(timm.create_model('cct_2_3x2_32'), torch.randn(32, 32))
