"""The report pages every experiment writes (experiments/reporting.py)."""
from ctfgen.experiments.reporting import html_page


def test_html_page_is_titled_by_its_first_heading_and_escapes_text():
    page = html_page(["# ctfgen bench quality: CTF <vs> the baseline", "", "| a | b |", "|---|---|", "| 1 | `x` |"])
    assert "<title>ctfgen bench quality: CTF &lt;vs&gt; the baseline</title>" in page
    assert "<h1>ctfgen bench quality: CTF &lt;vs&gt; the baseline</h1>" in page
    assert "<tr><th>a</th><th>b</th></tr><tr><td>1</td><td><code>x</code></td></tr>" in page
    assert "<title>ctfgen report</title>" in html_page(["no heading"])
