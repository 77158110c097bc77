"""`sweeper report --pdf`: report.pdf beside report.md, printed offline by headless Chromium.

The Markdown is turned into one HTML page (markdown-it-py, which rich already depends on: tables,
images, the <details> blocks opened so that the PDF shows their tables), written beside report.md
so that the figures' relative paths resolve, and printed with Chromium's --print-to-pdf. Nothing
is fetched from the network: the page has no external styles or scripts.
"""

from __future__ import annotations

import html
import os
import subprocess
import tempfile
from pathlib import Path

from sweeper.errors import UsageError
from sweeper.views.mlflow_shot import find_chromium

# Print styles: A4, figures no wider than the page, tables that fit (small type, wrapped cells).
STYLE = """
@page { size: A4; margin: 14mm 12mm; }
body { font-family: "DejaVu Sans", "Liberation Sans", Arial, sans-serif; font-size: 10pt; line-height: 1.4;
       color: #111; }
h1 { font-size: 18pt; } h2 { font-size: 14pt; border-bottom: 1px solid #999; margin-top: 1.6em; }
h3 { font-size: 12pt; } h4 { font-size: 10.5pt; }
img { max-width: 100%; page-break-inside: avoid; }
table { border-collapse: collapse; font-size: 7.5pt; margin: 0.6em 0; page-break-inside: auto; }
th, td { border: 1px solid #bbb; padding: 2px 4px; vertical-align: top; overflow-wrap: anywhere; }
th { background: #eee; overflow-wrap: normal; } tr { page-break-inside: avoid; }  /* headers break between words only */
code { font-size: 8.5pt; } details > summary { font-weight: bold; }
"""


def render_html(markdown_text: str, title: str) -> str:
    """The report as one self-contained HTML page (figures by their relative paths)."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": True}).enable("table")
    body = md.render(markdown_text).replace("<details>", "<details open>")
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>\n{body}</body></html>\n"
    )


def write_pdf(report_md: Path, pdf: Path | None = None) -> Path:
    """Print report_md (with its figures) to pdf (default: report.pdf beside it); UsageError when it cannot."""
    chromium = find_chromium()
    if chromium is None:
        raise UsageError(
            "--pdf needs Chromium to print the report, and it was not found (or set SWEEPER_CHROMIUM). "
            "On Debian or Ubuntu: apt-get install chromium. Or leave out --pdf."
        )
    pdf = pdf or report_md.with_suffix(".pdf")
    text = report_md.read_text()
    title = next((line[2:].strip() for line in text.splitlines() if line.startswith("# ")), report_md.stem)
    page = report_md.with_name(f".{report_md.stem}.print.html")  # beside it: the figures' paths resolve
    page.write_text(render_html(text, title))
    try:
        with tempfile.TemporaryDirectory(prefix="sweeper-pdf-") as profile:
            args = [
                chromium,
                "--headless",
                "--disable-gpu",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--no-pdf-header-footer",
                "--virtual-time-budget=10000",  # page time for the images to load
                f"--print-to-pdf={pdf}",
                page.resolve().as_uri(),
            ]
            if hasattr(os, "geteuid") and os.geteuid() == 0:
                args.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox on
            pdf.unlink(missing_ok=True)
            try:
                done = subprocess.run(args, capture_output=True, text=True, timeout=300)
            except subprocess.TimeoutExpired as exc:
                raise UsageError(f"Chromium did not print the PDF within {exc.timeout:g} s") from None
    finally:
        page.unlink(missing_ok=True)
    if not pdf.is_file() or pdf.stat().st_size == 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise UsageError(f"Chromium wrote no PDF (exit {done.returncode}):\n  " + "\n  ".join(tail))
    return pdf
