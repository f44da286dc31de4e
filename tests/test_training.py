"""The library calls timm's train.py and validate.py make, on one model of each family (CPU, a few steps)."""
import argparse
import random

import numpy as np
import pytest
import torch
from PIL import Image

import timm
import timm_cct  # noqa: F401
from timm.data import Mixup, create_dataset, create_loader, create_transform, resolve_data_config
from timm.data.auto_augment import rand_augment_transform
from timm.loss import SoftTargetCrossEntropy
from timm.models import load_checkpoint, resume_checkpoint
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import CheckpointSaver, ModelEmaV3

MODELS = ['cct_2_3x2_32', 'cvt_2_4_32', 'vit_lite_2_4_32']
NUM_CLASSES = 3
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # the models' pretrained cfg (reference values)


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
    """A 3-class ImageFolder (train/ and validation/), the dominant colour channel is the class."""
    root = tmp_path_factory.mktemp('tiny_images')
    rng = np.random.default_rng(0)
    for split, count in (('train', 4), ('validation', 2)):
        for c in range(NUM_CLASSES):
            folder = root / split / f'class{c}'
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 60, (36, 36, 3), dtype=np.uint8)
                pixels[..., c] += 180
                Image.fromarray(pixels).save(folder / f'{i}.png')
    return root


def create_like_train_py(name: str) -> torch.nn.Module:
    """``timm.create_model`` with the keyword arguments train.py passes (its defaults)."""
    return timm.create_model(
        name, pretrained=False, in_chans=3, num_classes=NUM_CLASSES, drop_rate=0.0, drop_path_rate=0.1,
        drop_block_rate=None, global_pool=None, bn_momentum=None, bn_eps=None, scriptable=None,
        checkpoint_path='',
    )


def train_py_args(**kwargs) -> dict:
    """The data arguments train.py hands to ``resolve_data_config`` (its defaults)."""
    args = dict(img_size=None, input_size=None, in_chans=None, crop_pct=None, mean=None, std=None,
                interpolation='', model=None)
    args.update(kwargs)
    return args


@pytest.mark.parametrize('name', MODELS)
def test_data_pipeline(name, image_folder):
    model = create_like_train_py(name)
    assert model.num_classes == NUM_CLASSES
    data_config = resolve_data_config(train_py_args(), model=model)
    assert data_config['input_size'] == (3, 32, 32)
    assert data_config['mean'] == pytest.approx(CIFAR10_MEAN)
    assert data_config['crop_pct'] == 1.0

    dataset = create_dataset('', root=str(image_folder), split='train', is_training=True, batch_size=4)
    assert len(dataset) == 4 * NUM_CLASSES
    for policy in ('rand-m9-mstd0.5-inc1', 'original'):
        loader = create_loader(
            dataset, input_size=data_config['input_size'], batch_size=6, is_training=True, use_prefetcher=False,
            auto_augment=policy, re_prob=0.25, re_mode='pixel', scale=(0.8, 1.0), interpolation='random',
            mean=data_config['mean'], std=data_config['std'], num_workers=0, device=torch.device('cpu'),
            persistent_workers=False,  # older timm defaults to True, which DataLoader refuses without workers
        )
        images, targets = next(iter(loader))
        assert images.shape == (6, 3, 32, 32) and images.dtype == torch.float32
        assert targets.shape == (6,) and int(targets.max()) < NUM_CLASSES
        assert model(images).shape == (6, NUM_CLASSES)

    eval_dataset = create_dataset('', root=str(image_folder), split='validation', is_training=False)
    eval_transform = create_transform(**data_config, is_training=False)
    assert eval_transform(eval_dataset[0][0]).shape == (3, 32, 32)


def test_posterize_keeping_no_bits_gives_black_image():
    # rand-m9-mstd0.5-inc1 samples magnitude 10 now and then: PosterizeIncreasing then keeps 0 bits
    op = rand_augment_transform('rand-n1-m10-inc1', {}).ops
    op = next(o for o in op if o.name == 'PosterizeIncreasing')
    op.prob, op.magnitude_std = 1.0, 0.0
    image = Image.fromarray(np.full((8, 8, 3), 200, dtype=np.uint8))
    out = np.asarray(op(image))
    assert out.shape == (8, 8, 3) and not out.any()


