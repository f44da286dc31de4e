"""Loud pretrained-weight loading on top of timm's own loader.

timm reads the weights (file, URL, Hugging Face Hub, local folder; with its settings: hash check, download
progress, cache location, ``HF_HUB_OFFLINE``). timm-cct adds three things around it:

- ``pretrained_filter``: the checkpoint filter timm applies, which converts an official checkpoint and then checks
  the result against the model key for key and shape for shape, naming the source in every error;
- ``pretrained_loading``: checks made before timm reads a local file (it exists, it is a checkpoint by its content,
  its zip CRCs are intact, a pickle holds nothing but tensors), and one message naming the source and the ways out
  for whatever timm's, torch's or huggingface_hub's readers raise.

Nothing loads half-way: apart from the changes timm makes on purpose (a new classifier for another
``num_classes``, an adapted first conv for another ``in_chans``), the converted state dict must fit exactly.
"""
import argparse
import contextlib
import inspect
import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import torch
import torch.nn as nn

from timm.models import load_state_dict, resolve_pretrained_cfg

__all__ = [
    'CheckpointError', 'WeightsUnavailableError', 'read_checkpoint_file', 'check_state_dict', 'check_local_file',
    'pretrained_filter', 'pretrained_loading', 'source_label', 'sniff', 'torch_load_weights_only',
]

LOCAL_WEIGHT_EXTS = ('.safetensors', '.pth', '.pth.tar', '.pt', '.bin', '.ckpt')
_MAX_LISTED = 12
# timm before 1.0.26 unpickles with weights_only=False unless told otherwise
_TIMM_READS_SAFELY = inspect.signature(load_state_dict).parameters.get('weights_only') is not None and \
    inspect.signature(load_state_dict).parameters['weights_only'].default is True


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that does not fit the model it is loaded into."""


class WeightsUnavailableError(RuntimeError):
    """The pretrained weights could not be fetched (no network, unknown Hub repository, no weights at all)."""


def _model_tag(cfg: Dict[str, Any]) -> str:
    arch = cfg.get('architecture') or 'model'
    return f"{arch}.{cfg['tag']}" if cfg.get('tag') else arch


def _listing(items: List[str]) -> str:
    shown = ', '.join(items[:_MAX_LISTED])
    return shown + (f', ... ({len(items) - _MAX_LISTED} more)' if len(items) > _MAX_LISTED else '')


def _ways_out(cfg: Dict[str, Any]) -> str:
    name = _model_tag(cfg)
    url = cfg.get('url') or ''
    file_hint = Path(url).name if url else 'weights.pth'
    return (
        f'Two ways out: (1) get the file some other way and load it from disk with '
        f"timm.create_model('{name}', pretrained=True, pretrained_cfg_overlay=dict(file='/path/to/{file_hint}')); "
        f"(2) load a Hugging Face Hub copy with timm.create_model('hf-hub:<org>/<repo>', pretrained=True), or a "
        f"folder of one with timm.create_model('local-dir:/path/to/folder', pretrained=True); "
        f'`python -m timm_cct.hub` writes such a folder.'
    )


def source_label(cfg: Dict[str, Any]) -> str:
    """Where timm takes the weights of a resolved pretrained cfg from, in its own order of precedence."""
    source = cfg.get('source') or ''
    if source == 'hf-hub':
        return f"the Hugging Face Hub repository {cfg.get('hf_hub_id')!r}"
    if source == 'local-dir':
        return f"the folder {cfg.get('file')}"
    if cfg.get('state_dict'):
        return 'the state dict given in pretrained_cfg'
    if cfg.get('file'):
        return _ALIASES.get(str(cfg['file']), str(cfg['file']))
    if cfg.get('hf_hub_id'):
        return f"the Hugging Face Hub repository {cfg.get('hf_hub_id')!r}"
    if cfg.get('url'):
        return str(cfg['url'])
    return 'no source'


# -- what a file is, by its content ------------------------------------------------------------

def sniff(path: Path) -> str:
    """'zip' (torch.save), 'pickle' (legacy torch.save), 'safetensors', or a short description of something else."""
    with open(path, 'rb') as f:
        head = f.read(512)
    if head[:4] == b'PK\x03\x04':
        return 'zip'
    if head[:1] == b'\x80' or head[:2] in (b'}q', b'cc'):
        return 'pickle'
    if len(head) >= 9 and head[8:9] == b'{' and int.from_bytes(head[:8], 'little') < 100 * 2 ** 20:
        return 'safetensors'
    if head[:2] == b'\x1f\x8b':
        return 'a gzip archive (e.g. .tar.gz), not a checkpoint'
    if head[:6] == b'\x93NUMPY':
        return 'a NumPy .npy array, not a checkpoint'
    if head[257:262] == b'ustar':
        return 'a tar archive, not a checkpoint'
    if not head:
        return 'an empty file'
    return 'not a checkpoint'


def _check_zip_crc(path: Path, label: str) -> None:
    """Files written by ``torch.save`` are zip archives with a CRC-32 per entry; torch does not check them."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
        raise CheckpointError(f'Checkpoint {label} is damaged: its zip container cannot be read ({e}).') from None
    if bad is not None:
        raise CheckpointError(
            f'Checkpoint {label} is damaged: entry {bad!r} fails its CRC-32 check (flipped or missing bytes).')


