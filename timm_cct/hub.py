"""Turn a trained Compact Transformer into a Hugging Face Hub repository (folder, optionally uploaded).

The folder holds ``model.safetensors`` and ``config.json`` written by timm's ``save_for_hf`` (so
``timm.create_model('hf-hub:<org>/<name>')`` and ``'local-dir:<folder>'`` load it), and a model card.

    python -m timm_cct.hub model_best.pth.tar --model cct_7_3x1_32 --out hub/cct_7_3x1_32 \\
        --dataset cifar10 --result top1=96.5 [--repo-id org/cct_7_3x1_32]
"""
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn

import timm
from timm.models import save_for_hf

from .cct import CompactTransformer, checkpoint_filter_fn
from .loading import read_checkpoint_file, torch_load_weights_only

try:
    from huggingface_hub import HfApi
except ImportError:  # uploading needs huggingface_hub; writing the folder does not
    HfApi = None

__all__ = ['export_to_hub', 'model_card', 'main', 'UploadError', 'HUB_FILES']

# The files export_to_hub writes (and uploads): timm's save_for_hf files and the model card.
HUB_FILES = ('README.md', 'config.json', 'model.safetensors')


class UploadError(RuntimeError):
    """The Hub folder was written, but uploading it failed."""

CITATION = """@article{hassani2021escaping,
  title   = {Escaping the Big Data Paradigm with Compact Transformers},
  author  = {Ali Hassani and Steven Walton and Nikhil Shah and Abulikemu Abuduweili and Jiachen Li and Humphrey Shi},
  journal = {arXiv preprint arXiv:2104.05704},
  year    = {2021}
}"""
# common short names -> Hub dataset ids
HUB_DATASETS = {
    'cifar10': 'uoft-cs/cifar10',
    'cifar100': 'uoft-cs/cifar100',
    'imagenet': 'ILSVRC/imagenet-1k',
    'imagenet-1k': 'ILSVRC/imagenet-1k',
    'in1k': 'ILSVRC/imagenet-1k',
}
CIFAR10_LABELS = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')
FAMILIES = {
    'cct': 'CCT (Compact Convolutional Transformer: convolutional tokenizer, SeqPool)',
    'cvt': 'CVT (Compact Vision Transformer: patch tokenizer, SeqPool)',
    'vit_lite': 'ViT-Lite (patch tokenizer, class token)',
}


def _model_from_checkpoint(path: Path, model_name: str, use_ema: bool = True) -> CompactTransformer:
    """Build ``model_name`` sized for the weights in ``path`` (official file or timm train.py checkpoint)."""
    probe = timm.create_model(model_name)
    if not isinstance(probe, CompactTransformer):
        raise ValueError(f'{model_name!r} is not a timm_cct model.')
    state_dict = checkpoint_filter_fn(read_checkpoint_file(path, use_ema=use_ema), probe)
    head = state_dict.get('head.weight')
    num_classes = int(head.shape[0]) if head is not None else 0
    conv = state_dict.get(f"{probe.pretrained_cfg['first_conv']}.weight")
    in_chans = int(conv.shape[1]) if conv is not None else probe.in_chans
    img_size = _train_img_size(path) or _grid_img_size(state_dict.get('pos_embed'), probe)
    overlay = dict(file=str(path), num_classes=num_classes, input_size=(in_chans, *img_size))
    return timm.create_model(
        model_name, pretrained=True, pretrained_cfg_overlay=overlay,
        num_classes=num_classes, in_chans=in_chans, img_size=img_size)


def _train_img_size(path: Path) -> Optional[tuple]:
    """Input size recorded in a timm train.py checkpoint's ``args``, if any."""
    if path.suffix == '.safetensors':
        return None
    try:
        checkpoint = torch_load_weights_only(path)
    except Exception:
        return None
    args = checkpoint.get('args') if isinstance(checkpoint, dict) else None
    if args is None:
        return None
    input_size = getattr(args, 'input_size', None)
    if input_size:
        return tuple(input_size[-2:])
    size = getattr(args, 'img_size', None)
    return (size, size) if isinstance(size, int) else None


