"""The chat page at / in headless Chromium (Debian's chromium + chromium-driver, driven by
Selenium): type a question, watch the answer stream in."""

from __future__ import annotations

import shutil
import time

import pytest

from serving import Server

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (BROWSER and DRIVER),
                                reason="no Chromium and chromedriver on this machine "
                                       "(Debian: apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = BROWSER
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield drv
    drv.quit()


def test_page_streams_an_answer(default_home, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    # Greedy: at the default temperature the small model sometimes ends after one list item,
    # and this test is about the page streaming, not about sampling.
    server = Server(["--parallel", "2", "--max-context", "1024", "--temperature", "0"],
                    env={"LINLY_HOME": str(default_home)})
    try:
        browser.get(server.url + "/")
        # Record the answer's length at every change of the page, to see it grow.
        browser.execute_script("""
            window.__lengths = [];
            new MutationObserver(() => {
              const m = document.querySelectorAll('.msg.assistant');
              if (m.length) window.__lengths.push(m[m.length - 1].textContent.length);
            }).observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true});
        """)
        box = browser.find_element(By.ID, "input")
        box.send_keys("Name five fruits.")
        box.send_keys(Keys.ENTER)
        end = time.time() + 120
        while time.time() < end:
            states = [m.get_attribute("data-state") for m in browser.find_elements(By.CSS_SELECTOR, ".msg.assistant, .msg.error")]
            if states and states[-1] in ("done", "error"):
                break
            time.sleep(0.1)
        answer = browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")[-1]
        assert answer.get_attribute("data-state") == "done", answer.text
        assert len(answer.text.split()) >= 3
        lengths = browser.execute_script("return window.__lengths;")
        growing = sorted(set(n for n in lengths if n > 0))
        assert len(growing) >= 3, lengths  # the text arrived in several pieces, not at once
        assert browser.find_element(By.CSS_SELECTOR, ".msg.user").text == "Name five fruits."
    finally:
        server.stop()
