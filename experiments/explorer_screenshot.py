"""docs/explorer.png: the explorer page of a running service, in Debian's headless chromium.

causerec demo --dataset ml-100k --data-dir ../shared/data/ml-100k      # in one shell
python -m experiments.explorer_screenshot --user 1                     # in another
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--user", default="1")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("docs/explorer.png"))
    args = parser.parse_args()
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    with tempfile.TemporaryDirectory() as profile:
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1100"):
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
        browser = webdriver.Chrome(options=options, service=service)
        try:
            browser.get(args.url + "/ui")
            browser.find_element(By.ID, "user").send_keys(args.user)
            k = browser.find_element(By.ID, "k")
            k.clear()
            k.send_keys(str(args.k))
            browser.find_element(By.ID, "load").click()
            WebDriverWait(browser, 30).until(
                lambda b: len(b.find_elements(By.CSS_SELECTOR, "#recs > li")) == args.k
            )
            browser.save_screenshot(str(args.out))
        finally:
            browser.quit()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
