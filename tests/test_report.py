"""report.html: written by train (and compare), references only files that exist, and renders in a browser with the
table and every image loaded."""

import html
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_overrides
from foveal.analysis.report import running_mean, screenshot, write_report
from foveal.analysis.verdict import verdict
from foveal.cli import main
from foveal.config import load_config
from foveal.train.loop import train

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


class Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]


def references(page: Path) -> tuple[list[str], list[str]]:
    parser = Refs()
    parser.feed(page.read_text())
    return parser.refs, parser.tags


@pytest.fixture(scope="module")
def run(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("report") / "run"
    over = tiny_overrides(**{"train.steps": 3, "train.report_clips": 2})
    cfg = load_config("tiny", overrides=[*over, f"out_dir={out}", f"cache_dir={cache_dir}"])
    train(cfg)
    write_report(out)  # what `foveal train` does after training
    return out


def test_train_writes_a_report_that_references_only_existing_files(run):
    page = run / "report.html"
    refs, tags = references(page)
    assert tags.count("table") == 2  # summary + held-out statistics
    images = [r for r in refs if r.endswith((".png", ".gif"))]
    assert "report/ratio.png" in images and "report/loss.png" in images
    assert {"viz/synthetic-0.gif", "viz/synthetic-1.png"} <= set(images)  # the gallery: two held-out clips
    for ref in refs:
        assert not re.match(r"[a-z]+:", ref), f"{ref}: the report must open offline"
        assert (run / ref).is_file(), f"report.html references {ref}, which does not exist"
    text = page.read_text()
    results = json.loads((run / "results.json").read_text())
    assert f"{results['final_ratio']:.4f}" in text and f"{results['heldout_ratio']:.4f}" in text


def test_compare_folder_report_links_into_each_head_and_reuses_their_gallery(run, tmp_path):
    """A compare folder: head folders beside summary.json; the gallery each head's own report drew is reused."""
    cmp = tmp_path / "cmp"
    for head in ("film", "mlp"):
        shutil.copytree(run, cmp / head)  # copy2 keeps the checkpoint's mtime, so its gallery stamp still holds
    (cmp / "summary.json").write_text(json.dumps([{"head": "mlp"}, {"head": "film"}]))
    before = (cmp / "film" / "viz" / "synthetic-0.png").stat().st_mtime_ns
    page = write_report(cmp)
    assert (cmp / "film" / "viz" / "synthetic-0.png").stat().st_mtime_ns == before  # reused, not redrawn
    refs, _ = references(page)
    assert "film/viz/synthetic-0.gif" in refs and "mlp/viz/synthetic-1.png" in refs
    for ref in refs:
        assert (cmp / ref).is_file(), ref
    text = page.read_text()
    assert text.index("<h3>mlp</h3>") < text.index("<h3>film</h3>")  # summary.json's order


def test_report_command_rewrites_the_report(run, capsys):
    (run / "report.html").unlink()
    assert main(["report", str(run)]) == 0
    assert (run / "report.html").is_file() and "wrote" in capsys.readouterr().out
    assert main(["report", str(run.parent / "nothing")]) == 1


CHECK = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  const broken = images.filter((i) => !(i.complete && i.naturalWidth > 0)).map((i) => i.getAttribute("src"));
  document.body.dataset.images = images.length;
  document.body.dataset.broken = JSON.stringify(broken);
  document.body.dataset.rows = document.querySelectorAll("table.summary tbody tr").length;
});
</script>"""


def render(page: Path) -> dict:
    """Load page (with a probe script added, in a copy beside it) in headless Chromium; what the probe saw."""
    probe = page.with_name("probe.html")
    probe.write_text(page.read_text().replace("</body>", CHECK + "</body>"))
    dom = subprocess.run(
        [shutil.which("chromium"), *CHROMIUM_FLAGS, "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    body = re.search(r"<body([^>]*)>", dom)
    assert body, f"chromium returned no page: {dom[:300]!r}"
    attrs = dict(re.findall(r'data-(\w+)="([^"]*)"', body.group(1)))
    assert attrs, "the probe script did not run"
    return {"images": int(attrs["images"]), "broken": json.loads(html.unescape(attrs["broken"])), "rows": attrs["rows"]}


def test_report_renders_in_chromium_with_every_image(run, tmp_path):
    if shutil.which("chromium") is None:
        pytest.skip("chromium not installed: apt-get install chromium chromium-driver")
    seen = render(run / "report.html")
    assert seen["broken"] == []
    assert seen["images"] >= 5  # ratio, loss, per-frame, two gallery clips (gif + png each)
    assert seen["rows"] == "1"
    (run / "viz" / "synthetic-0.gif").rename(run / "viz" / "gone.gif")  # the probe does catch a broken image
    try:
        assert render(run / "report.html")["broken"] == ["viz/synthetic-0.gif"]
    finally:
        (run / "viz" / "gone.gif").rename(run / "viz" / "synthetic-0.gif")


def fake_result(ratio, lo, hi, h_other=(0.01, 0.02)):
    controls = {"fine": {"h_other_minus_loss": {"value": sum(h_other) / 2, "ci": list(h_other)}}}
    return {"ratio_kind": "recon", "heldout": {"recon": {"ratio": ratio, "ratio_ci": [lo, hi]}, "controls": controls}}


@pytest.mark.parametrize(
    "learned, oracle, says",
    [
        ((1.2, 1.1, 1.3), (1.5, 1.4, 1.6), ["beats the static look", "detects a planted effect"]),
        ((0.9, 0.85, 0.95), (1.5, 1.4, 1.6), ["do worse than the static look", "detects a planted effect"]),
        ((1.0, 0.99, 1.01), (1.01, 0.98, 1.04), ["no effect of looking", "no headroom", "says nothing"]),
        ((1.0, 0.99, 1.01), None, ["no effect of looking", "No oracle-look model", "cannot tell"]),
    ],
)
def test_verdict_reads_the_intervals(learned, oracle, says):
    results = {"film": fake_result(*learned)}
    looks = {"film": "learned"}
    if oracle:
        results["film-oracle"], looks["film-oracle"] = fake_result(*oracle), "oracle"
    text = verdict(results, looks)
    assert all(s in text for s in says), text
    assert "ignore the video" not in text
    assert "ignore the video" in verdict({"film": fake_result(*learned, h_other=(-0.01, 0.02))}, looks)


def test_compare_report_shows_the_verdict_and_summary_md_tables_held_out_in_bold(run, tmp_path):
    cmp = tmp_path / "cmp"
    shutil.copytree(run, cmp / "film")
    (cmp / "summary.md").write_text(
        "# title\n\n**Does looking pay?**\n\n| Head | Shuffled looks |\n|---|---|\n| film | 0.9948 |\n"
    )
    text = write_report(cmp, gallery_clips=0).read_text()
    assert "<h2>Verdict</h2>" in text and "No oracle-look model was trained" in text
    assert "<th>Shuffled looks</th>" in text and "<td>0.9948</td>" in text and "<h1>title" not in text
    held = json.loads((run / "results.json").read_text())["heldout_ratio"]
    assert f"<b>{held:.4f}</b>" in text


def test_report_screenshot_draws_the_page(run, tmp_path):
    if shutil.which("chromium") is None:
        pytest.skip("chromium not installed: apt-get install chromium chromium-driver")
    png = screenshot(run / "report.html", tmp_path / "shot.png", width=800, height=1200)
    pixels = np.asarray(Image.open(png).convert("L"), dtype=float)
    assert pixels.shape == (1200, 800) and pixels.std() > 10  # drawn, not a blank page


def test_running_mean_is_centred_on_its_step():
    """A step from 0 to 1 at step 50 is half-way at step 50 in the curve, whatever the window; a constant stays."""
    values = [0.0] * 50 + [1.0] * 50
    for k in (5, 9, 20):
        curve = running_mean(values, k)
        assert len(curve) == 100 and curve[0] == 0.0 and curve[-1] == 1.0
        crossing = next(i for i, v in enumerate(curve) if v >= 0.5)
        assert abs(crossing - 50) <= 1, (k, crossing)
    assert running_mean([2.0] * 7, 4) == [2.0] * 7
