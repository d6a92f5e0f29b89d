"""Headless Chromium (Debian's package; `make test` installs it) for the page tests: the
DOM after the page's scripts ran, and screenshots."""

import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    exe = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                if shutil.which(n)), None)
    assert exe, "no Chromium: `make test` installs Debian's chromium (make browser)"
    return exe


def dump_dom(page: Path, fragment: str = "") -> str:
    """The page's DOM once its scripts ran (file URL, optional #fragment)."""
    with tempfile.TemporaryDirectory() as profile:
        p = subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", "--dump-dom",
                            Path(page).resolve().as_uri() + (f"#{fragment}" if fragment else "")],
                           capture_output=True, text=True, timeout=120, check=True)
    return p.stdout


def screenshot(page: Path, png: Path, width: int = 1280, height: int = 900) -> Path:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}",
                        f"--window-size={width},{height}", f"--screenshot={png}",
                        Path(page).resolve().as_uri()], capture_output=True, timeout=120,
                       check=True)
    return png


class Cards(HTMLParser):
    """The cards of a rendered page: data attributes, whether shown, and their section."""

    def __init__(self, dom: str):
        super().__init__()
        self.cards, self._section = [], None
        self.feed(dom)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if "grid" in classes:
            self._section = next((c for c in classes if c != "grid"), None), a.get("data-view")
        if "card" in classes:
            self.cards.append({**{k[5:]: v for k, v in a.items() if k.startswith("data-")},
                               "shown": "display: none" not in (a.get("style") or ""),
                               "section": self._section})

    def shown(self) -> list[dict]:
        return [c for c in self.cards if c["shown"]]
