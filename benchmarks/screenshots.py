"""The screenshots in docs/pages.md, taken in headless Chromium from a finished demo.

    python benchmarks/screenshots.py --demo runs/demo --out docs/pages

The demo's base and best adapter are evaluated on its held-out split (the run's views);
the eval page, the page of what changed and the studio (a held-out scene, its box drawn
with the mouse, its question asked) are rendered and saved as PNG.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.browser import FLAGS, chromium, screenshot  # noqa: E402


def cli(*args):
    subprocess.run([sys.executable, "-m", "mlx_opd.cli", *map(str, args)], check=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"})


def studio_shot(base: Path, run: Path, row: dict, png: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "mlx_opd.cli", "studio", "--model", base,
                               "--adapter", run, "--port", str(port)],
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/state", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        os.environ.setdefault("SE_OFFLINE", "true")
        opts = webdriver.ChromeOptions()
        opts.binary_location = chromium()
        for f in FLAGS + ["--window-size=1280,900"]:
            opts.add_argument(f)
        d = webdriver.Chrome(options=opts, service=Service("/usr/bin/chromedriver"))
        wait = WebDriverWait(d, 120)
        d.get(f"http://127.0.0.1:{port}/")
        wait.until(lambda d: d.find_element(By.ID, "status").get_attribute("data-state")
                   == "ready")
        d.find_element(By.ID, "file").send_keys(row["image"])
        canvas = wait.until(lambda d: d.find_element(By.ID, "canvas").is_displayed()
                            and d.find_element(By.ID, "canvas"))
        w, h = canvas.size["width"], canvas.size["height"]
        x1, y1, x2, y2 = row["box"]
        scale = w / row["width"]
        ActionChains(d).move_to_element_with_offset(canvas, int(x1 * scale) - w // 2,
                                                    int(y1 * scale) - h // 2) \
            .click_and_hold().move_by_offset(int((x2 - x1) * scale),
                                             int((y2 - y1) * scale)).release().perform()
        d.find_element(By.ID, "question").send_keys(row["question"])
        d.find_element(By.ID, "options").send_keys("\n".join(row["options"]))
        d.find_element(By.ID, "ask").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results td"))
        d.set_window_size(1280, 1100)
        d.save_screenshot(str(png))
        d.quit()
    finally:
        server.terminate()
        server.wait(timeout=30)


def main():
    from PIL import Image

    ap = argparse.ArgumentParser()
    ap.add_argument("--demo", required=True, type=Path)
    ap.add_argument("--out", default=ROOT / "docs" / "pages", type=Path)
    args = ap.parse_args()
    summary = json.loads((args.demo / "summary.json").read_text())
    base, run = args.demo / "cache" / Path(summary["base_model"]).name, args.demo / "run"
    held = args.demo / "data" / "heldout.jsonl"
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cli("eval", "--model", base, "--config", run, "--data", held, "--out", tmp / "before.json")
        cli("eval", "--model", base, "--adapter", run, "--data", held, "--out",
            tmp / "after.json")
        cli("eval", "--compare", tmp / "before.json", tmp / "after.json", "--out",
            tmp / "changes.json")
        screenshot(tmp / "after.html", args.out / "eval.png", 1280, 1100)
        screenshot(tmp / "changes.html", args.out / "changes.png", 1280, 1100)
        rows = [json.loads(x) for x in (tmp / "after.jsonl").read_text().splitlines()]
        fixed = json.loads((tmp / "before.jsonl").read_text().splitlines()[0])
        row = next((r for r in rows if r["view"] == "plain" and r["correct"]), fixed)
        row["width"] = Image.open(row["image"]).width
        studio_shot(base, run, row, args.out / "studio.png")
    print(f"wrote {args.out}/eval.png, changes.png, studio.png")


if __name__ == "__main__":
    main()