def _unsafe_globals(path: Path) -> List[str]:
    """Pickle globals a ``weights_only=True`` load would refuse (argparse.Namespace of timm train.py allowed)."""
    if hasattr(torch.serialization, 'get_unsafe_globals_in_checkpoint'):  # torch >= 2.5: reads the pickle only
        try:
            found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception:  # not readable as a torch checkpoint: the reader itself reports it
            return []
        return [g for g in found if g != 'argparse.Namespace']
    try:  # torch 2.4: a weights_only load with the tensors memory-mapped, not read
        with _allow_namespace():
            torch.load(str(path), map_location='cpu', weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        return [str(e).split('\n')[0][:200]]
    except Exception:
        return []
    return []


def check_local_file(path: Union[str, Path], label: Optional[str] = None) -> Path:
    """Check, before anything reads it, that ``path`` is a checkpoint file that can be read safely; return it
    (``~`` expanded)."""
    path = Path(os.path.expanduser(str(path)))
    label = label or str(path)
    if path.is_dir():
        raise CheckpointError(
            f'Checkpoint {label} is a folder, not a file. Load a folder written by save_for_hf or '
            f"`python -m timm_cct.hub` with timm.create_model('local-dir:{path}', pretrained=True), "
            f'or name the weight file inside it.')
    if not path.is_file():
        raise FileNotFoundError(f'Checkpoint file not found: {label}.')
    kind = sniff(path)
    if kind not in ('zip', 'pickle', 'safetensors'):
        raise CheckpointError(
            f'Checkpoint {label} is {kind}. Expected a state dict saved with torch.save or a .safetensors file.')
    if kind == 'zip':
        _check_zip_crc(path, label)
        unsafe = _unsafe_globals(path)
        if unsafe:
            raise CheckpointError(
                f'Checkpoint {label} holds Python objects other than tensors ({_listing(unsafe)}), which are never '
                f'unpickled (loading them could run arbitrary code). Save model.state_dict() with torch.save, '
                f'or use safetensors.')
    return path


@contextlib.contextmanager
def _allow_namespace() -> Iterator[None]:
    """Let ``weights_only=True`` loads take ``argparse.Namespace`` (timm ``train.py`` checkpoints keep their ``args``
    in one)."""
    serialization = torch.serialization
    if hasattr(serialization, 'safe_globals'):  # torch >= 2.5
        with serialization.safe_globals([argparse.Namespace]):
            yield
        return
    if hasattr(serialization, 'add_safe_globals'):  # torch 2.4
        serialization.add_safe_globals([argparse.Namespace])
    yield


def torch_load_weights_only(path: Union[str, Path]) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, ``argparse.Namespace`` allowed."""
    with _allow_namespace():
        return torch.load(str(path), map_location='cpu', weights_only=True)


def read_checkpoint_file(path: Union[str, Path], label: Optional[str] = None, use_ema: bool = True) -> Dict[str, torch.Tensor]:
    """Read a state dict with timm's reader (pickles with ``weights_only=True``), after ``check_local_file``.

    timm ``train.py`` checkpoints are unwrapped (``state_dict_ema`` if ``use_ema`` and present, else
    ``state_dict``) and DDP / ``torch.compile`` prefixes are stripped, as timm does.
    """
    label = label or str(path)
    path = check_local_file(path, label)
    try:
        with _named_by_content(path) as named, _allow_namespace():
            state_dict = load_state_dict(str(named), use_ema=use_ema, weights_only=True)
    except Exception as e:  # torch, pickle, zip and safetensors all raise their own types
        raise CheckpointError(
            f'Could not read checkpoint {label}: {_reason(e)}. Expected a state dict saved with torch.save or a '
            f'.safetensors file.') from None
    _check_tensors(state_dict, label)
    return state_dict


def _reason(e: BaseException) -> str:
    """An exception's text without advice to unpickle unsafely."""
    text = str(e).split('\n')[0].strip()
    if 'weights_only' in text or 'Weights only load failed' in text:
        text = 'it holds Python objects other than tensors, which are never unpickled'
    return f'{type(e).__name__}: {text}' if text else type(e).__name__


def _check_tensors(state_dict: Any, label: str) -> None:
    if not isinstance(state_dict, dict):
        raise CheckpointError(f'Checkpoint {label} is not a state dict: it holds a {type(state_dict).__name__}.')
    bad = [f'{k!r} ({type(v).__name__})' for k, v in state_dict.items()
           if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f'Checkpoint {label} is not a state dict of tensors; these entries are not tensors: {_listing(bad)}.')


# -- around timm's loader ----------------------------------------------------------------------

_ALIASES: Dict[str, str] = {}  # alias path -> the user's file, for messages


@contextlib.contextmanager
def _named_by_content(path: Path) -> Iterator[Path]:
    """``path``, or while in the context a link to it whose name ends as timm expects for its content (timm tells
    safetensors from torch.save files by the name)."""
    is_safetensors = sniff(path) == 'safetensors'
    if is_safetensors == path.name.endswith('.safetensors'):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix='timm-cct-') as tmp:
        alias = Path(tmp) / (path.name + ('.safetensors' if is_safetensors else '.pth'))
        try:
            alias.symlink_to(path.resolve())
        except OSError:  # no symbolic links here: say what to do instead
            right = path.stem + ('.safetensors' if is_safetensors else '.pth')
            raise CheckpointError(
                f'Checkpoint {path} is a {"safetensors" if is_safetensors else "torch.save"} file under another name; '
                f'rename it to {right}.') from None
        _ALIASES[str(alias)] = str(path)
        try:
            yield alias
        finally:
            _ALIASES.pop(str(alias), None)


