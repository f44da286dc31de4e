"""The shipped training recipes: valid train.py configs naming real models, with the official values."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import timm
import timm_cct
from timm.models import split_model_name_tag
from timm_cct.__main__ import main
from timm_cct.recipes import CONFIG_DIR, config_path, list_configs, load_config

from official import seeded_state_dict

# argparse dest names of timm's train.py, read from the script (it is not in the pip package)
TRAIN_ARGS = json.loads((Path(__file__).parent / 'data' / 'timm_train_args.json').read_text())['args']
DATASET_RECIPES = ['cifar10', 'cifar100', 'flowers102', 'imagenet']
# (config, model it trains) for the recipes of the official checkpoints
MODEL_RECIPES = {
    'cct_7_3x1_32.cifar10_300e': 'cct_7_3x1_32',
    'cct_7_3x1_32_sine.cifar10_1500e': 'cct_7_3x1_32_sine',
    'cct_7_3x1_32_sine.cifar10_5000e': 'cct_7_3x1_32_sine',
    'cct_7_3x1_32_c100.cifar100_300e': 'cct_7_3x1_32_c100',
    'cct_7_3x1_32_sine_c100.cifar100_1500e': 'cct_7_3x1_32_sine_c100',
    'cct_7_3x1_32_sine_c100.cifar100_5000e': 'cct_7_3x1_32_sine_c100',
    'cct_7_7x2_224_sine.flowers102_300e': 'cct_7_7x2_224_sine',
    'cct_14_7x2_224.in1k': 'cct_14_7x2_224',
    'cct_14_7x2_384.in1k_ft_384': 'cct_14_7x2_224.in1k',
    'cct_14_7x2_384_fl.in1k_ft_flowers102_384': 'cct_14_7x2_384.in1k_ft_384',
}
ALL = sorted(DATASET_RECIPES + list(MODEL_RECIPES))


def test_list_configs():
    assert list_configs() == ALL
    assert sorted(p.name for p in CONFIG_DIR.iterdir() if p.suffix == '.yaml') == [f'{n}.yaml' for n in ALL]
    assert config_path('cifar10') == config_path('cifar10.yaml') == CONFIG_DIR / 'cifar10.yaml'


def test_config_path_bad_input():
    with pytest.raises(ValueError, match="Unknown config 'cifar11'.*cifar10"):
        config_path('cifar11')
    with pytest.raises(TypeError, match='must be a str, got int'):
        config_path(10)


def _check_value(key, value):
    spec = TRAIN_ARGS[key]
    kind, nargs = spec['kind'], spec['nargs']
    number = {'int': (int,), 'float': (int, float)}
    if kind == 'flag':
        assert isinstance(value, bool), (key, value)
    elif kind == 'kwargs':
        assert isinstance(value, dict), (key, value)
    elif nargs in ('+', '*') or isinstance(nargs, int):
        assert isinstance(value, list) and value, (key, value)
        assert not isinstance(nargs, int) or len(value) == nargs, (key, value)
        for v in value:
            assert isinstance(v, number.get(kind, (str,))) and not isinstance(v, bool), (key, value)
    else:
        # yaml reads 1e-5 (no dot) as a string; argparse would convert it, but keep the files typed
        assert isinstance(value, number.get(kind, (str,))) and not isinstance(value, bool), (key, value)


@pytest.mark.parametrize('name', ALL)
def test_recipe_is_a_train_py_config(name):
    with open(config_path(name)) as f:
        cfg = yaml.safe_load(f)
    assert isinstance(cfg, dict) and cfg == load_config(name)
    unknown = sorted(set(cfg) - set(TRAIN_ARGS))
    assert not unknown, f'not train.py arguments: {unknown}'
    for key, value in cfg.items():
        _check_value(key, value)
    for key in ('opt', 'sched', 'lr', 'min_lr', 'weight_decay', 'epochs', 'warmup_epochs', 'batch_size',
                'num_classes', 'mean', 'std', 'crop_pct', 'aa', 'mixup', 'cutmix', 'smoothing'):
        assert key in cfg, key
    assert cfg['opt'] == 'adamw' and cfg['sched'] == 'cosine'


@pytest.mark.parametrize('name', ALL)
def test_recipe_model_exists(name):
    cfg = load_config(name)
    if name in DATASET_RECIPES:
        assert 'model' not in cfg
        return
    assert cfg['model'] == MODEL_RECIPES[name]
    base, tag = split_model_name_tag(cfg['model'])
    assert timm.is_model(base)
    if tag:
        assert cfg['model'] in timm.list_pretrained(base)
    # the recipe reproduces the checkpoint its name gives
    assert name in timm.list_pretrained(split_model_name_tag(name)[0])
    pretrained_cfg = timm.models.get_pretrained_cfg(name)
    assert cfg['num_classes'] == pretrained_cfg.num_classes
    assert cfg['img_size'] == pretrained_cfg.input_size[-1]
    assert cfg['mean'] == pytest.approx(pretrained_cfg.mean) and cfg['std'] == pytest.approx(pretrained_cfg.std)
    assert cfg['crop_pct'] == pretrained_cfg.crop_pct


@pytest.mark.parametrize('name, dataset', [
    ('cifar10', 'torch/cifar10'), ('cct_7_3x1_32.cifar10_300e', 'torch/cifar10'),
    ('cct_7_3x1_32_sine.cifar10_5000e', 'torch/cifar10'), ('cifar100', 'torch/cifar100'),
    ('cct_7_3x1_32_sine_c100.cifar100_1500e', 'torch/cifar100'), ('flowers102', None), ('imagenet', None),
])
def test_recipe_dataset(name, dataset):
    assert load_config(name).get('dataset') == dataset  # None: an ImageFolder (train/ and valid or val/)


def test_cifar10_300e_is_the_official_recipe():
    # reference: the training recipe of the official cct_7_3x1_32 CIFAR-10 checkpoint
    cfg = load_config('cct_7_3x1_32.cifar10_300e')
    expected = dict(
        model='cct_7_3x1_32', opt='adamw', lr=5.5e-4, weight_decay=0.06, batch_size=128, sched='cosine',
        epochs=300, warmup_epochs=10, warmup_lr=1e-5, cooldown_epochs=10, min_lr=1e-5,
        aa='rand-m9-mstd0.5-inc1', mixup=0.8, cutmix=1.0, mixup_switch_prob=0.5, mixup_off_epoch=175,
        smoothing=0.1, scale=[0.8, 1.0], crop_pct=1.0, interpolation='bicubic', amp=True, model_ema=False,
        num_classes=10, img_size=32, mean=[0.4914, 0.4822, 0.4465], std=[0.2470, 0.2435, 0.2616],
    )
    for key, value in expected.items():
        assert cfg[key] == pytest.approx(value) if isinstance(value, (float, list)) else cfg[key] == value, key


@pytest.mark.parametrize('name, lr, weight_decay, epochs', [
    ('cct_7_3x1_32_sine.cifar10_1500e', 5e-4, 5e-2, 1500),
    ('cct_7_3x1_32_c100.cifar100_300e', 6e-4, 6e-2, 300),
    ('cct_7_3x1_32_sine_c100.cifar100_1500e', 7e-4, 5e-2, 1500),
    ('cct_14_7x2_224.in1k', 5e-4, 5e-2, 300),
    ('cct_14_7x2_384.in1k_ft_384', 1e-5, 0.0, 30),
    ('cct_14_7x2_384_fl.in1k_ft_flowers102_384', 5e-5, 5e-2, 300),
])
def test_official_hyperparameters(name, lr, weight_decay, epochs):
    cfg = load_config(name)
    assert (cfg['lr'], cfg['weight_decay'], cfg['epochs']) == (pytest.approx(lr), weight_decay, epochs)


def test_imagenet_384_finetune_builds_a_384_model_from_224_weights(tmp_path):
    cfg = load_config('cct_14_7x2_384.in1k_ft_384')
    assert cfg['pretrained'] is True and cfg['img_size'] == 384
    checkpoint = seeded_state_dict('cct_14_7x2_224', seed=1)  # official-format 224 weights
    torch.save(checkpoint, tmp_path / 'cct_14_7x2_224.pth')
    # as train.py creates it, with the local file in place of the download
    model = timm.create_model(cfg['model'], pretrained=True, num_classes=cfg['num_classes'],
                              pretrained_cfg_overlay=dict(file=str(tmp_path / 'cct_14_7x2_224.pth')),
                              **cfg['model_kwargs'])
    assert model.pos_embed.shape == (1, 24 * 24, 384)
    official_conv = next(v for k, v in checkpoint.items() if k.endswith('conv_layers.0.0.weight'))
    assert torch.equal(model.tokenizer.layers[0].conv.weight, official_conv)
    assert torch.equal(model.head.weight, checkpoint['classifier.fc.weight'])
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 384, 384)).shape == (1, 1000)

    # train.py --pretrained-path FILE: num_classes=-1 in the cfg, a new head for the model's classes
    model = timm.create_model(cfg['model'], pretrained=True, num_classes=102,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / 'cct_14_7x2_224.pth'), num_classes=-1),
                              **cfg['model_kwargs'])
    assert model.head.weight.shape == (102, 384) and model.pos_embed.shape == (1, 576, 384)
    assert torch.equal(model.tokenizer.layers[0].conv.weight, official_conv)


def test_flowers_finetune_has_a_schedule():
    cfg = load_config('cct_14_7x2_384_fl.in1k_ft_flowers102_384')
    assert cfg['sched'] == 'cosine' and cfg['min_lr'] == pytest.approx(1e-8)
    assert cfg['pretrained'] is True and cfg['num_classes'] == 102 and cfg['img_size'] == 384


def test_cli_configs(capsys):
    assert main(['configs']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split('\t')[0] for line in lines] == ALL
    assert main(['configs', 'cifar100']) == 0
    assert capsys.readouterr().out.strip() == str(CONFIG_DIR / 'cifar100.yaml')
    assert main(['configs', 'nope']) == 2
    assert "Unknown config 'nope'" in capsys.readouterr().err
    assert main(['does/not/exist.py']) == 2
    assert 'no such file' in capsys.readouterr().err
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'expected a script path' in err


def test_cli_runs_a_script_as_main_with_its_argv(tmp_path):
    script = tmp_path / 'script.py'
    script.write_text(
        'import sys, timm\n'
        'print(__name__, sys.argv[1:], timm.is_model("cct_7_3x1_32"), timm.is_model("vit_lite_2_4_32"))\n'
    )
    root = Path(timm_cct.__file__).parent.parent
    out = subprocess.run([sys.executable, '-m', 'timm_cct', str(script), '--a', 'b'], cwd=root,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "__main__ ['--a', 'b'] True True"
