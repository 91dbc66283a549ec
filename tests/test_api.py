"""The Python API as the README shows it (its block runs as written, in a scratch folder), and an exported model
that gives the trained model's outputs exactly."""

import re
import shutil
from pathlib import Path

import pytest
import torch

import foveal
from foveal.cli import main
from foveal.model.build import build_model
from foveal.model.foveated import Batch
from foveal.model.pretrained import PretrainedError

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readmes_api_example_runs_as_written(tmp_path, monkeypatch, capsys):
    block = re.search(r"<!-- api-example -->\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md (api example)", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == "True"  # the exported model captions as the trained one does
    assert (tmp_path / "runs" / "api-export" / "model.safetensors").is_file()
    assert all(word.isalpha() or word == "." for word in printed[-2].strip("[]'").split())  # a caption, in words


def test_an_exported_model_gives_identical_outputs(tiny_cfg, tmp_path):
    cfg = tiny_cfg(**{"model.head": "mlp"})
    foveal.fit(cfg)
    assert main(["export", cfg.out_dir, str(tmp_path / "exported")]) == 0
    trained, exported = foveal.load(cfg.out_dir), foveal.load(tmp_path / "exported")
    g = torch.Generator().manual_seed(0)
    frames = torch.randn(2, 4, 3, 64, 64, generator=g)
    batch = Batch(frames, targets=torch.randn(2, 4, *trained.net.target_shape, generator=g))
    with torch.no_grad():
        a, b = trained.net(batch), exported.net(batch)
    assert torch.equal(a.fine[-1].pred, b.fine[-1].pred) and torch.equal(a.coarse.tokens, b.coarse.tokens)
    state = exported.net.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in trained.net.state_dict().items())  # frozen backbones too


def test_an_exported_folder_that_does_not_fit_its_config_is_one_clear_error(tiny_cfg, tmp_path, capsys):
    cfg = tiny_cfg()
    foveal.fit(cfg)
    out = tmp_path / "exported"
    foveal.load(cfg.out_dir).save_pretrained(out)
    text = (out / "config.json").read_text().replace('"head": "film"', '"head": "mlp"')
    (out / "config.json").write_text(text)
    with pytest.raises(PretrainedError, match="does not fit"):
        foveal.load(out)
    assert main(["export", str(tmp_path / "nothing-here"), str(tmp_path / "x")]) == 1
    assert "foveal: error:" in capsys.readouterr().err


def test_an_exported_model_of_pretrained_backbones_loads_without_their_sources(tiny_cfg, tmp_path):
    """Backbones (and the VAE target) loaded from folders: the export holds their architecture (and the VAE's
    weights), so it loads and gives the same outputs after the source folders are gone."""
    base = tiny_cfg()
    model, tokenizer = build_model(base)
    sources = {"dino": model.encoder.dino, "llm": model.llm, "vae": model.target.build_vae()}
    for name, module in sources.items():
        module.save_pretrained(tmp_path / "sources" / name)
    cfg = tiny_cfg(**{f"model.{n}.source": str(tmp_path / "sources" / n) for n in sources})
    foveal.fit(cfg)
    trained = foveal.load(cfg.out_dir)
    trained.save_pretrained(tmp_path / "exported")
    g = torch.Generator().manual_seed(0)
    batch = Batch(torch.randn(2, 4, 3, 64, 64, generator=g), torch.randn(2, 4, *trained.net.target_shape, generator=g))
    with torch.no_grad():
        want = trained.net(batch).fine[-1].pred
    shutil.rmtree(tmp_path / "sources")
    exported = foveal.load(tmp_path / "exported")
    with torch.no_grad():
        assert torch.equal(exported.net(batch).fine[-1].pred, want)
    vae = exported.net.target.build_vae()
    assert all(torch.equal(p, q) for p, q in zip(vae.parameters(), sources["vae"].parameters()))
