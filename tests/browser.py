"""Open a page in a real headless browser (Debian's chromium) and report what it shows after loading: the number of
images, how many failed to decode, and whether the page shows a Python error."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

CHECK = """<script>
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length;
  document.body.setAttribute('data-page-check', 'images=' + imgs.length + ';bad=' + bad);
});
</script>"""
ERROR = re.compile(r"Traceback \(most recent call last\)|\b[A-Z]\w*(?:Error|Exception): ")


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def open_page(page: Path, timeout: float = 120) -> dict:
    """Load ``page`` (a copy with a check script, beside it so relative links resolve) and read the checked DOM."""
    page = Path(page).resolve()
    probe = page.with_name(f".probe-{page.name}")
    text = page.read_text()
    probe.write_text(text.replace("</body>", CHECK + "</body>") if "</body>" in text else text + CHECK)
    try:
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                "--virtual-time-budget=15000", "--dump-dom", probe.as_uri()]
        res = subprocess.run([chromium(), *args], capture_output=True, text=True, timeout=timeout)
    finally:
        probe.unlink(missing_ok=True)
    m = re.search(r'data-page-check="images=(\d+);bad=(\d+)"', res.stdout)
    return {"loaded": m is not None, "images": int(m.group(1)) if m else 0, "bad_images": int(m.group(2)) if m else -1,
            "error_shown": bool(ERROR.search(res.stdout)), "dom_chars": len(res.stdout)}