def _grid_img_size(pos: Optional[torch.Tensor], model: CompactTransformer) -> tuple:
    """Input size whose token grid matches a stored learnable position embedding (else the model's)."""
    if pos is None or model.pos_embed_type != 'learnable' or pos.shape == model.pos_embed.shape:
        return tuple(model.img_size)
    side = int(round((pos.shape[1] - model.num_prefix_tokens) ** 0.5))
    scale = model.img_size[0] // model.feat_size[0]
    return side * scale, side * scale


def _family(arch: str) -> str:
    for prefix, text in FAMILIES.items():
        if arch.startswith(prefix + '_'):
            return text
    return arch


def _recipe_text(recipe: Union[None, str, Dict[str, Any]]) -> str:
    if not recipe:
        return 'Not given.'
    if isinstance(recipe, dict):
        return '\n'.join(f'- **{k}:** {v}' for k, v in recipe.items())
    return str(recipe)


def _results_table(results: Optional[Dict[str, Any]], dataset: Optional[str]) -> str:
    if not results:
        return 'No results given.'
    rows = ['| dataset | metric | value |', '|---|---|---|']
    rows += [f'| {dataset or "-"} | {k} | {v} |' for k, v in results.items()]
    return '\n'.join(rows)


def model_card(
        model: CompactTransformer,
        repo_id: Optional[str],
        dataset: Optional[str] = None,
        recipe: Union[None, str, Dict[str, Any]] = None,
        results: Optional[Dict[str, Any]] = None,
) -> str:
    """Model card (README.md) with a YAML metadata header for ``model``."""
    cfg = model.pretrained_cfg
    arch = cfg['architecture']
    hub_name = repo_id or '<org>/<name>'
    dataset_id = HUB_DATASETS.get(str(dataset).lower(), dataset) if dataset else None
    params = sum(p.numel() for p in model.parameters())
    size = tuple(model.img_size)
    tags = ['image-classification', 'timm', 'timm_cct', 'compact-transformers', arch.split('_')[0]]
    header = ['---', 'library_name: timm', 'license: apache-2.0', 'pipeline_tag: image-classification', 'tags:']
    header += [f'- {t}' for t in dict.fromkeys(tags)]
    if dataset_id:
        header += ['datasets:', f'- {dataset_id}']
    header += ['---']
    usage = f"""```python
import timm
import timm_cct  # registers the Compact Transformer models with timm
import torch

model = timm.create_model('hf-hub:{hub_name}', pretrained=True).eval()
data_config = timm.data.resolve_model_data_config(model)
transform = timm.data.create_transform(**data_config, is_training=False)
# img: a PIL image
with torch.no_grad():
    probs = model(transform(img).unsqueeze(0)).softmax(dim=-1)
```

Fine-tune at another resolution or class count (the position embedding is resampled, the classifier
re-initialised): `timm.create_model('hf-hub:{hub_name}', pretrained=True, img_size=64, num_classes=5)`."""
    body = f"""
# Model card for {hub_name.split('/')[-1]}

A {_family(arch)} image classifier, architecture `{arch}` from
[Escaping the Big Data Paradigm with Compact Transformers](https://arxiv.org/abs/2104.05704)
(Hassani et al., 2021), packaged for [timm](https://github.com/huggingface/pytorch-image-models) by `timm_cct`.

## Model details
- **Architecture:** `{arch}`: {len(model.blocks)} transformer blocks, width {model.embed_dim}, position embedding `{model.pos_embed_type}`, pooling `{model.global_pool}`
- **Parameters:** {params / 1e6:.2f} M
- **Input size:** {model.in_chans} x {size[0]} x {size[1]}
- **Classes:** {model.num_classes}
- **Training data:** {dataset or 'not given'}
- **Paper:** https://arxiv.org/abs/2104.05704
- **Original code:** https://github.com/SHI-Labs/Compact-Transformers

## Training recipe
{_recipe_text(recipe)}

## Results
{_results_table(results, dataset)}

## Usage
Needs `pip install timm timm_cct` (importing `timm_cct` registers the models).

{usage}

## Citation
```bibtex
{CITATION}
```

## License
Apache-2.0.
"""
    return '\n'.join(header) + '\n' + body


