"""The run report: self-contained, every section present, missing inputs named with their command."""
from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from pathgen.report import sections as S
from pathgen.report.html import build_report, json_html, write_report
from tests.report.fake_run import make_fake_run

HEADINGS = [h for _, h, _ in S.SECTIONS]


class Page(HTMLParser):
    """Collects what a self-containment check needs: tags, their resource attributes, headings, text."""

    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.resources: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.h2: list[str] = []
        self.sections: dict[str, str] = {}
        self._in_h2 = False
        self._section: str | None = None
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for k, v in attrs:
            if k in ("src", "href", "data", "action", "poster", "srcset") or (k == "style" and "url(" in (v or "")):
                self.resources.append((tag, k, v or ""))
        if tag == "h2":
            self._in_h2 = True
        if tag == "section":
            self._section = dict(attrs).get("id")
            self.sections[self._section] = ""

    def handle_endtag(self, tag):
        if tag == "h2":
            self._in_h2 = False

    def handle_data(self, data):
        if self._in_h2:
            self.h2.append(data.strip())
        if self._section is not None:
            self.sections[self._section] += data
        self.text.append(data)


def parse(html: str) -> Page:
    p = Page()
    p.feed(html)
    return p


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    return make_fake_run(tmp_path_factory.mktemp("run") / "RUN")


@pytest.fixture(scope="module")
def full_html(full_run) -> str:
    return write_report(full_run).read_text()


def test_report_is_self_contained(full_html):
    page = parse(full_html)
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    assert not re.search(r"url\(\s*['\"]?(?!data:)", full_html)  # no external CSS resources
    imgs = [v for t, k, v in page.resources if t == "img"]
    assert len(imgs) >= 8  # fidelity, training, forest, KM x3, coverage, heatmaps
    for tag, attr, value in page.resources:
        if tag == "a" and attr == "href":
            assert value.startswith("#"), f"external link {value}"
        else:
            assert value.startswith("data:image/png;base64,"), f"external resource {tag} {attr}={value[:60]}"
    from PIL import Image

    for v in imgs:  # every embedded figure decodes as a real PNG
        img = Image.open(io.BytesIO(base64.b64decode(v.split(",", 1)[1])))
        assert img.format == "PNG" and img.width >= 100


def test_every_section_is_present_and_filled(full_html):
    page = parse(full_html)
    assert page.h2 == HEADINGS
    assert "Missing:" not in full_html and "Could not render" not in full_html
    sec = page.sections
    # numbers from the real writers reach the page
    assert "per-gene Spearman (median)" in sec["generator"] and "baseline: ridge" in sec["generator"]
    assert "Cytokines and Growth Factors" in sec["generator"] and "overall" in sec["generator"]
    assert "slide+synth vs slide-only" in sec["predictor"] and "p (paired bootstrap)" in sec["predictor"]
    assert "slide-only" in sec["predictor"] and "multimodal" in sec["predictor"]
    assert "log-rank p" in sec["km"]
    assert "coverage" in sec["calibration"].lower()
    assert "age_band" in sec["fairness"] and "largest gap" in sec["fairness"]
    assert "CASE-00" in sec["heatmaps"]
    assert "patients" in sec["cohort"] and "female" in sec["cohort"] and "fold" in sec["cohort"]
    assert "torch" in sec["config"] and "quick" in sec["config"]


def test_missing_parts_say_what_and_which_command(tmp_path):
    run = make_fake_run(tmp_path / "RUN", parts=("cohort", "splits"))
    page = parse(build_report(run))
    assert page.h2 == HEADINGS  # every heading, even with nothing to show
    sec = page.sections
    expect = {
        "headline": ("metrics.json", "pathgen demo"),
        "generator": ("generator_eval/metrics.json", "pathgen evaluate-generator"),
        "predictor": ("evaluation/evaluation.json", "pathgen evaluate"),
        "km": ("evaluation/km_<arm>.png", "pathgen evaluate"),
        "calibration": ("conformal/metrics.json", "pathgen demo"),
        "fairness": ("fairness/fairness.json", "pathgen demo"),
        "heatmaps": ("heatmaps/index.json", "pathgen heatmap"),
        "config": ("config.json", "pathgen demo"),
    }
    for anchor, (what, command) in expect.items():
        assert "Missing:" in sec[anchor] and what in sec[anchor] and command in sec[anchor], anchor
    # the cohort section shows what it has and names only what it lacks (the feature files)
    assert "patients" in sec["cohort"] and sec["cohort"].count("Missing:") == 1
    assert "features/<slide_id>.h5" in sec["cohort"] and "pathgen embed" in sec["cohort"]


def test_empty_folder_and_broken_file_do_not_break_the_report(tmp_path):
    run = tmp_path / "RUN"
    (run / "generator_eval").mkdir(parents=True)
    (run / "generator_eval" / "metrics.json").write_text("{not json")
    page = parse(build_report(run))
    assert page.h2 == HEADINGS
    assert "Could not render" in page.sections["generator"] and "not valid JSON" in page.sections["generator"]
    with pytest.raises(FileNotFoundError, match="pathgen demo"):
        build_report(tmp_path / "nope")


def test_json_html_renders_unknown_schemas():
    out = json_html({"a": 1.23456, "nested": {"x": {"p": 0.5, "q": [1, 2]}, "y": {"p": 0.25}},
                     "rows": [{"k": 1, "v": None}, {"k": 2, "v": "b"}], "deep": {"l1": {"l2": {"l3": {"l4": {}}}}}})
    assert "1.235" in out and "<table" in out and "rows" in out and "0.250" in out
    assert json_html(None) == "–"


def test_cli_registered_and_writes(tmp_path):
    import argparse

    from pathgen.cli import COMMANDS
    from pathgen.pipelines import report

    assert COMMANDS["report"][0] == "pathgen.pipelines.report"
    run = make_fake_run(tmp_path / "RUN", parts=("headline", "config"))
    parser = argparse.ArgumentParser()
    report.add_arguments(parser)
    out = tmp_path / "r.html"
    assert report.main(parser.parse_args([str(run), "--out", str(out), "--max-heatmap-cases", "1"])) == 0
    html = out.read_text()
    assert html.startswith("<!DOCTYPE html>") and "slide+synth.c_index" in html
    assert report.main(parser.parse_args([str(run)])) == 0 and (run / "report.html").is_file()  # default path


def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium not installed (the HTML is parsed above instead)")
def test_headless_chromium_screenshot(tmp_path, full_run, full_html):
    html_path = full_run / "report.html"
    png = tmp_path / "shot.png"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--window-size=1280,2400", f"--screenshot={png}", html_path.resolve().as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    from PIL import Image

    import numpy as np

    img = np.asarray(Image.open(png).convert("L"))
    assert img.shape[0] >= 1000 and img.std() > 10  # not a blank page
