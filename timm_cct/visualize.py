"""Look inside a trained Compact Transformer: SeqPool attention maps and learning curves.

``seqpool_attention`` needs only torch; the plotting helpers import matplotlib when called
(``pip install timm-cct[demo]``).
"""
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['seqpool_attention', 'plot_seqpool_attention', 'plot_learning_curves']


def _require_matplotlib():
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError(
            'Plotting needs matplotlib, which is not installed; install it with `pip install timm-cct[demo]`.') from e
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


@torch.no_grad()
def seqpool_attention(model: nn.Module, images: torch.Tensor, upsample: bool = True) -> torch.Tensor:
    """SeqPool weight of every image token, as a map over the image.

    Args:
        model: A Compact Transformer that pools with SeqPool (CCT, CVT); it is run in eval mode and its
            train/eval mode is restored afterwards.
        images: A normalised image batch (B, C, H, W) or one image (C, H, W), floating point; it is moved to the
            model's device and dtype. Integer images are refused by the model's own input check (normalise them).
        upsample: True: maps at image resolution (B, H, W), bilinear-resized from the token grid and
            rescaled to sum to one over the pixels. False: the raw weights over the token grid (B, h, w),
            which sum to one (with a class token, its share is left out and the rest rescaled to one).

    Returns:
        The maps, (B, H, W) / (B, h, w), or (H, W) / (h, w) for a single image.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f'images must be a torch.Tensor (B, C, H, W) or (C, H, W), got {type(images).__name__}.')
    if not hasattr(model, 'seq_pool_weights'):
        raise TypeError(
            f'model must be a Compact Transformer with SeqPool (e.g. cct_7_3x1_32), got {type(model).__name__}.')
    single = images.dim() == 3
    if single:
        images = images.unsqueeze(0)
    if images.dim() != 4:
        raise ValueError(f'images must have shape (B, C, H, W) or (C, H, W), got {list(images.shape)}.')
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        if param is not None:  # integer images go to the model unconverted, for its own check to refuse
            images = images.to(device=param.device, dtype=param.dtype if images.is_floating_point() else None)
        maps = model.seq_pool_weights(images).float()
    finally:
        model.train(was_training)
    if upsample:
        maps = F.interpolate(maps.unsqueeze(1), size=images.shape[-2:], mode='bilinear', align_corners=False)
        maps = maps.squeeze(1)
        maps = maps / maps.sum(dim=(-2, -1), keepdim=True)
    return maps[0] if single else maps


def _to_display(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalised (C, H, W) -> (H, W, C) in [0, 1] for imshow."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    image = (image.detach().float().cpu() * std_t + mean_t).clamp(0, 1)
    return image.permute(1, 2, 0)


def _per_channel(name: str, value: Any, chans: int) -> tuple:
    """``value`` as a tuple of 1 or ``chans`` floats (a normalisation mean or std)."""
    try:
        values = tuple(float(v) for v in value) if not isinstance(value, (str, bytes)) else None
    except (TypeError, ValueError):
        values = None
    if values is None or len(values) not in (1, chans):
        raise ValueError(f'Expected {name} as {chans} numbers (one per channel) or 1, got {value!r}.')
    return values


def plot_seqpool_attention(
        images: torch.Tensor,
        maps: torch.Tensor,
        mean: Sequence[float] = (0., 0., 0.),
        std: Sequence[float] = (1., 1., 1.),
        titles: Optional[Sequence[str]] = None,
        path: Optional[str] = None,
        ncols: int = 8,
        alpha: float = 0.55,
):
    """Draw each image with its SeqPool map on top (upper row) and the map alone (lower row).

    Args:
        images: Normalised images (B, C, H, W), as fed to the model.
        maps: Maps from ``seqpool_attention(model, images)``, (B, H, W).
        mean, std: The normalisation used, to show the images in their own colours.
        titles: One title per image, e.g. 'true 3 / pred 3'.
        path: Save the figure here (PNG) when given.
        ncols: Images per row.
        alpha: Opacity of the map over the image.

    Returns:
        The matplotlib Figure.
    """
    for name, value in (('images', images), ('maps', maps)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f'Expected {name} as a torch.Tensor, got {type(value).__name__}'
                            + ('; convert it with torch.from_numpy(...)' if hasattr(value, '__array__') else '') + '.')
    if images.dim() != 4 or maps.dim() != 3 or images.shape[0] != maps.shape[0]:
        raise ValueError(
            f'Expected images (B, C, H, W) and maps (B, H, W) with the same B, got {list(images.shape)} '
            f'and {list(maps.shape)}.')
    n, chans = images.shape[0], images.shape[1]
    if n == 0:
        raise ValueError('Expected at least one image to plot, got an empty batch.')
    if chans not in (1, 3):
        raise ValueError(f'Expected images with 1 or 3 channels to display, got {chans} (shape {list(images.shape)}).')
    mean, std = _per_channel('mean', mean, chans), _per_channel('std', std, chans)
    if 0 in std:
        raise ValueError(f'Expected std without zeros, got {std}.')
    if titles is not None and (isinstance(titles, str) or not isinstance(titles, Sequence) or len(titles) != n):
        raise ValueError(f'Expected one title per image ({n}), got {titles!r}.')
    if isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f'Expected ncols as an int >= 1, got {ncols!r}.')
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f'Expected alpha in [0, 1], got {alpha!r}.')
    plt = _require_matplotlib()
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(2 * nrows, ncols, figsize=(1.6 * ncols, 3.3 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis('off')
    for i in range(n):
        r, c = 2 * (i // ncols), i % ncols
        img = _to_display(images[i], mean, std)
        heat = maps[i].detach().float().cpu()
        if heat.shape != img.shape[:2]:
            heat = F.interpolate(heat[None, None], size=img.shape[:2], mode='bilinear', align_corners=False)[0, 0]
        gray = img.shape[-1] == 1 or bool((img[..., 0] == img[..., -1]).all())
        img, heat = img.numpy(), heat.numpy()
        axes[r, c].imshow(img[..., 0] if gray else img, cmap='gray' if gray else None, vmin=0, vmax=1)
        axes[r, c].imshow(heat, cmap='inferno', alpha=alpha)
        axes[r + 1, c].imshow(heat, cmap='inferno')
        if titles is not None:
            axes[r, c].set_title(str(titles[i]), fontsize=8)
    fig.suptitle('SeqPool attention: where the model pools its tokens (bright = high weight)', fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def plot_learning_curves(history: Dict[str, List[Dict[str, Any]]], path: Optional[str] = None, title: str = ''):
    """Mean held-out top-1 and train loss per epoch of each model, with the min-max band over seeds.

    Args:
        history: model label -> list of runs; each run a dict with equal-length lists
            'train_loss' and 'test_top1' (one value per epoch).
        path: Save the figure here (PNG) when given.
        title: Figure title.

    Returns:
        The matplotlib Figure.
    """
    plt = _require_matplotlib()
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, runs in history.items():
        for key, ax in (('test_top1', ax_acc), ('train_loss', ax_loss)):
            curves = torch.tensor([run[key] for run in runs], dtype=torch.float64)
            epochs = list(range(1, curves.shape[1] + 1))
            line, = ax.plot(epochs, curves.mean(0).tolist(), marker='o', markersize=3,
                            label=f'{label} ({len(runs)} seeds)')
            if len(runs) > 1:
                ax.fill_between(epochs, curves.min(0).values.tolist(), curves.max(0).values.tolist(), alpha=0.2,
                                color=line.get_color())
    ax_acc.set(xlabel='epoch', ylabel='held-out top-1 (%)', title='held-out accuracy')
    ax_loss.set(xlabel='epoch', ylabel='loss', title='train loss (Mixup/CutMix targets)')
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=8, loc='lower right')
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
