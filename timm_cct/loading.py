"""Loud pretrained-weight loading: read the checkpoint a pretrained cfg points at, and check it fits the model.

Every failure names where the weights came from (file, URL, Hub repository or folder) and what is wrong
with them: unreadable or damaged file, missing or unexpected keys, shapes that differ. Nothing loads
half-way: the converted state dict must match the model key for key and shape for shape, apart from the
changes timm itself makes on purpose (a new classifier for another ``num_classes``, an adapted first conv
for another ``in_chans``).
"""
import argparse
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn

from timm.models import clean_state_dict, load_state_dict
from timm.models._hub import download_cached_file, hf_split

__all__ = [
    'CheckpointError', 'WeightsUnavailableError', 'read_checkpoint_file', 'read_pretrained', 'check_state_dict',
    'checked_filter', 'torch_load_weights_only',
]

HUB_WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin')
LOCAL_WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin', 'pytorch_model.pth', 'model.pth')
LOCAL_WEIGHT_EXTS = ('.safetensors', '.pth', '.pth.tar', '.bin')
_MAX_LISTED = 12


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that does not fit the model it is loaded into."""


class WeightsUnavailableError(RuntimeError):
    """The pretrained weights could not be fetched (no network, unknown Hub repository, no weights at all)."""


def _ways_out(cfg: Dict[str, Any]) -> str:
    name = _model_tag(cfg)
    url = cfg.get('url') or ''
    file_hint = Path(url).name if url else 'weights.pth'
    return (
        f'Two ways out: (1) get the file some other way and load it from disk with '
        f"timm.create_model('{name}', pretrained=True, pretrained_cfg_overlay=dict(file='/path/to/{file_hint}')); "
        f"(2) load a Hugging Face Hub mirror with pretrained_cfg_overlay=dict(hf_hub_id='<org>/<repo>') "
        f"(or timm.create_model('hf-hub:<org>/<repo>', pretrained=True)); `python -m timm_cct.hub` makes one."
    )


def _model_tag(cfg: Dict[str, Any]) -> str:
    arch = cfg.get('architecture') or 'model'
    return f"{arch}.{cfg['tag']}" if cfg.get('tag') else arch


def _listing(items: List[str]) -> str:
    shown = ', '.join(items[:_MAX_LISTED])
    return shown + (f', ... ({len(items) - _MAX_LISTED} more)' if len(items) > _MAX_LISTED else '')


def _check_zip_crc(path: Path, label: str) -> None:
    """Files written by ``torch.save`` are zip archives with a CRC-32 per entry; torch does not check them."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
        raise CheckpointError(f'Checkpoint {label} is damaged: its zip container cannot be read ({e}).') from e
    if bad is not None:
        raise CheckpointError(
            f'Checkpoint {label} is damaged: entry {bad!r} fails its CRC-32 check (flipped or missing bytes).')


