"""`mlx-opd studio`, the real command, driven in a real browser (Debian's Chromium through
its chromedriver): a photo is opened, the box drawn with synthetic mouse events, the
question asked; the page's answers for the three views equal `mlx-opd compare`'s for the
same image, box and question, for the base and the adapter. A bad upload is a message on
the page, and the page goes on. It listens on loopback only."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlx_opd.cli import main

from .browser import FLAGS, chromium

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tiny.yaml"
DATA = ROOT / "examples" / "data" / "samples.jsonl"
IMAGE = ROOT / "examples" / "data" / "scene0.png"  # 320 x 240
OPTIONS = ["purple", "yellow", "red", "blue"]
QUESTION = "What is the colour of the small circle?"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> list[str]:
    """Local addresses (hex, as /proc/net/tcp writes them) listening on `port`."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if state == "0A" and int(p, 16) == port:
                out.append(addr)
    return out


@pytest.fixture(scope="module")
def run(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("studio") / "run"
    r = CliRunner().invoke(main, ["train", "--config", str(EXAMPLE), "--model",
                                  str(tiny_dir["qwen2_5_vl"]), "--data", str(DATA), "--out",
                                  str(out), "--max-steps", "2", "--set", "optim.lr=0.05"])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def studio(tiny_dir, run):
    """The command itself, in its own process, on a free loopback port."""
    port = _free_port()
    p = subprocess.Popen([sys.executable, "-m", "mlx_opd.cli", "studio", "--model",
                          str(tiny_dir["qwen2_5_vl"]), "--adapter", str(run), "--port", str(port)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}/"
    for _ in range(120):
        try:
            urllib.request.urlopen(url + "api/state", timeout=2)
            break
        except OSError:
            assert p.poll() is None, p.stdout.read()
            time.sleep(0.5)
    yield url, port
    p.terminate()
    p.wait(timeout=30)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager downloads nothing

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium()
    for f in FLAGS:
        opts.add_argument(f)
    opts.add_argument("--window-size=1280,1000")
    driver = webdriver.Chrome(options=opts, service=Service("/usr/bin/chromedriver"))
    yield driver
    driver.quit()


def _wait(driver, what, timeout=120):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(what)


def _ask(driver):
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "ask").click()
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#results td")
          or d.find_element(By.ID, "error").text)


def test_the_page_answers_as_compare_does(studio, browser, tiny_dir, run, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    url, port = studio
    assert _listening(port) and all(a in ("0100007F", "00000000000000000000000001000000")
                                    for a in _listening(port))  # 127.0.0.1 / ::1 only
    browser.get(url)
    _wait(browser, lambda d: d.find_element(By.ID, "status").get_attribute("data-state")
          == "ready")
    browser.find_element(By.ID, "file").send_keys(str(IMAGE))
    canvas = _wait(browser, lambda d: d.find_element(By.ID, "canvas").is_displayed()
                   and d.find_element(By.ID, "canvas"))
    w, h = canvas.size["width"], canvas.size["height"]
    assert (w, h) == (320, 240)  # shown at its own size: a canvas pixel is a photo pixel
    # drag from (84, 14) to (98, 28) in photo pixels (offsets are from the canvas centre)
    ActionChains(browser).move_to_element_with_offset(canvas, 84 - w // 2, 14 - h // 2) \
        .click_and_hold().move_by_offset(14, 14).release().perform()
    box = browser.find_element(By.ID, "box").get_attribute("value")
    x1, y1, x2, y2 = map(int, box.split(","))
    assert abs(x1 - 84) <= 1 and abs(y1 - 14) <= 1 and abs(x2 - 98) <= 1 and abs(y2 - 28) <= 1
    browser.find_element(By.ID, "question").send_keys(QUESTION)
    browser.find_element(By.ID, "options").send_keys("\n".join(OPTIONS))
    _ask(browser)
    assert browser.find_element(By.ID, "error").text == ""
    page = {(td.get_attribute("data-model"), td.get_attribute("data-view")):
            td.find_element(By.CLASS_NAME, "answer").text
            for td in browser.find_elements(By.CSS_SELECTOR, "#results td")}
    assert {v for _, v in page} == {"plain", "student", "teacher"}
    assert {m for m, _ in page} == {"base", "adapter"}
    assert browser.find_elements(By.CSS_SELECTOR, "#results .opt")  # option probabilities
    # the studio takes the adapter's run's views and pixels for both models (said on its
    # console), so the base is compared with the same --config
    for name, extra in (("base", ["--config", str(run)]), ("adapter", ["--adapter", str(run)])):
        r = CliRunner().invoke(main, ["compare", "--model", str(tiny_dir["qwen2_5_vl"]),
                                      "--image", str(IMAGE), "--question", QUESTION, "--box",
                                      box, "--options", ",".join(OPTIONS), "--json",
                                      str(tmp_path / f"{name}.json"), *extra])
        assert r.exit_code == 0, r.output
        cli = json.loads((tmp_path / f"{name}.json").read_text())
        for view, v in cli["views"].items():
            assert page[(name, view)] == v["answer"].strip(), (name, view)
    browser.save_screenshot(str(tmp_path / "studio.png"))


def test_a_bad_upload_is_a_message_and_the_page_goes_on(studio, browser, tmp_path):
    from selenium.webdriver.common.by import By

    url, _ = studio
    browser.get(url)
    _wait(browser, lambda d: d.find_element(By.ID, "status").get_attribute("data-state")
          == "ready")
    bad = tmp_path / "notes.png"
    bad.write_text("not a photo")
    browser.find_element(By.ID, "file").send_keys(str(bad))
    browser.find_element(By.ID, "question").send_keys(QUESTION)
    _ask(browser)
    assert "not an image" in browser.find_element(By.ID, "error").text
    browser.find_element(By.ID, "file").send_keys(str(IMAGE))
    _wait(browser, lambda d: d.find_element(By.ID, "canvas").is_displayed())
    box = browser.find_element(By.ID, "box")
    box.send_keys("10,10,9000,9000")  # outside the photo
    _ask(browser)
    assert "box" in browser.find_element(By.ID, "error").text
    box.clear()
    box.send_keys("84,14,98,28")
    _ask(browser)
    assert browser.find_element(By.ID, "error").text == ""
    assert len(browser.find_elements(By.CSS_SELECTOR, "#results td")) == 6
