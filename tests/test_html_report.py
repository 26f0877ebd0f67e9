"""`bench report --html`: one self-contained file with every table, figure, the run's metadata,
non-default settings and failed trials."""
from __future__ import annotations

import base64
from html.parser import HTMLParser

from bench.cli import main

from fake_runs import write_fake_run


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.captions, self.images, self.links, self.text = [], [], [], []
        self._in_caption = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self._in_caption = tag == "caption"
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        for key in ("href", "src"):
            if key in attrs and tag != "img":
                self.links.append(attrs[key])
        if tag == "script":
            self.links.append("script")

    def handle_endtag(self, tag):
        self._in_caption = False if tag == "caption" else self._in_caption

    def handle_data(self, data):
        if self._in_caption:
            self.captions.append(data)
        self.text.append(data)


def test_html_report_holds_every_table_and_figure_inline(tmp_path):
    write_fake_run(tmp_path, shots=(1, 4))
    out = tmp_path / "report.html"
    assert main(["report", "--results", str(tmp_path), "--run", "demo", "--format", "csv", "--html", str(out)]) == 0
    page = Page()
    page.feed(out.read_text(encoding="utf-8"))
    text = " ".join(page.text)
    assert [c for c in page.captions if "shot" in c] == [
        "1-shot top-1 (%), mean over seeds; gains [95% paired-bootstrap interval], * = excludes 0",
        "4-shot top-1 (%), mean over seeds; gains [95% paired-bootstrap interval], * = excludes 0"]
    assert {"metadata", "non-default settings", "failed trials"} <= set(page.captions)
    assert len(page.images) == 3  # accuracy curves, gains, masks
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert page.links == []  # nothing fetched from anywhere
    assert "coop+mask vs coop" in text and "ValueError: broken <image>" in text
    assert "mask.steps=7" in text and "tiny" in text and "bundled" in text
