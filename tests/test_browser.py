"""The browser check itself can fail: a page with an image that does not decode and a Python traceback is caught."""

import pytest
from browser import chromium, open_page


@pytest.mark.skipif(chromium() is None, reason="no chromium on this machine")
def test_browser_check_sees_a_broken_image_and_a_traceback(tmp_path):
    good = tmp_path / "good.html"
    good.write_text("<html><body><img src='data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAAD"
                    "UlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=='><p>error bars</p></body></html>")
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><img src='missing.png'><pre>Traceback (most recent call last):\n"
                   "ValueError: x</pre></body></html>")
    g, b = open_page(good), open_page(bad)
    assert g == {**g, "loaded": True, "images": 1, "bad_images": 0, "error_shown": False}
    assert b["loaded"] and b["images"] == 1 and b["bad_images"] == 1 and b["error_shown"]