def _folder_weights(folder: Path) -> Path:
    """The weight file timm takes from a ``local-dir:`` folder (its preferred names, then the first by extension)."""
    from timm.models import _hub
    preferred = getattr(_hub, '_PREFERRED_FILES', ('model.safetensors', 'pytorch_model.bin'))
    for name in preferred:
        if (folder / name).is_file():
            return folder / name
    for ext in getattr(_hub, '_EXT_PRIORITY', LOCAL_WEIGHT_EXTS):
        found = sorted(folder.glob(f'*{ext}'))
        if found:
            return found[0]
    raise FileNotFoundError(f'No weight file in the folder {folder}; expected one of {list(preferred)}.')


@contextlib.contextmanager
def pretrained_loading(variant: str, kwargs: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
    """Context for timm's builder loading pretrained weights: yields the model kwargs to build with.

    A local weight file or folder is checked before timm reads it (``~`` expanded; a file timm would mistake for the
    other format by its name is handed over under the right name), and what timm's loader raises is re-raised as one
    clear error naming the source and the ways out.
    """
    overlay = dict(kwargs.get('pretrained_cfg_overlay') or {})
    cfg = resolve_pretrained_cfg(variant, kwargs.get('pretrained_cfg'), overlay).to_dict()
    source = cfg.get('source') or ''
    with contextlib.ExitStack() as stack:
        if cfg.get('file') and source != 'hf-hub' and not cfg.get('state_dict'):
            path = Path(os.path.expanduser(str(cfg['file'])))
            if source == 'local-dir':
                if not path.is_dir():
                    raise FileNotFoundError(f'Weight folder not found: {path}.')
                if not _TIMM_READS_SAFELY:
                    # timm < 1.0.26 reads a folder's weights with torch.load whatever their format, unpickling
                    # without weights_only: hand it the folder's weight file as a file source instead
                    path = check_local_file(_folder_weights(path))
                    overlay.update(source='', hf_hub_id=None)
            else:
                path = stack.enter_context(_named_by_content(check_local_file(path)))
            if str(path) != str(cfg['file']):
                overlay['file'] = str(path)
                kwargs = dict(kwargs, pretrained_cfg_overlay=overlay)
        with _load_errors(variant, kwargs):
            yield kwargs


_READ_ERRORS = (OSError, EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, AssertionError, AttributeError)
try:
    from safetensors import SafetensorError
    _READ_ERRORS += (SafetensorError,)
except ImportError:
    pass


@contextlib.contextmanager
def _load_errors(variant: str, kwargs: Dict[str, Any]) -> Iterator[None]:
    """Re-raise what timm's loader raises while reading pretrained weights as one clear error naming the source."""
    try:
        yield
    except (CheckpointError, WeightsUnavailableError):
        raise
    except _READ_ERRORS as e:
        cfg = resolve_pretrained_cfg(variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay'))
        cfg = cfg.to_dict()
        label = source_label(cfg)
        if label == 'no source' or 'No pretrained weights exist' in str(e):
            raise WeightsUnavailableError(
                f"{_model_tag(cfg)} has no pretrained weights (no url, file or hf_hub_id in its pretrained cfg); "
                "timm.list_pretrained('cct_*') lists the models that do. Load your own file with "
                "pretrained_cfg_overlay=dict(file=...), or use pretrained=False.") from None
        hub = 'Hugging Face Hub' in label
        if hub or (label == str(cfg.get('url')) and isinstance(e, OSError) and not isinstance(e, FileNotFoundError)):
            offline = os.environ.get('HF_HUB_OFFLINE', '') not in ('', '0')
            hint = ('HF_HUB_OFFLINE is set, so only files already in the local Hub cache can be used. ' if offline
                    else 'Without network, set HF_HUB_OFFLINE=1 to use the local Hub cache at once instead of '
                         'retrying. ') if hub else ''
            raise WeightsUnavailableError(
                f'Could not get the pretrained weights of {_model_tag(cfg)} from {label} ({_reason(e)}). '
                + hint + _ways_out(cfg)) from None
        if isinstance(e, FileNotFoundError):
            raise FileNotFoundError(f'Checkpoint not found: {label} ({_reason(e)}).') from None
        not_a_dict = re.match(r"'(\w+)' object has no attribute 'items'", str(e))
        if isinstance(e, AttributeError) and not_a_dict:
            raise CheckpointError(
                f'Checkpoint {label} is not a state dict: it holds a {not_a_dict.group(1)}. Expected a dict of '
                f'tensors saved with torch.save (e.g. torch.save(model.state_dict(), path)) or a .safetensors '
                f'file.') from None
        raise CheckpointError(
            f'Could not read the pretrained weights of {_model_tag(cfg)} from {label}: {_reason(e)}. Expected a '
            f'state dict saved with torch.save or a .safetensors file.') from None


def _arch_summary(shapes: Dict[str, Tuple[int, ...]]) -> str:
    blocks = {k.split('.')[1] for k in shapes if k.startswith('blocks.') and k.split('.')[1].isdigit()}
    convs = {k for k in shapes if k.startswith('tokenizer.layers.') and k.endswith('.weight')}
    width = (shapes.get('norm.weight') or (None,))[0]  # a 0-d tensor has the shape ()
    head = (shapes.get('head.weight') or (None,))[0]
    pos = shapes.get('pos_embed')
    return (f'{len(blocks)} blocks, width {width}, {len(convs)} tokenizer conv(s), '
            f'{"no stored" if pos is None or len(pos) < 2 else pos[1]} position rows, '
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
    _check_tensors(state_dict, label)
    model_state = model.state_dict()
    expected = dict(model_state)
    problems = []

    classifier = cfg.get('classifier') or 'head'
    head_keys = {f'{classifier}.weight', f'{classifier}.bias'}
    cfg_classes = cfg.get('num_classes')
    head_weight = state_dict.get(f'{classifier}.weight')
    # num_classes=-1 (train.py --pretrained-path): unknown, the checkpoint's head is replaced
    if (head_weight is not None and head_weight.dim() and cfg_classes is not None and cfg_classes >= 0
            and head_weight.shape[0] != cfg_classes):
        problems.append(
            f'its classifier has {head_weight.shape[0]} classes but the pretrained cfg says {cfg_classes}; '
            f'pass pretrained_cfg_overlay=dict(num_classes={head_weight.shape[0]}) if that is intended')
    skip = head_keys if cfg_classes is not None and getattr(model, 'num_classes', cfg_classes) != cfg_classes else set()

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


def pretrained_filter(filter_fn: Callable) -> Callable:
    """The filter timm's loader applies to pretrained weights: ``filter_fn`` (conversion), then a strict check of the
    result against the model; errors name the source, read from the model's pretrained cfg."""
    def _filter(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
        cfg = getattr(model, 'pretrained_cfg', None) or {}
        label = source_label(cfg)
        _check_tensors(state_dict, label)
        stored_pos = next((v for k, v in state_dict.items() if k.endswith(('pos_embed', 'positional_emb'))), None)
        try:
            out = filter_fn(state_dict, model)
        except (ValueError, RuntimeError, KeyError, IndexError) as e:
            raise CheckpointError(f'Could not convert checkpoint {label}: {e}') from None
        pos_shape = tuple(stored_pos.shape) if isinstance(stored_pos, torch.Tensor) else None
        check_state_dict(out, model, label, cfg, stored_pos_shape=pos_shape)
        return out
    return _filter