def export_to_hub(
        model_or_path: Union[nn.Module, str, Path],
        folder: Union[str, Path],
        *,
        model_name: Optional[str] = None,
        repo_id: Optional[str] = None,
        label_names: Optional[Sequence[str]] = None,
        dataset: Optional[str] = None,
        recipe: Union[None, str, Dict[str, Any]] = None,
        results: Optional[Dict[str, Any]] = None,
        private: bool = False,
        overwrite: bool = False,
) -> Path:
    """Write a Hub repository folder for a trained model; upload it too when ``repo_id`` is given.

    Args:
        model_or_path: A timm_cct model in memory, or a checkpoint file (official state dict, or a timm
            ``train.py`` checkpoint with ``state_dict`` / ``state_dict_ema``; EMA weights are preferred).
        folder: Output folder: new or empty (created), or any folder with ``overwrite=True``.
        model_name: Registered architecture (e.g. ``'cct_7_3x1_32'``); needed for a checkpoint file.
        repo_id: ``'org/name'`` to upload to; without it only the folder is written.
        label_names: One name per class, stored in config.json.
        dataset: Training data (``cifar10``, ``cifar100``, ``imagenet`` map to Hub dataset ids).
        recipe: Training recipe, as text or a dict of settings, for the model card.
        results: Metric name -> value, for the model card's results table.
        private: Create the Hub repository as private.
        overwrite: Write into a folder that already holds files: ``README.md``, ``config.json`` and
            ``model.safetensors`` are replaced, other files are kept and not uploaded.

    Returns:
        The folder.

    Raises:
        ValueError: ``folder`` is a file, or holds files and ``overwrite`` is False (nothing is written).
        UploadError: The folder was written but the upload failed (offline, not logged in, no access);
            the message says how to upload the folder later.
    """
    if isinstance(model_or_path, (str, Path)):
        if not model_name:
            raise ValueError('model_name is needed to export a checkpoint file, e.g. model_name="cct_7_3x1_32".')
        model = _model_from_checkpoint(Path(model_or_path), model_name)
    elif isinstance(model_or_path, CompactTransformer):
        model = model_or_path
        arch = getattr(model, 'pretrained_cfg', {}).get('architecture')
        if not arch:
            raise ValueError('The model has no pretrained_cfg; build it with timm.create_model(...).')
        if model_name and model_name != arch:
            raise ValueError(f'model_name={model_name!r} does not match the model architecture {arch!r}.')
    else:
        raise TypeError(
            f'Expected a timm_cct model or a checkpoint path, got {type(model_or_path).__name__}.')
    if isinstance(model.norm, nn.Identity):
        raise ValueError(
            'The model has no final norm (prune_intermediate_layers(..., prune_norm=True)), which the architecture '
            'cannot rebuild from config.json; export it before pruning, or prune with prune_norm=False.')
    if repo_id is not None and (not isinstance(repo_id, str) or repo_id.count('/') != 1 or repo_id.startswith('/')
                                or repo_id.endswith('/')):
        raise ValueError(f"Expected repo_id as 'org/name', got {repo_id!r}.")
    if label_names is None and dataset and str(dataset).lower() == 'cifar10' and model.num_classes == 10:
        label_names = CIFAR10_LABELS
    if label_names is not None:
        label_names = list(label_names)
        if len(label_names) != model.num_classes or not all(isinstance(n, str) for n in label_names):
            raise ValueError(
                f'Expected {model.num_classes} label names (strings), one per class, got {len(label_names)}.')

    folder = Path(folder)
    _check_folder(folder, overwrite)
    model_config = {'label_names': label_names} if label_names else {}
    was_training = model.training
    model.eval()
    try:
        # the build arguments that change the weights' shapes; timm >= 1.0.31 records them itself, older releases
        # would rebuild the model at its registered size, channels and classes
        model_args = dict(img_size=list(model.img_size), in_chans=model.in_chans, num_classes=model.num_classes,
                          global_pool=model.global_pool, depth=len(model.blocks))
        save_for_hf(model, folder, model_config=model_config, model_args=model_args, safe_serialization=True)
    finally:
        model.train(was_training)
    # completed here rather than passed to save_for_hf, which before timm 1.0.31 replaces the whole pretrained cfg
    # (mean, std, crop) with a given one
    config_path = folder / 'config.json'
    config = json.loads(config_path.read_text(encoding='utf-8'))
    pretrained_cfg = config.setdefault('pretrained_cfg', {})
    pretrained_cfg.update(input_size=[model.in_chans, *model.img_size], num_classes=model.num_classes)
    if dataset or results:
        # describe these weights, not the checkpoint the model may have started from
        what = f'trained on {dataset}' if dataset else 'trained weights'
        pretrained_cfg.update(
            description=f'Exported with timm_cct.hub: {what}.',
            notes=[f'{k}={v}' for k, v in (results or {}).items()] + ([f'dataset={dataset}'] if dataset else []),
        )
    config_path.write_text(json.dumps(config, indent=2), encoding='utf-8')
    (folder / 'README.md').write_text(model_card(model, repo_id, dataset, recipe, results), encoding='utf-8')

    if repo_id:
        later = (f'The folder {folder} is written and ready; upload it later with `hf upload {repo_id} {folder} .` '
                 f'(after `hf auth login`) or `huggingface_hub.HfApi().upload_folder(repo_id={repo_id!r}, '
                 f'folder_path={str(folder)!r})`.')
        if HfApi is None:
            raise UploadError(f'Uploading needs huggingface_hub (pip install huggingface_hub). {later}')
        try:
            api = HfApi()
            api.create_repo(repo_id, private=private, exist_ok=True)
            api.upload_folder(repo_id=repo_id, folder_path=str(folder), allow_patterns=list(HUB_FILES),
                              commit_message=f'Add {model.pretrained_cfg["architecture"]}')
        except Exception as e:  # network, authentication and Hub errors come in many types
            reason = str(e).strip().splitlines()[0] if str(e).strip() else ''
            raise UploadError(f'Uploading to {repo_id} failed ({type(e).__name__}: {reason}). {later}') from e
    return folder


