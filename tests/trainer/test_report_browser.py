"""report.html as a reader sees it: a real (tiny) training run's page opened in headless Chromium with no network,
screenshotted, and its rendered elements checked: the charts are drawn, with a size on the page, and nothing was
fetched.

Chromium is Debian's `chromium` package, which hack/tools.sh installs (with fonts-liberation); the test runs
hack/tools.sh when it is missing and fails, never skips, when it is still missing.
"""
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from kubetune.trainer.loop import train
from tests.trainer.conftest import chat_rows, settings, write_jsonl
from tests.trainer.test_report import parse
from tests.trainer.test_train import make_job

ROOT = Path(__file__).resolve().parents[2]
WIDTH, HEIGHT = 1280, 4000  # the whole page at the report's max-width, down to the spec
# No network at all: every host name resolves to nothing, and anything that got past that would go to a proxy on
# the discard port (where nothing listens). Plus: none of Chromium's own background fetches.
OFFLINE = ["--headless", "--no-sandbox", "--disable-gpu", "--proxy-server=127.0.0.1:9",
           "--host-resolver-rules=MAP * ~NOTFOUND", "--disable-background-networking", "--disable-component-update",
           "--disable-default-apps", "--disable-sync", "--no-first-run", "--hide-scrollbars"]
# What each chart draws its data with (report.py's colours): a chart that did not render lacks its colour.
LINE_COLOURS = {"training loss": (0x4C, 0x72, 0xB0), "validation loss": (0xDD, 0x84, 0x52),
                "learning rate": (0x55, 0xA8, 0x68), "zero line of the comparison": (0xC4, 0x4E, 0x52)}
