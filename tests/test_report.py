"""The HTML report: one self-contained file with embedded PNGs, model text always escaped (a planted completion holding
markup shows as text), the `mmreason report` command, train()'s report hook, and a headless-Chromium load check."""

from __future__ import annotations

import base64
import io
import logging
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from small_run import build_small_run
from typer.testing import CliRunner

from mmreason.cli import app
from mmreason.runs import store
from mmreason.runs.report import clip_multiline, esc, write_report
from mmreason.train.stages import write_run_report

PLANTED = "<script>document.title='pwned'</script><img src=x onerror=alert(1)>"
PLANTED_THINK = "<think>see <b onmouseover=alert(2)>bold</b></think><answer>2</answer>"
IMG_RE = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return build_small_run(tmp_path_factory.getbasetemp() / "small-run")


@pytest.fixture(scope="module")
def planted_run(run_dir, tmp_path_factory) -> Path:
    """A copy of the run whose store holds hostile completions, prompt and sample id, with high rewards so that
    they show among the best samples (one is a real sample, so it is drawn too)."""
    copy = tmp_path_factory.mktemp("planted") / "small"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("checkpoints", "report.html"))
    real = store.read(copy, stage="grpo-0").drop_duplicates("sample_id")
    first, second = ({k: r[k] for k in store.REQUIRED_FIELDS} for r in real.head(2).to_dict("records"))
    rows = [
        {**first, "group_id": 0, "completion_index": 0, "completion": PLANTED, "reward_total": 9.0},
        {
            **second,
            "group_id": 1,
            "completion_index": 0,
            "completion": PLANTED_THINK,
            "reward_total": 8.0,
            "prompt": "<iframe src=javascript:alert(3)></iframe>",
        },
        {
            **first,
            "group_id": 2,
            "completion_index": 0,
            "completion": PLANTED,
            "reward_total": 7.0,
            "sample_id": "<svg onload=alert(4)>",
        },
    ]
    store.RolloutStore(copy).append(rows, "grpo-0", 99)
    return copy


@pytest.fixture(scope="module")
def page(planted_run, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("report") / "report.html"
    path = write_report(planted_run, out)
    return path, path.read_text(encoding="utf-8")


def test_train_writes_the_report_at_the_end_of_a_run(run_dir):
    text = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "<h2>Held-out metrics</h2>" in text and "<h2>Evaluation generations</h2>" in text


def test_report_is_one_self_contained_file(page):
    path, text = page
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # no temp file or asset folder left
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    images = IMG_RE.findall(text)
    assert len(images) >= 5  # reward curves, training curves, group spread, drawn samples
    for data in images:
        Image.open(io.BytesIO(base64.b64decode(data))).verify()  # each is a whole PNG
    # nothing is fetched from elsewhere: every src is a data URI; no stylesheet, script, frame or font links
    assert re.findall(r'src="(?!data:image/png;base64,)', text) == []
    for pattern in ("<link", "<script", "<iframe", "@import", "url(", "http://", "https://"):
        assert pattern not in text.lower(), pattern


def test_report_sections(page):
    _, text = page
    for heading in ("Run", "Held-out metrics", "Training curves", "Samples", "Evaluation generations"):
        assert f"<h2>{heading}</h2>" in text
    for sub in ("Best completions", "Worst completions", "Most improved samples", "Reward per step"):
        assert sub in text
    assert "<h4>reasoning</h4>" in text and "<h4>answer</h4>" in text


def test_planted_markup_shows_as_text(page):
    _, text = page
    assert esc(PLANTED) in text
    assert "&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in text
    assert "&lt;b onmouseover=alert(2)&gt;bold&lt;/b&gt;" in text  # the reasoning, split from the answer
    assert "&lt;iframe src=javascript:alert(3)&gt;" in text
    assert "&lt;svg onload=alert(4)&gt;" in text  # an unknown sample id: in the meta line and the no-picture note
    # no tag of the page carries an event handler or a javascript: URL
    assert re.search(r"<[^>]*\bon[a-z]+\s*=", text) is None
    assert re.search(r"<[^>]*javascript:", text) is None
    for raw in ("<script", "<img src=x", "<b onmouseover", "<svg", "<iframe"):
        assert raw not in text


@pytest.mark.parametrize(
    "value, expected",
    [
        ("<a href='x'>", "&lt;a href=&#x27;x&#x27;&gt;"),
        ('"quoted" & more', "&quot;quoted&quot; &amp; more"),
        ("bell\x07 nul\x00 cr\r tab\t nl\n", "bell\u2407 nul\u2400 cr\u240d tab\t nl\n"),
        ("unicode ☃ é 中", "unicode ☃ é 中"),
        (3, "3"),
    ],
)
def test_esc(value, expected):
    assert esc(value) == expected


@pytest.mark.parametrize(
    "text, limit, expected",
    [
        ("line one\nline two", 100, "line one\nline two"),
        ("line one\nline two", 10, "line one\nl\n… (7 more characters)"),
        ("", 0, ""),
    ],
)
def test_clip_multiline_keeps_line_breaks_and_counts_the_cut(text, limit, expected):
    assert clip_multiline(text, limit) == expected


def test_report_of_a_run_that_has_written_nothing_yet(run_dir, tmp_path):
    """Right after `mmreason train` starts there is a config but no metrics or rollouts: the page says so."""
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    for name in ("config.yaml", "run.json"):
        shutil.copy(run_dir / name, fresh / name)
    text = write_report(fresh).read_text(encoding="utf-8")
    for note in ("no evaluation in metrics.jsonl", "no sample improved", "no evaluation generations stored"):
        assert note in text
    assert len(IMG_RE.findall(text)) == 4  # the four figures, each saying there is nothing to plot yet


def test_report_command(planted_run, tmp_path):
    out = tmp_path / "sub" / "r.html"
    result = CliRunner().invoke(app, ["report", str(planted_run), "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert out.is_file() and "r.html" in result.output


def test_report_command_on_a_folder_that_is_not_a_run(tmp_path):
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code != 0 and "not a run directory" in str(result.exception)


def test_a_report_failure_never_fails_the_run(run_dir, monkeypatch, caplog):
    def broken(*_args, **_kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("mmreason.runs.report.write_report", broken)
    with caplog.at_level(logging.WARNING, logger="mmreason.train.stages"):
        assert write_run_report(run_dir) is None
    assert "could not write the report" in caplog.text and "disk full" in caplog.text


def _chromium(args: list[str], timeout: float = 60) -> tuple[str, str]:
    """Run headless Chromium; a page that blocks (e.g. an alert() dialog) fails instead of hanging the suite."""
    proc = subprocess.Popen(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"chromium did not finish in {timeout} s: the page blocks (a script dialog?)")
    return out, err


def test_report_loads_in_headless_chromium(page, tmp_path):
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium); the browser check needs it")
    path, text = page
    url = path.resolve().as_uri()
    dom, err = _chromium(["--dump-dom", url])
    assert "<title>mmreason report: small</title>" in dom and "pwned" not in dom.split("</title>")[0]
    assert dom.count("<img ") == text.count("<img ")
    shot = tmp_path / "shot.png"
    _, err2 = _chromium([f"--screenshot={shot}", "--window-size=1200,3000", url])
    for log_text in (err, err2):
        assert "Uncaught" not in log_text and "Not allowed to load" not in log_text
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 3000)
    # the plots and drawn samples are there: many colours, not a blank or text-only page
    assert len(image.getcolors(maxcolors=1 << 20) or []) > 500