def torch_load_weights_only(path: Union[str, Path]) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; ``argparse.Namespace`` is allowed (timm ``train.py``
    checkpoints keep their ``args`` in one)."""
    serialization = torch.serialization
    if hasattr(serialization, 'safe_globals'):  # torch >= 2.5
        with serialization.safe_globals([argparse.Namespace]):
            return torch.load(str(path), map_location='cpu', weights_only=True)
    if hasattr(serialization, 'add_safe_globals'):  # torch 2.4
        serialization.add_safe_globals([argparse.Namespace])
    return torch.load(str(path), map_location='cpu', weights_only=True)


def _load_state_dict(path: Path, use_ema: bool) -> Any:
    """timm's ``load_state_dict`` for safetensors; a pickle is read here, with ``weights_only=True`` on every timm
    release (timm < 1.0.26 reads it with ``weights_only=False`` by default), and unwrapped the way timm does."""
    if path.suffix == '.safetensors':
        return load_state_dict(str(path), use_ema=use_ema)
    checkpoint = torch_load_weights_only(path)
    if isinstance(checkpoint, dict):
        for key in (('state_dict_ema', 'model_ema') if use_ema else ()) + ('state_dict', 'model'):
            if checkpoint.get(key) is not None:
                checkpoint = checkpoint[key]
                break
    return clean_state_dict(checkpoint)


def read_checkpoint_file(path: Union[str, Path], label: Optional[str] = None, use_ema: bool = True) -> Dict[str, torch.Tensor]:
    """Read a state dict from a ``torch.save`` file (pickles with ``weights_only=True``) or a safetensors file.

    timm ``train.py`` checkpoints are unwrapped (``state_dict_ema`` if ``use_ema`` and present, else
    ``state_dict``) and DDP / ``torch.compile`` prefixes are stripped, as timm does.
    """
    path = Path(path)
    label = label or str(path)
    if not path.is_file():
        raise FileNotFoundError(f'Checkpoint file not found: {label}.')
    if zipfile.is_zipfile(path):
        _check_zip_crc(path, label)
    try:
        # safetensors by suffix, otherwise torch.load(weights_only=True)
        state_dict = _load_state_dict(path, use_ema)
    except Exception as e:  # torch, pickle, zip and safetensors all raise their own types
        raise CheckpointError(
            f'Could not read checkpoint {label}: {type(e).__name__}: {e}. Expected a state dict saved with '
            f'torch.save (loaded with weights_only=True) or a .safetensors file.') from e
    bad = [f'{k!r} ({type(v).__name__})' for k, v in state_dict.items()
           if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f'Checkpoint {label} is not a state dict of tensors; these entries are not tensors: {_listing(bad)}.')
    return state_dict


def _find_local_weights(folder: Path) -> Path:
    for name in LOCAL_WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    for ext in LOCAL_WEIGHT_EXTS:
        found = sorted(folder.glob(f'*{ext}'))
        if found:
            return found[0]
    raise FileNotFoundError(
        f'No weight file in {folder}; expected one of {list(LOCAL_WEIGHT_FILES)} or a file ending in '
        f'{list(LOCAL_WEIGHT_EXTS)}.')


def _download_hub(hub_id: str, filename: Optional[str], cfg: Dict[str, Any], cache_dir) -> Tuple[Path, str]:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    repo, revision = hf_split(hub_id)
    errors = []
    for name in ([filename] if filename else HUB_WEIGHT_FILES):
        try:
            return Path(hf_hub_download(repo, name, revision=revision, cache_dir=cache_dir)), name
        except EntryNotFoundError as e:  # also raised offline when the file is not in the local cache
            errors.append(f'{name}: {type(e).__name__}')
        except (RepositoryNotFoundError, RevisionNotFoundError, OSError, ValueError) as e:
            errors.append(f'{name}: {type(e).__name__}: {e}')
            break
    raise WeightsUnavailableError(
        f'Could not get the weights of {_model_tag(cfg)} from the Hugging Face Hub repository {hub_id!r} '
        f'({"; ".join(errors)}). Without network the file must already be in the local Hub cache. '
        + _ways_out(cfg))


def read_pretrained(cfg: Dict[str, Any], cache_dir: Optional[Union[str, Path]] = None) -> Tuple[str, Dict[str, torch.Tensor]]:
    """(description of the source, state dict) for the weights a resolved pretrained cfg points at.

    Sources are tried in timm's order: a Hub ``source``, a local folder, a state dict, a file, a Hub id,
    then the URL (downloaded into the torch hub cache, or read from it when already there).
    """
    source = cfg.get('source') or ''
    if source == 'hf-hub' or (source != 'local-dir' and not cfg.get('state_dict') and not cfg.get('file')
                              and cfg.get('hf_hub_id')):
        path, name = _download_hub(cfg['hf_hub_id'], cfg.get('hf_hub_filename'), cfg, cache_dir)
        label = f"{path} ({name} of the Hub repository {cfg['hf_hub_id']!r})"
        return label, read_checkpoint_file(path, label)
    if source == 'local-dir':
        path = _find_local_weights(Path(cfg['file']))
        return str(path), read_checkpoint_file(path)
    if cfg.get('state_dict'):
        state_dict = cfg['state_dict']
        if not isinstance(state_dict, dict):
            raise TypeError(f"pretrained_cfg state_dict must be a dict of tensors, got {type(state_dict).__name__}.")
        return 'the state dict given in pretrained_cfg', dict(state_dict)
    if cfg.get('file'):
        return str(cfg['file']), read_checkpoint_file(cfg['file'])
    url = cfg.get('url')
    if not url:
        raise WeightsUnavailableError(
            f"{_model_tag(cfg)} has no pretrained weights (no url, file or hf_hub_id in its pretrained cfg); "
            "timm.list_pretrained('cct_*') lists the models that do. Load your own file with "
            "pretrained_cfg_overlay=dict(file=...), or use pretrained=False.")
    try:
        path = download_cached_file(url, check_hash=False, progress=False, cache_dir=cache_dir)
    except OSError as e:  # URLError, HTTPError, timeouts and refused connections are all OSErrors
        raise WeightsUnavailableError(
            f'Could not download the pretrained weights of {_model_tag(cfg)} from {url} '
            f'({type(e).__name__}: {e}). ' + _ways_out(cfg)) from e
    label = f'{path} (downloaded from {url})'
    return label, read_checkpoint_file(path, label)


def _arch_summary(shapes: Dict[str, Tuple[int, ...]]) -> str:
    blocks = {int(k.split('.')[1]) for k in shapes if k.startswith('blocks.')}
    convs = {k for k in shapes if k.startswith('tokenizer.layers.') and k.endswith('.weight')}
    width = shapes.get('norm.weight', (None,))[0]
    head = shapes.get('head.weight', (None,))[0]
    pos = shapes.get('pos_embed')
    return (f'{len(blocks)} blocks, width {width}, {len(convs)} tokenizer conv(s), '
            f'{"no stored" if pos is None else pos[1]} position rows, '
            f'{"class token, " if "cls_token" in shapes else ""}{head} classes')


def check_state_dict(
        state_dict: Dict[str, torch.Tensor],
        model: nn.Module,
        label: str,
        pretrained_cfg: Optional[Dict[str, Any]] = None,
        stored_pos_shape: Optional[Tuple[int, ...]] = None,
) -> None:
    """Raise ``CheckpointError`` unless ``state_dict`` (already converted) fits ``model`` exactly.

    Allowed differences are the ones timm's loader makes itself: the classifier is dropped when the
    model's ``num_classes`` differs from the pretrained cfg's, and the first conv is adapted when
    ``in_chans`` differs from the cfg's input channels. A learnable position embedding stored for another
    grid (``stored_pos_shape``, before conversion) is resampled only when the model was asked for another
    input size than the cfg's. Values must be finite.
    """
    cfg = pretrained_cfg if pretrained_cfg is not None else getattr(model, 'pretrained_cfg', {})
    model_state = model.state_dict()
    expected = dict(model_state)
    problems = []

    classifier = cfg.get('classifier') or 'head'
    head_keys = {f'{classifier}.weight', f'{classifier}.bias'}
    cfg_classes = cfg.get('num_classes')
    head_weight = state_dict.get(f'{classifier}.weight')
    # num_classes=-1 (train.py --pretrained-path): unknown, the checkpoint's head is replaced
    if head_weight is not None and cfg_classes is not None and cfg_classes >= 0 and head_weight.shape[0] != cfg_classes:
        problems.append(
            f'its classifier has {head_weight.shape[0]} classes but the pretrained cfg says {cfg_classes}; '
            f'pass pretrained_cfg_overlay=dict(num_classes={head_weight.shape[0]}) if that is intended')
    skip = head_keys if getattr(model, 'num_classes', cfg_classes) != cfg_classes else set()

    first_conv = cfg.get('first_conv')
    cfg_chans = (cfg.get('input_size') or (3,))[0]
    conv_key = f'{first_conv}.weight' if first_conv else None
    if conv_key in expected and getattr(model, 'in_chans', cfg_chans) != cfg_chans:
        shape = list(expected[conv_key].shape)
        shape[1] = cfg_chans  # timm adapts the checkpoint's conv from the cfg's channels to the model's
        expected[conv_key] = torch.empty(shape, dtype=expected[conv_key].dtype, device='meta')

    model_pos = expected.get('pos_embed')
    cfg_size = tuple((cfg.get('input_size') or (3, None, None))[-2:])
    if (stored_pos_shape is not None and model_pos is not None and tuple(stored_pos_shape) != tuple(model_pos.shape)
            and tuple(getattr(model, 'img_size', ())) == cfg_size):
        problems.append(
            f'pos_embed: checkpoint {tuple(stored_pos_shape)} vs model {tuple(model_pos.shape)} although the model '
            f'keeps the pretrained input size {cfg_size}; to resize on purpose, declare the checkpoint\'s size with '
            f'pretrained_cfg_overlay=dict(input_size=...) and pass img_size=')

    missing = sorted(k for k in expected if k not in state_dict and k not in skip)
    unexpected = sorted(k for k in state_dict if k not in expected and k not in skip)
    mismatched, not_finite, wrong_kind = [], [], []
    for key, value in state_dict.items():
        if key not in expected or key in skip:
            continue
        target = expected[key]
        if tuple(value.shape) != tuple(target.shape):
            mismatched.append(f'{key}: checkpoint {tuple(value.shape)} vs model {tuple(target.shape)}')
        elif value.is_floating_point() != target.is_floating_point():
            wrong_kind.append(f'{key}: checkpoint {value.dtype} vs model {target.dtype}')
        elif value.is_floating_point() and value.numel() and not bool(torch.isfinite(value).all()):
            not_finite.append(key)
    if missing:
        problems.append(f'missing keys ({len(missing)}): {_listing(missing)}')
    if unexpected:
        problems.append(f'unexpected keys ({len(unexpected)}): {_listing(unexpected)}')
    if mismatched:
        problems.append(f'shape mismatches ({len(mismatched)}): {_listing(mismatched)}')
    if wrong_kind:
        problems.append(f'dtype mismatches ({len(wrong_kind)}): {_listing(wrong_kind)}')
    if not_finite:
        problems.append(f'non-finite values (NaN/Inf) in: {_listing(not_finite)}')
    if not problems:
        return
    arch = cfg.get('architecture') or type(model).__name__
    ckpt_shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    if stored_pos_shape is not None and 'pos_embed' in ckpt_shapes:
        ckpt_shapes['pos_embed'] = tuple(stored_pos_shape)
    model_shapes = {k: tuple(v.shape) for k, v in model_state.items()}
    raise CheckpointError(
        f'Checkpoint {label} does not fit {arch}: ' + '; '.join(problems) + '. '
        f'Checkpoint: {_arch_summary(ckpt_shapes)}; model: {_arch_summary(model_shapes)}. '
        'Is it a checkpoint of another variant?')


def checked_filter(filter_fn: Callable, label: str, pretrained_cfg: Dict[str, Any]) -> Callable:
    """Wrap a checkpoint filter so that conversion errors name the source and the result is checked."""
    def _filter(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
        stored_pos = next((v for k, v in state_dict.items() if k.endswith(('pos_embed', 'positional_emb'))), None)
        try:
            out = filter_fn(state_dict, model)
        except (ValueError, RuntimeError, KeyError, IndexError) as e:
            raise CheckpointError(f'Could not convert checkpoint {label}: {e}') from e
        pos_shape = tuple(stored_pos.shape) if isinstance(stored_pos, torch.Tensor) else None
        check_state_dict(out, model, label, pretrained_cfg, stored_pos_shape=pos_shape)
        return out
    return _filter
