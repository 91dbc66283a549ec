"""Configs that say what is wrong before any work (issue 14): every float spelling accepted, non-finite numbers
refused naming the key, YAML errors as one line with file, line and column, impossible shapes and too-small or
missing data caught before a run folder or a model exists."""

import pytest

from conftest import tiny_overrides
from foveal.cli import main
from foveal.config import ConfigError, load_config
from foveal.train.loop import train


def test_yaml_1_1_float_spellings_are_floats(tmp_path):
    assert load_config("tiny", overrides=["train.lr=3e-4"]).train.lr == 3e-4
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lr: 3e-4\n  backbone_lr: 1E-5\n  minutes: 2\n")
    cfg = load_config(None, path)
    assert (cfg.train.lr, cfg.train.backbone_lr, cfg.train.minutes) == (3e-4, 1e-5, 2.0)
    assert isinstance(cfg.train.minutes, float)


def test_cli_accepts_the_readmes_own_example(capsys):

    assert main(["config", "train.lr=3e-4"]) == 0
    assert "lr: 0.0003" in capsys.readouterr().out


@pytest.mark.parametrize("value", [".nan", "nan", "inf", "-.inf", "1e999"])
def test_non_finite_numbers_are_refused_naming_the_key(value):
    with pytest.raises(ConfigError, match="train.lr: must be a finite number"):
        load_config("tiny", overrides=[f"train.lr={value}"])
    with pytest.raises(ConfigError, match="data.synthetic.size_range.1.: must be a finite number"):
        load_config("tiny", overrides=[f"data.synthetic.size_range=[0.1, {value}]"])


@pytest.mark.parametrize(
    "text, where, what",
    [
        ("train:\n  lr: [1, 2\n", ":3:1", "YAML syntax error"),
        ("train:\n\tlr: 1\n", ":2:1", "YAML syntax error"),
        ("- train\n- model\n", ":1:1", "expected a mapping"),
    ],
)
def test_yaml_errors_name_file_line_and_column(tmp_path, capsys, text, where, what):

    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["config", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{path}{where}" in err[0] and what in err[0], err


@pytest.mark.parametrize(
    "override, message",
    [("train.lr=[1,", "override 'train.lr=\\[1,': the value does not parse at column"), ("train..lr=1", "empty part")],
)
def test_bad_overrides_are_one_line(capsys, override, message):

    assert main(["config", override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", overrides=[override])


def test_too_few_clips_for_one_batch_fails_before_the_model_is_built(tmp_path, monkeypatch, cache_dir):
    import foveal.train.loop as tr
    from foveal.data.export import write_synthetic

    manifest = write_synthetic(tmp_path / "three", videos=3, frames=4, size=32, codec="png")
    built = []
    monkeypatch.setattr(tr, "build_model", lambda *a, **k: built.append(1) or (_ for _ in ()).throw(AssertionError))
    cfg = load_config(
        "tiny",
        overrides=[
            *tiny_overrides(**{"data.heldout_clips": 1, "train.batch_size": 4, "data.train_clips": 0}),
            f"data.source={manifest}",
            "model.frame_size=32",
            f"out_dir={tmp_path / 'run'}",
            f"cache_dir={cache_dir}",
        ],
    )
    with pytest.raises(ConfigError, match=r"2 usable training clips .* fewer than one global batch \(train.batch_size"):
        tr.train(cfg)
    assert not built and not (tmp_path / "run").exists()


def test_missing_data_fails_before_the_run_folder_or_model(tmp_path, capsys):

    run = tmp_path / "run"
    assert main(["train", "--quiet", "--data", str(tmp_path / "missing.csv"), "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.csv does not exist" in err[0]
    assert not run.exists()


def test_the_replay_script_prints_one_line_per_case():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "reliability_cases.py"
    proc = subprocess.run(
        [sys.executable, str(script), "nan_config", "float", "yaml", "missing"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    rows = [ln for ln in proc.stdout.splitlines() if ln.endswith(("| PASS", "| FAIL"))]
    assert proc.returncode == 0 and len(rows) == 4 and all(r.endswith("| PASS") for r in rows), proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_a_frame_size_off_the_patch_grid_is_said_before_training(tiny_cfg, logs):
    cfg = tiny_cfg(**{"model.frame_size": 60, "model.vae.block_out_channels": "[32, 64, 64]", "train.steps": 1})
    train(cfg)
    assert "frame_size 60 is not a multiple of the encoder's patch size 8: the last 4 px" in logs()


def test_the_cache_is_the_users_unless_a_config_or_foveal_cache_says_otherwise(tmp_path, monkeypatch):
    """Like HF_HOME: $FOVEAL_CACHE, else the platform's user cache; never a folder relative to where one stands."""
    monkeypatch.delenv("FOVEAL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    cfg = load_config("tiny")
    assert cfg.cache_dir == "" and cfg.cache_path == tmp_path / "xdg" / "foveal"
    monkeypatch.setenv("FOVEAL_CACHE", str(tmp_path / "mine"))
    assert load_config("tiny").cache_path == tmp_path / "mine"
    assert load_config("tiny", overrides=[f"cache_dir={tmp_path / 'run'}"]).cache_path == tmp_path / "run"
    load_config("tiny").save(tmp_path / "c.yaml")  # a saved run names no machine's cache: it moves with the user
    assert "cache_dir: ''" in (tmp_path / "c.yaml").read_text()


@pytest.mark.parametrize(
    "argv, line",
    [
        (["compare", "--heads", ""], "--heads '': an empty name"),
        (["heads", "--latent", "4x32"], "--latent: expected CxSxS"),
        (["caption", "--checkpoint", "{tmp}/some.yaml", "--video", "synthetic:1"], "is a config, not a checkpoint"),
    ],
)
def test_bad_flags_get_one_line_naming_the_flag(tmp_path, capsys, argv, line):
    (tmp_path / "some.yaml").write_text("train:\n  lr: 1\n")
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) in (1, 2)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and line in err[0], err


def test_data_synth_needs_at_least_one_video(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["data", "synth", "--videos", "0", "--out", str(tmp_path / "d")])
    assert "--videos: must be >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
