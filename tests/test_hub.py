"""Hub export: the folder loads back through local-dir: and hf-hub: (offline cache), the card renders,
timm's own save_for_hf round trip works, and the upload path sends the folder (HfApi mocked)."""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import timm
from huggingface_hub import ModelCard
from timm.models import save_for_hf

import timm_cct.hub as hub
from timm_cct.hub import export_to_hub

from official import fixture

TESTS = Path(__file__).parent


@pytest.fixture(scope='module')
def official(tmp_path_factory):
    sd, x, logits = fixture('cct_7_3x1_32')
    path = tmp_path_factory.mktemp('ckpt') / 'cct_7_3x1_32_cifar10_300epochs.pth'
    torch.save(sd, path)
    model = timm.create_model('cct_7_3x1_32', pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    return model, path, x, logits


@pytest.fixture(scope='module')
def exported(official, tmp_path_factory):
    model, _, _, _ = official
    folder = tmp_path_factory.mktemp('hub') / 'cct_7_3x1_32.cifar10'
    out = export_to_hub(model, folder, dataset='cifar10', recipe={'epochs': 300, 'optimizer': 'AdamW'},
                        results={'top1': 96.53}, label_names=[f'class{i}' for i in range(10)])
    return out


def test_folder_has_timm_files(exported):
    assert sorted(p.name for p in exported.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    config = json.loads((exported / 'config.json').read_text())
    assert config['architecture'] == 'cct_7_3x1_32'
    assert config['label_names'] == [f'class{i}' for i in range(10)]
    assert config['pretrained_cfg']['mean'] == pytest.approx([0.4914, 0.4822, 0.4465])
    assert 'file' not in config['pretrained_cfg'] and 'url' not in config['pretrained_cfg']


def test_local_dir_gives_identical_logits(official, exported):
    model, _, x, logits = official
    loaded = timm.create_model(f'local-dir:{exported}', pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert ((model(x) - logits).abs().max() / logits.abs().max()) < 1e-5


def test_hf_hub_offline_cache_gives_identical_logits(official, exported, tmp_path):
    model, _, x, _ = official
    rev = 'a' * 40
    repo = tmp_path / 'cache' / 'models--someorg--cct_7_3x1_32'
    (repo / 'refs').mkdir(parents=True)
    (repo / 'refs' / 'main').write_text(rev)
    snapshot = repo / 'snapshots' / rev
    snapshot.mkdir(parents=True)
    for f in exported.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    torch.save(x, tmp_path / 'x.pt')
    code = (
        "import sys, torch, timm, timm_cct\n"
        "m = timm.create_model('hf-hub:someorg/cct_7_3x1_32', pretrained=True).eval()\n"
        "x = torch.load(sys.argv[1], weights_only=True)\n"
        "torch.save(m(x).detach(), sys.argv[2])\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_HUB_CACHE=str(tmp_path / 'cache'))
    env['PYTHONPATH'] = os.pathsep.join([str(TESTS.parent), env.get('PYTHONPATH', '')])
    subprocess.run([sys.executable, '-c', code, str(tmp_path / 'x.pt'), str(tmp_path / 'y.pt')],
                   check=True, env=env, timeout=300)
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / 'y.pt', weights_only=True), model(x))


def test_model_card_renders(exported):
    card = ModelCard.load(exported / 'README.md')
    assert card.data.library_name == 'timm'
    assert card.data.license == 'apache-2.0'
    assert 'timm' in card.data.tags and 'image-classification' in card.data.tags
    assert card.data.datasets == ['uoft-cs/cifar10']
    text = card.text
    assert 'import timm_cct' in text and "hf-hub:<org>/<name>" in text
    assert '@article{hassani2021escaping' in text and 'arXiv:2104.05704' in text
    assert '| cifar10 | top1 | 96.53 |' in text
    assert '- **epochs:** 300' in text


def test_timm_save_for_hf_round_trip(official, tmp_path):
    model, _, x, _ = official
    save_for_hf(model, tmp_path / 'plain', safe_serialization=True)
    loaded = timm.create_model(f'local-dir:{tmp_path / "plain"}', pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_fine_tuned_model_round_trip(official, tmp_path):
    _, path, _, _ = official
    model = timm.create_model('cct_7_3x1_32', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                              img_size=48, num_classes=5, in_chans=1).eval()
    folder = export_to_hub(model, tmp_path / 'ft', label_names=list('abcde'))
    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    x = torch.randn(2, 1, 48, 48)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded.pretrained_cfg['label_names'] == list('abcde')


def test_upload_sends_the_folder(official, tmp_path, monkeypatch):
    model, _, _, _ = official
    calls = []

    class FakeApi:
        def create_repo(self, repo_id, private=False, exist_ok=False):
            calls.append(('create_repo', repo_id, private, exist_ok))

        def upload_folder(self, repo_id, folder_path, commit_message=None, **kwargs):
            calls.append(('upload_folder', repo_id, sorted(p.name for p in Path(folder_path).iterdir())))

    monkeypatch.setattr(hub, 'HfApi', FakeApi)
    export_to_hub(model, tmp_path / 'up', repo_id='someorg/cct-test', private=True)
    assert calls == [
        ('create_repo', 'someorg/cct-test', True, True),
        ('upload_folder', 'someorg/cct-test', ['README.md', 'config.json', 'model.safetensors']),
    ]
    assert 'hf-hub:someorg/cct-test' in (tmp_path / 'up' / 'README.md').read_text()


def test_no_repo_id_means_no_upload(official, tmp_path, monkeypatch):
    model, _, _, _ = official

    class NoApi:
        def __init__(self):
            raise AssertionError('must not upload without repo_id')

    monkeypatch.setattr(hub, 'HfApi', NoApi)
    assert export_to_hub(model, tmp_path / 'local').is_dir()


def test_command_on_official_and_train_checkpoints(official, tmp_path, capsys):
    model, path, x, _ = official
    folder = tmp_path / 'a'
    assert hub.main([str(path), '--model', 'cct_7_3x1_32', '--out', str(folder),
                     '--dataset', 'cifar10', '--result', 'top1=96.53']) == 0
    assert json.loads(capsys.readouterr().out)['files'] == ['README.md', 'config.json', 'model.safetensors']
    with torch.no_grad():
        assert torch.equal(timm.create_model(f'local-dir:{folder}', pretrained=True).eval()(x), model(x))

    # a timm train.py checkpoint of a 5-class fine-tune at 48 px, EMA weights preferred
    tuned = timm.create_model('cct_7_3x1_32', img_size=48, num_classes=5).eval()
    noisy = {k: v + 1 for k, v in tuned.state_dict().items()}
    ckpt = tmp_path / 'model_best.pth.tar'
    torch.save({'epoch': 9, 'state_dict': noisy, 'state_dict_ema': tuned.state_dict(),
                'args': argparse.Namespace(model='cct_7_3x1_32', img_size=48, input_size=None)}, ckpt)
    folder = tmp_path / 'b'
    assert hub.main([str(ckpt), '--model', 'cct_7_3x1_32', '--out', str(folder)]) == 0
    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    y = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(loaded(y), tuned(y))


def test_bad_arguments(official, tmp_path):
    model, path, _, _ = official
    with pytest.raises(ValueError, match='model_name'):
        export_to_hub(path, tmp_path / 'x')
    with pytest.raises(ValueError, match='10 label names'):
        export_to_hub(model, tmp_path / 'x', label_names=['a', 'b'])
    with pytest.raises(TypeError, match='timm_cct model or a checkpoint path'):
        export_to_hub(torch.nn.Linear(2, 2), tmp_path / 'x')
    with pytest.raises(ValueError, match='org/name'):
        export_to_hub(model, tmp_path / 'x', repo_id='no-slash')
    with pytest.raises(ValueError, match='does not match'):
        export_to_hub(model, tmp_path / 'x', model_name='cct_2_3x2_32')


def test_refuses_a_folder_holding_other_files(official, tmp_path):
    model, _, _, _ = official
    folder = tmp_path / 'mine'
    folder.mkdir()
    (folder / 'README.md').write_text('my own notes')
    (folder / 'config.json').write_text('{"mine": 1}')
    with pytest.raises(ValueError, match='already holds files'):
        export_to_hub(model, folder)
    assert (folder / 'README.md').read_text() == 'my own notes'
    assert (folder / 'config.json').read_text() == '{"mine": 1}'
    (tmp_path / 'file').write_text('x')
    with pytest.raises(ValueError, match='is a file'):
        export_to_hub(model, tmp_path / 'file')


def test_overwrite_replaces_only_its_files_and_uploads_only_them(official, tmp_path, monkeypatch):
    model, _, _, _ = official
    folder = tmp_path / 'mine'
    folder.mkdir()
    (folder / 'README.md').write_text('old card')
    (folder / 'secret.txt').write_text('keep me out of the upload')
    sent = []

    class FakeApi:
        def create_repo(self, repo_id, private=False, exist_ok=False):
            pass

        def upload_folder(self, repo_id, folder_path, allow_patterns=None, **kwargs):
            sent.append(sorted(allow_patterns))

    monkeypatch.setattr(hub, 'HfApi', FakeApi)
    export_to_hub(model, folder, repo_id='someorg/x', overwrite=True)
    assert (folder / 'secret.txt').read_text() == 'keep me out of the upload'
    assert 'hf-hub:someorg/x' in (folder / 'README.md').read_text()
    assert sent == [['README.md', 'config.json', 'model.safetensors']]


def test_failed_upload_says_the_folder_is_ready(official, tmp_path, monkeypatch):
    model, _, _, _ = official

    class OfflineApi:
        def create_repo(self, *args, **kwargs):
            raise ConnectionError('Name or service not known')

    monkeypatch.setattr(hub, 'HfApi', OfflineApi)
    with pytest.raises(hub.UploadError, match=r'is written and ready; upload it later with `hf upload someorg/x'):
        export_to_hub(model, tmp_path / 'up', repo_id='someorg/x')
    assert sorted(p.name for p in (tmp_path / 'up').iterdir()) == ['README.md', 'config.json', 'model.safetensors']


def _cli_error(argv, capsys):
    assert hub.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('python -m timm_cct.hub: error:')
    return err


def test_command_line_errors_are_one_line(official, tmp_path, capsys, monkeypatch):
    _, path, _, _ = official
    base = [str(path), '--model', 'cct_7_3x1_32', '--out', str(tmp_path / 'o')]
    assert '--result expects NAME=VALUE' in _cli_error(base + ['--result', 'top1'], capsys)
    assert '--result top1 is given more than once' in _cli_error(
        base + ['--result', 'top1=1', '--result', 'top1=2'], capsys)
    assert 'no such file' in _cli_error(base + ['--labels', str(tmp_path / 'missing.txt')], capsys)
    (tmp_path / 'two.txt').write_text('a\nb\n')
    assert 'Expected 10 label names' in _cli_error(base + ['--labels', str(tmp_path / 'two.txt')], capsys)
    (tmp_path / 'bin.yaml').write_bytes(bytes(range(256)))
    assert 'not a UTF-8 JSON/YAML file' in _cli_error(base + ['--recipe', str(tmp_path / 'bin.yaml')], capsys)
    assert 'no such file' in _cli_error(base + ['--recipe', str(tmp_path / 'missing.yaml')], capsys)
    assert "--model 'nope' is not a Compact Transformer" in _cli_error(
        [str(path), '--model', 'nope', '--out', str(tmp_path / 'o')], capsys)
    assert 'no such checkpoint file' in _cli_error(
        [str(tmp_path / 'missing.pth'), '--model', 'cct_7_3x1_32', '--out', str(tmp_path / 'o')], capsys)
    assert "--repo-id expects 'org/name'" in _cli_error(base + ['--repo-id', 'noslash'], capsys)
    with pytest.raises(SystemExit) as e:
        hub.main([str(path), '--out', str(tmp_path / 'o')])
    assert e.value.code == 2 and capsys.readouterr().err.count('\n') == 1
    assert not (tmp_path / 'o').exists()  # nothing written for any of these

    (tmp_path / 'o').mkdir()
    (tmp_path / 'o' / 'README.md').write_text('mine')
    assert '--overwrite' in _cli_error(base, capsys)
    assert (tmp_path / 'o' / 'README.md').read_text() == 'mine'

    class OfflineApi:
        def create_repo(self, *args, **kwargs):
            raise OSError('offline')

    monkeypatch.setattr(hub, 'HfApi', OfflineApi)
    folder = tmp_path / 'up'
    err = _cli_error([str(path), '--model', 'cct_7_3x1_32', '--out', str(folder), '--repo-id', 'me/x'], capsys)
    assert 'is written and ready' in err and (folder / 'model.safetensors').is_file()