# Appended to a copy of the page: after load it writes what the browser laid out and fetched into the DOM, which
# --dump-dom prints. The page itself has no script; the screenshot is of the page as written.
PROBE = """<script>
window.addEventListener("load", () => {
  const box = e => { const r = e.getBoundingClientRect(); return [Math.round(r.width), Math.round(r.height)]; };
  const out = {
    charts: Object.fromEntries([...document.querySelectorAll("figure")].map(f => [f.id, {
      svg: box(f.querySelector("svg")), paths: f.querySelectorAll("svg path, svg use").length}])),
    tables: Object.fromEntries([...document.querySelectorAll("table[id]")].map(t => [t.id, {
      headers: [...t.querySelectorAll("th")].map(h => h.textContent.trim()),
      rows: t.querySelectorAll("tr").length, box: box(t)}])),
    verdict: (document.querySelector(".verdict") || {}).textContent || null,
    spec: box(document.getElementById("spec-yaml")),
    fetched: performance.getEntriesByType("resource").map(r => r.name),
  };
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


@pytest.fixture(scope="module")
def chromium() -> str:
    """The chromium binary ($KUBETUNE_CHROMIUM, else Debian's on PATH); hack/tools.sh installs it when missing."""
    found = os.environ.get("KUBETUNE_CHROMIUM") or shutil.which("chromium")
    if not found:
        done = subprocess.run([ROOT / "hack" / "tools.sh"], capture_output=True, text=True, timeout=1800)
        found = shutil.which("chromium")
        assert found, ("chromium is missing and hack/tools.sh did not install it (it installs Debian's chromium "
                       f"package; or set KUBETUNE_CHROMIUM): rc {done.returncode}\n{done.stderr[-3000:]}")
    return found


def browse(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([chromium, *OFFLINE, f"--user-data-dir={profile}", *args], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_the_report_of_a_run_renders_offline_in_chromium(tmp_path, tiny_model, chromium):
    from PIL import Image

    job = make_job(tmp_path, tiny_model,
                   dataset={"test": write_jsonl(tmp_path / "data/test.jsonl", chat_rows(16, seed=3))},
                   promotion={"destination": f"file://{tmp_path}/models/bot/", "beatChampion": False})
    summary = train(job, "run-1", settings(tmp_path))
    page = tmp_path / "out/run-1/report.html"
    html = page.read_text()
    # Nothing on the page can reach the network: no attribute that fetches, no script, no stylesheet, no CSS URL.
    parsed = parse(html)
    assert parsed.fetching == [] and "script" not in parsed.tags and "link" not in parsed.tags
    # The only URLs are names, not addresses: XML namespaces and the type in matplotlib's RDF metadata block.
    urls = re.findall(r'([\w:-]+)="(https?://[^"]*)"', html)
    assert len(urls) == html.count("http://") + html.count("https://")
    assert {name for name, _ in urls} <= {"xmlns", "xmlns:xlink", "xmlns:rdf", "xmlns:cc", "xmlns:dc", "rdf:resource"}

    shot = tmp_path / "report.png"
    browse(chromium, tmp_path / "profile-shot", f"--window-size={WIDTH},{HEIGHT}", f"--screenshot={shot}",
           page.as_uri())
    image = Image.open(shot)
    assert image.format == "PNG" and image.size == (WIDTH, HEIGHT)
    pixels = image.convert("RGB")
    colours = pixels.getcolors(WIDTH * HEIGHT)
    assert len(colours) > 50, f"a blank page: {len(colours)} colours"
    # Each chart's data is on screen: its line colour covers more than a few anti-aliased pixels.
    counts = {rgb: n for n, rgb in colours}
    for what, rgb in LINE_COLOURS.items():
        near = sum(n for c, n in counts.items() if max(abs(a - b) for a, b in zip(c, rgb)) <= 8)
        assert near > 100, f"the {what} is not on the screenshot ({near} pixels of #{bytes(rgb).hex()})"

    probed = tmp_path / "probed.html"
    probed.write_text(html.replace("</body>", PROBE + "</body>"))
    dom = browse(chromium, tmp_path / "profile-dom", f"--window-size={WIDTH},{HEIGHT}", "--dump-dom",
                 probed.as_uri()).stdout
    start = dom.index('<pre id="probe">') + len('<pre id="probe">')
    seen = json.loads(dom[start:dom.index("</pre>", start)].replace("&quot;", '"').replace("&amp;", "&"))
    assert seen["fetched"] == []  # the browser's own record: the page loaded nothing besides itself
    # The three charts are drawn (matplotlib's paths) and laid out at a readable size.
    assert set(seen["charts"]) == {"loss-chart", "lr-chart", "comparison-chart"}
    for chart, drawn in seen["charts"].items():
        width, height = drawn["svg"]
        assert width >= 400 and height >= 100 and drawn["paths"] >= 10, (chart, drawn)
    # The tables a reader reads, with their headers and a row per item.
    tables = seen["tables"]
    assert tables["checks"]["headers"] == ["Check", "Passed", "Value", "Low", "High", "Threshold", "Message"]
    assert tables["checks"]["rows"] == 1 + len(summary["promotion"]["checks"])
    assert seen["verdict"] == summary["promotion"]["verdict"]
    assert tables["comparison"]["headers"][:3] == ["Against", "Metric", "Baseline"]
    assert tables["test-metrics"]["rows"] == 1 + len([m for m in summary["test"] if not m.endswith(("Low", "High"))])
    errors = (tmp_path / "out/run-1/errors.jsonl").read_text().splitlines()
    assert tables["worst"]["headers"] == ["Input", "Reference", "Prediction", "Loss"]
    assert tables["worst"]["rows"] == 1 + min(len(errors), 10)
    assert tables["answers"]["headers"] == ["Prompt", "Reference", "Before", "After"] and tables["answers"]["rows"] > 1
    for table in tables.values():
        assert table["box"][0] > 0 and table["box"][1] > 0, table
    assert seen["spec"][1] > 200  # the spec's YAML is shown, tens of lines
    assert "please say" in dom and summary["specHash"] in dom
