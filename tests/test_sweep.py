"""`foveal compare --sweep KEY=V1,V2`: one comparison per point of the swept keys' grid, in out/<key>=<value>[,...]/,
tabulated as one row per (grid point, head) with a column per swept key; validated before anything trains."""

import csv
import json
import shutil

import pytest
import yaml

from conftest import tiny_overrides
from foveal.analysis.compare import planned_runs, sweep_points
from foveal.cli import main
from foveal.config import load_config, parse_sweep

# the smallest model and budget that still evaluates: one step of one micro-batch, 4 held-out clips
SMALL = {"train.steps": 1, "train.grad_accum": 1, "data.train_clips": 2, "data.heldout_clips": 4}
SMALL |= {"model.llm.num_layers": 1, "model.dino.num_layers": 1}
LR = ["train.lr=0.0001", "train.lr=0.0003"]  # the point folders of --sweep train.lr=1e-4,3e-4


def compare(out, *flags, cache_dir) -> int:
    base = ["compare", "--heads", "film", "--controls", "none", "--out", str(out)]
    return main([*base, *flags, *tiny_overrides(**SMALL), f"cache_dir={cache_dir}"])


@pytest.fixture(scope="module")
def swept(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("sweep") / "cmp"
    assert compare(out, "--sweep", "train.lr=1e-4,3e-4", "--quiet", cache_dir=cache_dir) == 0
    return out


def test_a_sweep_trains_a_folder_per_value_and_tabulates_the_swept_key(swept):
    runs = sorted(p.parent.relative_to(swept).as_posix() for p in swept.glob("**/results.json"))
    assert runs == [f"{point}/film" for point in LR]
    lrs = [yaml.safe_load((swept / point / "film" / "config.yaml").read_text())["train"]["lr"] for point in LR]
    assert lrs == [1e-4, 3e-4]  # each run's own config reproduces it
    rows = json.loads((swept / "summary.json").read_text())
    assert [(r["sweep"], r["head"]) for r in rows] == [({"train.lr": 1e-4}, "film"), ({"train.lr": 3e-4}, "film")]
    with open(swept / "summary.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames[:2] == ["train.lr", "head"]
        assert [line["train.lr"] for line in reader] == ["0.0001", "0.0003"]
    md = (swept / "summary.md").read_text()
    assert "| Head Type | train.lr | Steps |" in md and "Swept: train.lr = 0.0001, 0.0003" in md
    assert "| **film** | 0.0001 | 1 |" in md and "| **film** | 0.0003 | 1 |" in md
    assert "| Objective | Head | train.lr |" in md  # every table names the point of each row
    assert all(f"{point}/film" in (swept / "report.html").read_text() for point in LR)


def test_a_resumed_sweep_keeps_its_finished_runs(swept, cache_dir, logs):
    kept = (swept / LR[0] / "film" / "results.json").stat().st_mtime_ns
    (swept / LR[1] / "film" / "results.json").unlink()  # cut short after its last checkpoint
    logs()
    assert compare(swept, "--sweep", "train.lr=1e-4,3e-4", "--resume", cache_dir=cache_dir) == 0
    said = logs()
    assert f"{swept / LR[0] / 'film'}: finished earlier, kept" in said
    assert (swept / LR[0] / "film" / "results.json").stat().st_mtime_ns == kept  # not retrained
    assert json.loads((swept / LR[1] / "film" / "results.json").read_text())["steps"] == 1
    assert len(json.loads((swept / "summary.json").read_text())) == 2


def test_a_grid_of_two_keys_has_a_row_per_point_and_head(swept, tmp_path, cache_dir):
    """--summarize-only over a 2 x 2 grid whose folders hold (copies of) finished runs: the first key varies
    slowest, and each key is a column."""
    grid = ["--sweep", "train.lr=1e-4,3e-4", "--sweep", "model.predict=frame,delta"]
    out = tmp_path / "grid"
    for point in LR:
        for predict in ("frame", "delta"):
            shutil.copytree(swept / LR[0] / "film", out / f"{point},model.predict={predict}" / "film")
    assert compare(out, *grid, "--summarize-only", "--quiet", cache_dir=cache_dir) == 0
    rows = json.loads((out / "summary.json").read_text())
    expected = [{"train.lr": lr, "model.predict": p} for lr in (1e-4, 3e-4) for p in ("frame", "delta")]
    assert [r["sweep"] for r in rows] == expected
    md = (out / "summary.md").read_text()
    assert "| Head Type | train.lr | model.predict | Steps |" in md and "| **film** | 0.0003 | delta | 1 |" in md


def test_the_grid_is_every_combination_with_typed_values_and_folders(tmp_path):
    key, sizes = parse_sweep("data.synthetic.size_range=[0.1,0.2],[0.2,0.3]")  # commas inside a list are its own
    assert key == "data.synthetic.size_range" and sizes == [[0.1, 0.2], [0.2, 0.3]]
    points = sweep_points(load_config("tiny"), dict([parse_sweep("train.lr=1e-4,3e-4"), (key, sizes)]), tmp_path)
    names = [p.folder.name for p in points]
    assert names[:2] == [
        "train.lr=0.0001,data.synthetic.size_range=[0.1,0.2]",
        "train.lr=0.0001,data.synthetic.size_range=[0.2,0.3]",
    ]
    assert [p.cfg.train.lr for p in points] == [1e-4, 1e-4, 3e-4, 3e-4]  # typed: the YAML string '1e-4' is a float
    assert points[3].cfg.data.synthetic.size_range == [0.2, 0.3]
    runs = planned_runs(points[1].cfg, ["film", "mlp"], points[1].folder, 1, "none")
    assert [r.out_dir for r in runs] == [str(tmp_path / names[1] / h) for h in ("film", "mlp")]


@pytest.mark.parametrize(
    "flags, said",
    [
        (["--sweep", "train.lrr=1e-4,3e-4"], "--sweep train.lrr=1e-4: unknown key train.lrr; allowed keys here:"),
        (["--sweep", "train.lr=abc,3e-4"], "--sweep train.lr=abc: train.lr: expected a number, got 'abc'"),
        (["--sweep", "train.lr="], "--sweep 'train.lr=': an empty value"),
        (["--sweep", "train.lr=1e-4,,3e-4"], "an empty value; list one or more values"),
        (["--sweep", "train.lr"], "--sweep 'train.lr': expected KEY=V1,V2[,...]"),
        (["--sweep", "train.lr=1e-4", "--sweep", "train.lr=3e-4"], "--sweep train.lr is given twice"),
        (["--sweep", "train.lr=1e-4,0.0001"], "two grid points share the folder train.lr=0.0001"),
        (["--sweep", "model.head=film,mlp"], "--sweep model.head: the heads are chosen with --heads"),
        (  # one invalid combination stops the whole grid before anything trains
            ["--sweep", "train.fine_iterations=1,0", "--sweep", "train.coarse_weight=1,0"],
            "--sweep train.fine_iterations=0 train.coarse_weight=0: train.fine_iterations=0 (coarse-only)",
        ),
    ],
)
def test_a_bad_sweep_is_one_line_naming_the_flag_before_any_training(flags, said, tmp_path, capsys):
    assert main(["compare", "--out", str(tmp_path / "cmp"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("foveal: config error: --sweep") and said in err and "\n" not in err, err
    assert not (tmp_path / "cmp").exists()