def fixed_mixed_batch(image_folder, data_config) -> tuple:
    dataset = create_dataset('', root=str(image_folder), split='train', is_training=True)
    transform = create_transform(
        data_config['input_size'], is_training=True, auto_augment='rand-m9-mstd0.5-inc1', scale=(0.8, 1.0),
        interpolation='random', mean=data_config['mean'], std=data_config['std'])
    images = torch.stack([transform(dataset[i][0]) for i in range(len(dataset))])
    targets = torch.tensor([dataset[i][1] for i in range(len(dataset))])
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, mode='batch',
                  label_smoothing=0.1, num_classes=NUM_CLASSES)
    images, soft_targets = mixup(images, targets)
    assert soft_targets.shape == (len(dataset), NUM_CLASSES)
    assert torch.allclose(soft_targets.sum(1), torch.ones(len(dataset)))
    return images, soft_targets


@pytest.mark.parametrize('name', MODELS)
def test_train_checkpoint_resume(name, image_folder, tmp_path):
    random.seed(0)  # RandAugment
    np.random.seed(0)  # Mixup
    torch.manual_seed(0)
    model = create_like_train_py(name)
    data_config = resolve_data_config(train_py_args(), model=model)
    images, targets = fixed_mixed_batch(image_folder, data_config)

    optimizer = create_optimizer_v2(model, 'adamw', lr=2e-3, weight_decay=0.06, layer_decay=0.75)
    scales = sorted({g['lr_scale'] for g in optimizer.param_groups})
    assert len(scales) > 2 and scales[-1] == pytest.approx(1.0)  # per-layer decay reaches the model's blocks
    scheduler, num_epochs = create_scheduler_v2(
        optimizer, 'cosine', num_epochs=4, warmup_epochs=1, warmup_lr=1e-5, min_lr=1e-5, cooldown_epochs=1)
    assert num_epochs == 5
    ema = ModelEmaV3(model, decay=0.9)
    loss_fn = SoftTargetCrossEntropy()

    with torch.autocast('cpu', dtype=torch.bfloat16):  # train.py --amp --amp-dtype bfloat16 on CPU
        assert torch.isfinite(loss_fn(model(images), targets))

    scheduler.step(1)  # past warm-up
    model.train()
    losses = []
    for step in range(8):
        loss = loss_fn(model(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ema.update(model, step=step)
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    ema_weights = {k: v.clone() for k, v in ema.module.state_dict().items()}
    assert any(not torch.equal(ema_weights[k], v) for k, v in model.state_dict().items())

    saver = CheckpointSaver(model, optimizer, args=argparse.Namespace(model=name), model_ema=ema,
                            checkpoint_dir=str(tmp_path), recovery_dir=str(tmp_path), max_history=2)
    saver.save_checkpoint(epoch=1, metric=50.0)
    best = tmp_path / 'model_best.pth.tar'
    assert best.is_file() and (tmp_path / 'checkpoint-1.pth.tar').is_file()

    # train.py --resume: model, optimizer state and next epoch
    resumed = create_like_train_py(name)
    resumed_opt = create_optimizer_v2(resumed, 'adamw', lr=2e-3, weight_decay=0.06, layer_decay=0.75)
    assert resume_checkpoint(resumed, str(best), optimizer=resumed_opt) == 2
    for k, v in model.state_dict().items():
        assert torch.equal(resumed.state_dict()[k], v), k
    state, resumed_state = optimizer.state_dict()['state'], resumed_opt.state_dict()['state']
    assert set(state) == set(resumed_state)
    assert all(torch.equal(state[i]['exp_avg'], resumed_state[i]['exp_avg']) for i in state)

    # validate.py --checkpoint [--use-ema]
    for use_ema, expected in ((False, model.state_dict()), (True, ema_weights)):
        loaded = timm.create_model(name, num_classes=NUM_CLASSES)
        load_checkpoint(loaded, str(best), use_ema=use_ema)
        for k, v in expected.items():
            assert torch.equal(loaded.state_dict()[k], v), (use_ema, k)
    model.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(images), ema.module(images), atol=1e-6)
