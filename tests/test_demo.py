"""The demo command (tiny runs of its real code path), its data checks and command line, and the SeqPool maps."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip('sklearn')
pytest.importorskip('matplotlib')
pytest.importorskip('tqdm')

import timm  # noqa: E402
from PIL import Image  # noqa: E402

import timm_cct  # noqa: E402
from timm_cct import demo  # noqa: E402
from timm_cct.demo import run as demo_run  # noqa: E402
from timm_cct.demo import train as demo_train  # noqa: E402
from timm_cct.recipes import CONFIG_DIR, load_config  # noqa: E402
from timm_cct.variants import DATASETS  # noqa: E402
from timm_cct.visualize import seqpool_attention  # noqa: E402

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
TINY = ['--epochs', '1', '--warmup-epochs', '0', '--seeds', '0', '--img-size', '16', '--batch-size', '16',
        '--quiet']
FOLDER = TINY + ['--models', 'cct_2_3x2_32', '--batch-size', '4', '--test-frac', '0.25']


@pytest.fixture(scope='module')
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp('digits') / 'out'
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
    assert 'Status: finished: 2 runs' in md
    meta = json.loads((out / 'results.json').read_text())
    assert meta['meta']['train_images'] == 64 and meta['meta']['test_images'] == 40
    assert meta['meta']['class_names'] == [str(i) for i in range(10)]
    assert len(meta['runs']) == 2 and all(len(r['history']['test_top1']) == 1 for r in meta['runs'])


def test_digits_run_top1_is_the_held_out_accuracy(digits_run):
    """The reported top-1 is recomputed here from the trained model on the held-out images."""
    from timm.data import create_transform
    run = next(r for r in digits_run['runs'] if r['net'] is not None and r['model'] == 'cct_2_3x2_32')
    test = digits_run['data'].test
    tf = create_transform(16, interpolation='bicubic', crop_pct=1.0, mean=digits_run['data'].mean,
                          std=digits_run['data'].std)
    x = torch.stack([tf(img) for img in test.items])
    y = torch.tensor(test.labels)
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


# -- image folders --------------------------------------------------------------------------------

MODES = ('RGB', 'L', 'RGBA', 'P', 'I;16')


def _image(mode: str, value: int, size=(20, 24)) -> Image.Image:
    rgb = Image.new('RGB', size, (value, 255 - value, 90))
    if mode == 'RGB':
        return rgb
    if mode == 'L':
        return rgb.convert('L')
    if mode == 'RGBA':
        img = rgb.convert('RGBA')
        img.putalpha(128)
        return img
    if mode == 'P':
        img = rgb.convert('P')
        img.info['transparency'] = 0
        return img
    return Image.new('I;16', size, value * 257)


def _write_image_folder(root: Path, classes=('circle', 'square'), per_class: int = 6) -> None:
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            _image(MODES[i % len(MODES)], (40 * i + 100 * c) % 256).save(root / name / f'{i}.png')


@pytest.mark.parametrize('mode', MODES)
def test_load_image_gives_rgb_of_any_mode(tmp_path, mode):
    _image(mode, 200).save(tmp_path / 'x.png')
    img = demo.load_image(tmp_path / 'x.png')
    assert img.mode == 'RGB' and img.size == (20, 24)
    if mode == 'I;16':  # 16-bit grey 200*257 is 8-bit grey 200, not clipped to white
        assert img.getpixel((0, 0)) == (200, 200, 200)
    if mode == 'RGBA':  # half-transparent over white
        expected = [(v + 255) / 2 for v in (200, 55, 90)]
        assert all(abs(a - b) <= 1 for a, b in zip(img.getpixel((0, 0)), expected))


def test_image_folder_run(tmp_path):
    _write_image_folder(tmp_path / 'data')
    (tmp_path / 'data' / 'square' / 'broken.png').write_bytes(b'not an image')
    (tmp_path / 'data' / 'notes.txt').write_text('not data')
    out = tmp_path / 'out'
    args = demo.parse_args(FOLDER + ['--data-dir', str(tmp_path / 'data'), '--models', 'cvt_2_4_32',
                                     '--output', str(out)])
    assert args.dataset == 'folder' and args.hflip == demo.paper_recipe('folder')['hflip']
    result = demo.run_demo(args)
    meta = json.loads((out / 'results.json').read_text())['meta']
    assert (meta['train_images'], meta['test_images']) == (8, 4)  # 25 % of 6 per class, rounded, held out
    assert meta['class_names'] == ['circle', 'square']
    assert [s['file'] for s in meta['data']['skipped']] == [str(tmp_path / 'data' / 'square' / 'broken.png')]
    assert 'broken.png' in (out / 'results.md').read_text()
    assert result['rows'][0]['model'] == 'cvt_2_4_32'
    cfg = json.loads((Path(meta['export']['folder']) / 'config.json').read_text())
    assert cfg['num_classes'] == 2 and cfg['label_names'] == ['circle', 'square']


@pytest.mark.parametrize('held_out', ['val', 'validation', 'valid', 'test'])
def test_split_folder_layouts(tmp_path, held_out):
    _write_image_folder(tmp_path / 'train', per_class=3)
    _write_image_folder(tmp_path / held_out, per_class=2)
    data = demo.load_data(_folder_args(tmp_path))
    assert (len(data.train), len(data.test), data.label_names) == (6, 4, ['circle', 'square'])
    assert data.source['eval_split'] == str(tmp_path / held_out)
    assert data.source['train_split'] == str(tmp_path / 'train')


def test_train_folder_alone_is_split_stratified(tmp_path):
    _write_image_folder(tmp_path / 'train', classes=('a', 'b', 'c'), per_class=5)
    data = demo.load_data(_folder_args(tmp_path))
    assert data.label_names == ['a', 'b', 'c']
    assert (len(data.train), len(data.test)) == (12, 3)
    assert 'stratified' in data.source['eval_split']


def _folder_args(path: Path):
    return demo.parse_args(['--data-dir', str(path), '--batch-size', '2', '--output', str(path / 'o')])


def _data_error(tmp_path, match):
    with pytest.raises(demo.DataError, match=match):
        demo.load_data(_folder_args(tmp_path))


def test_folder_checks(tmp_path):
    _write_image_folder(tmp_path / 'one', classes=('only',))
    _data_error(tmp_path / 'one', 'at least 2 classes')
    (tmp_path / 'empty').mkdir()
    _data_error(tmp_path / 'empty', 'no class folders')
    _write_image_folder(tmp_path / 'hollow', classes=('a', 'b'))
    (tmp_path / 'hollow' / 'c').mkdir()
    _data_error(tmp_path / 'hollow', r'without a readable image: c')
    _write_image_folder(tmp_path / 'bad', classes=('a', 'b'))
    (tmp_path / 'bad' / 'c').mkdir()
    (tmp_path / 'bad' / 'c' / 'x.jpg').write_bytes(b'\xff\xd8garbage')
    _data_error(tmp_path / 'bad', r'without a readable image: c .*1 unreadable')
    _write_image_folder(tmp_path / 'split' / 'train', classes=('a', 'b', 'c'), per_class=2)
    _write_image_folder(tmp_path / 'split' / 'val', classes=('a', 'b', 'd'), per_class=1)
    _data_error(tmp_path / 'split', r'only in train/: c; only in val/: d')
    _write_image_folder(tmp_path / 'single', classes=('a', 'b'), per_class=1)
    _data_error(tmp_path / 'single', 'fewer than 2 readable images: a, b')
    # a lone train/ that holds images (no class folders) is one class, not a split
    _write_image_folder(tmp_path / 'lone', classes=('train',))
    _data_error(tmp_path / 'lone', 'at least 2 classes')


def test_results_are_kept_when_a_later_run_fails(tmp_path, monkeypatch):
    real, calls = demo_run.train_run, []

    def train_then_fail(name, *args, **kwargs):
        calls.append(name)
        if len(calls) == 2:
            raise RuntimeError('simulated failure in the second run')
        return real(name, *args, **kwargs)

    monkeypatch.setattr(demo_run, 'train_run', train_then_fail)
    out = tmp_path / 'out'
    args = demo.parse_args(TINY + ['--models', demo.CNN_BASELINE, 'cct_2_3x2_32', '--max-train-images', '32',
                                   '--max-test-images', '20', '--output', str(out)])
    with pytest.raises(RuntimeError, match='simulated'):
        demo.run_demo(args)
    saved = json.loads((out / 'results.json').read_text())
    assert [r['model'] for r in saved['runs']] == [demo.CNN_BASELINE]
    assert saved['meta']['status'] == '1 of 2 runs finished, still running'
    assert f'`{demo.CNN_BASELINE}`' in (out / 'results.md').read_text()


def test_cnn_only_run_skips_the_hub_export(tmp_path, capsys):
    out = tmp_path / 'out'
    assert demo.main(TINY + ['--models', demo.CNN_BASELINE, '--max-train-images', '32', '--max-test-images', '20',
                             '--output', str(out)]) == 0
    assert 'Hub export skipped: none of the models (resnet10t_tiny) is a Compact Transformer' in \
        capsys.readouterr().out
    saved = json.loads((out / 'results.json').read_text())
    assert saved['meta']['export']['skipped'].startswith('skipped') and not (out / 'hub').exists()
    assert [r['model'] for r in saved['summary']] == [demo.CNN_BASELINE]


def test_output_folder_is_never_clobbered(tmp_path, capsys):
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'results.md').write_text('my notes')
    argv = TINY + ['--models', demo.CNN_BASELINE, '--max-train-images', '32', '--max-test-images', '20',
                   '--output', str(out)]
    with pytest.raises(SystemExit) as e:
        demo.main(argv)
    assert e.value.code == 2 and '--overwrite' in capsys.readouterr().err
    assert (out / 'results.md').read_text() == 'my notes'
    (out / 'keep.txt').write_text('mine')
    assert demo.main(argv + ['--overwrite']) == 0
    assert (out / 'keep.txt').read_text() == 'mine' and 'resnet10t_tiny' in (out / 'results.md').read_text()


@pytest.mark.parametrize('argv, expected', [
    (['--aa', 'bogus'], "--aa 'bogus' is not a timm augmentation policy"),
    (['--device', 'tpu'], "--device 'tpu' is not a device"),
    (['--seeds', '0', '0'], '--seeds lists 0 more than once'),
    (['--models', 'cct_2_3x2_32', 'cct_2_3x2_32'], '--models lists cct_2_3x2_32 more than once'),
    (['--models', 'no_such_model'], "unknown model 'no_such_model'"),
    (['--epochs', '0'], '--epochs must be >= 1'),
    (['--mixup-prob', '2'], '--mixup-prob must be in [0, 1]'),
    (['--scale', '0.9', '0.1'], '--scale must be two fractions'),
    (['--opt', 'nope'], "--opt 'nope' is not a timm optimizer"),
    (['--dataset', 'cifar10'], '--dataset cifar10 needs --data-dir'),
    (['--data-dir', 'no/such/dir'], '--data-dir no/such/dir is not a folder'),
    (['--batch-size', '7'], 'even --batch-size'),
    (['--epochs', 'x'], "invalid int value: 'x'"),
])
def test_command_line_errors_are_one_line(argv, expected, capsys):
    with pytest.raises(SystemExit) as e:
        demo.parse_args(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and expected in err
    assert err.count('\n') == 1 and err.startswith('python -m timm_cct.demo: error:')


def test_output_naming_a_file_is_refused(tmp_path, capsys):
    (tmp_path / 'f').write_text('x')
    with pytest.raises(SystemExit) as e:
        demo.parse_args(['--output', str(tmp_path / 'f')])
    assert e.value.code == 2 and 'is a file' in capsys.readouterr().err


def test_run_time_errors_exit_2(tmp_path, capsys):
    assert demo.main(['--dataset', 'cifar10', '--data-dir', str(tmp_path), '--output', str(tmp_path / 'o')]) == 2
    assert 'torchvision download' in capsys.readouterr().err
    _write_image_folder(tmp_path / 'one', classes=('only',))
    assert demo.main(['--data-dir', str(tmp_path / 'one'), '--output', str(tmp_path / 'o')]) == 2
    err = capsys.readouterr().err
    assert 'at least 2 classes' in err and err.count('\n') == 1
    assert not (tmp_path / 'o').exists()  # nothing written before the checks pass
    _write_image_folder(tmp_path / 'two')
    assert demo.main(['--data-dir', str(tmp_path / 'two'), '--batch-size', '64', '--output',
                      str(tmp_path / 'o')]) == 2
    assert '--batch-size 64 is larger than the training set' in capsys.readouterr().err


# -- recipes: one source of truth ---------------------------------------------------------------------

@pytest.mark.parametrize('dataset', ['cifar10', 'cifar100', 'folder'])
def test_paper_recipe_is_the_shipped_config(dataset, tmp_path):
    args = demo.parse_args(['--dataset', dataset, '--data-dir', str(tmp_path), '--output', str(tmp_path / 'o')])
    cfg = yaml.safe_load((CONFIG_DIR / f'{demo.PAPER_CONFIGS[dataset]}.yaml').read_text())
    assert args.models == [cfg['model']]
    for key in ('epochs', 'img_size', 'batch_size', 'opt', 'sched', 'lr', 'weight_decay', 'warmup_epochs',
                'cooldown_epochs', 'warmup_lr', 'min_lr', 'mixup', 'cutmix', 'mixup_prob', 'mixup_switch_prob',
                'mixup_mode', 'mixup_off_epoch', 'smoothing', 'aa', 'reprob', 'remode', 'scale', 'interpolation',
                'train_interpolation', 'crop_pct'):
        assert getattr(args, key) == cfg[key], key
    # left out of the configs: timm train.py's defaults, and the model's own drop path
    assert (args.hflip, args.color_jitter, args.drop_path) == (0.5, 0.4, None)


def test_config_statistics_are_the_datasets_table():
    by_classes = {v[0]: k for k, v in DATASETS.items()}
    checked = 0
    for path in sorted(CONFIG_DIR.glob('*.yaml')):
        cfg = load_config(path.stem)
        _, mean, std, crop_pct = DATASETS[by_classes[cfg['num_classes']]]
        assert cfg['mean'] == pytest.approx(list(mean), abs=1e-6), path.name
        assert cfg['std'] == pytest.approx(list(std), abs=1e-6), path.name
        checked += 1
    assert checked == len(list(CONFIG_DIR.glob('*.yaml'))) > 0


def test_demo_statistics_come_from_the_datasets_table(tmp_path):
    from timm_cct.demo.data import dataset_stats
    for name, (_, mean, std, _) in DATASETS.items():
        assert dataset_stats(name) == (tuple(mean), tuple(std))
    _write_image_folder(tmp_path / 'd')
    data = demo.load_data(_folder_args(tmp_path / 'd'))
    assert (data.mean, data.std) == tuple(map(tuple, DATASETS['imagenet'][1:3]))
    # no second copy of the statistics in the demo's sources
    sources = ''.join(p.read_text() for p in Path(demo.__file__).parent.glob('*.py'))
    for values in DATASETS.values():
        assert f'{values[1][0]}' not in sources and f'{values[2][0]}' not in sources


def test_model_library_does_not_import_the_demo():
    code = ('import sys, timm_cct, timm_cct.hub, timm_cct.cct, timm_cct.layers, timm_cct.variants, '
            'timm_cct.loading; from timm_cct.hub import export_to_hub; '
            'bad = [m for m in sys.modules if m.startswith(("timm_cct.demo", "sklearn", "matplotlib"))]; '
            'assert not bad, bad')
    subprocess.run([sys.executable, '-c', code], check=True, timeout=300,
                   env={**__import__('os').environ, 'PYTHONPATH': str(Path(timm_cct.__file__).parent.parent)})


def test_training_reads_the_loss_back_once_per_epoch(monkeypatch):
    """No `.item()` per step: a CUDA step must not wait for the device."""
    args = demo.parse_args(TINY + ['--batch-size', '8', '--max-train-images', '64', '--max-test-images', '10',
                                   '--epochs', '2', '--models', 'cct_2_3x2_32'])
    data = demo.load_data(args)
    calls = []
    real_item = torch.Tensor.item

    def counting_item(self):
        if sys._getframe(1).f_code.co_filename == demo_train.__file__:  # read-backs of the demo's loop
            calls.append(1)
        return real_item(self)

    monkeypatch.setattr(torch.Tensor, 'item', counting_item)
    run = demo.train_run('cct_2_3x2_32', 0, data, args, torch.device('cpu'))
    assert len(run['history']['train_loss']) == 2  # 2 epochs of 8 steps
    assert 0 < len(calls) <= 2 * 3  # the loss, the held-out accuracy and loss, once per epoch


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
    assert data.test.items[0].size == (demo.DIGITS_RECIPE['img_size'],) * 2


def test_missing_extra_is_explained(monkeypatch):
    monkeypatch.setitem(sys.modules, 'tqdm', None)
    with pytest.raises(ImportError, match=r'pip install timm-cct\[demo\]'):
        demo_run._require_demo_deps()


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