def _check_folder(folder: Path, overwrite: bool) -> None:
    """Refuse a file, or a folder holding files (unless ``overwrite``), before anything is written."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f'{folder} is a file; expected a folder (new or empty) for the Hub files.')
    if folder.is_dir() and not overwrite:
        held = sorted(p.name for p in folder.iterdir())
        if held:
            shown = ', '.join(held[:5]) + (f' and {len(held) - 5} more' if len(held) > 5 else '')
            raise ValueError(
                f'{folder} already holds files ({shown}); choose a new or empty folder, or pass overwrite=True '
                f'(--overwrite) to replace {", ".join(HUB_FILES)} there (other files are kept and not uploaded).')


def _parse_results(items: Sequence[str]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition('=')
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ValueError(f'--result expects NAME=VALUE (e.g. top1=96.5), got {item!r}.')
        if key in out:
            raise ValueError(f'--result {key} is given more than once.')
        try:
            out[key] = float(value)
        except ValueError:
            out[key] = value
    return out


def _read_recipe(text: Optional[str]) -> Union[None, str, Dict[str, Any]]:
    """--recipe: a JSON/YAML file of settings (a mapping), or the recipe as text."""
    if not text:
        return None
    path = Path(text)
    if path.suffix.lower() in ('.json', '.yaml', '.yml') and not path.is_file():
        raise ValueError(f'--recipe {text}: no such file (expected a JSON/YAML file of settings, or recipe text).')
    if not path.is_file():
        return text
    import yaml
    try:
        recipe = yaml.safe_load(path.read_text(encoding='utf-8'))
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise ValueError(f'--recipe {text} is not a UTF-8 JSON/YAML file ({type(e).__name__}).') from e
    if not isinstance(recipe, (dict, str)) or not recipe:
        raise ValueError(f'--recipe {text} must hold a mapping of settings (or text), got '
                         f'{type(recipe).__name__}.')
    return recipe


def _read_labels(text: Optional[str]) -> Optional[List[str]]:
    """--labels: a UTF-8 text file, one distinct class name per line."""
    if not text:
        return None
    path = Path(text)
    if not path.is_file():
        raise ValueError(f'--labels {text}: no such file (expected a text file with one class name per line).')
    try:
        labels = [line.strip() for line in path.read_text(encoding='utf-8').splitlines() if line.strip()]
    except UnicodeDecodeError as e:
        raise ValueError(f'--labels {text} is not a UTF-8 text file.') from e
    if not labels:
        raise ValueError(f'--labels {text} holds no class names (expected one per line).')
    repeated = sorted({n for n in labels if labels.count(n) > 1})
    if repeated:
        raise ValueError(f'--labels {text} names {", ".join(repeated[:5])} more than once.')
    return labels


def _check_model_name(name: str) -> None:
    if not timm.is_model(name) or not timm.models.model_entrypoint(name).__module__.startswith('timm_cct'):
        raise ValueError(f'--model {name!r} is not a Compact Transformer registered by timm_cct; expected e.g. '
                         f'cct_7_3x1_32 (see timm.list_models("cct_*"), "cvt_*", "vit_lite_*").')


def main(argv: Optional[List[str]] = None) -> int:
    """The command; returns the exit status (2 for a user error, reported as one line on stderr)."""
    from ._cli import CliParser, fail
    parser = CliParser(prog='python -m timm_cct.hub', description=__doc__.split('\n')[0])
    parser.add_argument('source', help='checkpoint file: official state dict, timm train.py .pth.tar, .safetensors')
    parser.add_argument('--model', required=True, help='registered architecture, e.g. cct_7_3x1_32')
    parser.add_argument('--out', required=True, help='output folder: new or empty, unless --overwrite')
    parser.add_argument('--overwrite', action='store_true',
                        help=f'write into a folder that holds files ({", ".join(HUB_FILES)} are replaced, other '
                             f'files kept and not uploaded)')
    parser.add_argument('--repo-id', default=None, help='org/name to upload to (omit to only write the folder)')
    parser.add_argument('--dataset', default=None, help='training data, e.g. cifar10')
    parser.add_argument('--recipe', default=None, help='training recipe text, or a JSON/YAML file of settings')
    parser.add_argument('--result', action='append', default=[], metavar='NAME=VALUE', help='a result, repeatable')
    parser.add_argument('--labels', default=None, help='UTF-8 text file with one class name per line')
    parser.add_argument('--private', action='store_true', help='create the Hub repository as private')
    args = parser.parse_args(argv)

    prog = parser.prog
    try:
        if not Path(args.source).is_file():
            raise ValueError(f'{args.source}: no such checkpoint file.')
        _check_model_name(args.model)
        if args.repo_id is not None and (args.repo_id.count('/') != 1 or not all(args.repo_id.split('/'))):
            raise ValueError(f"--repo-id expects 'org/name', got {args.repo_id!r}.")
        _check_folder(Path(args.out), args.overwrite)
        recipe, labels = _read_recipe(args.recipe), _read_labels(args.labels)
        results = _parse_results(args.result)
    except ValueError as e:
        return fail(prog, e)
    try:
        folder = export_to_hub(
            args.source, args.out, model_name=args.model, repo_id=args.repo_id, label_names=labels,
            dataset=args.dataset, recipe=recipe, results=results, private=args.private, overwrite=args.overwrite)
    except UploadError as e:
        return fail(prog, e)
    except (ValueError, TypeError, OSError) as e:  # a checkpoint that does not fit, labels of the wrong count
        return fail(prog, e)
    print(json.dumps({'folder': str(folder), 'files': sorted(p.name for p in folder.iterdir()),
                      'uploaded_to': args.repo_id}))
    return 0


if __name__ == '__main__':
    sys.exit(main())
