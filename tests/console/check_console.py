"""Drives consentry's console in headless Chromium, as an auditor would, and checks what it shows.

Run by tests/api/console.rs (the_console_tells_a_numbers_story_in_a_browser), which starts
consentry, writes a number's story and passes, in the environment: CONSENTRY_URL,
CONSENTRY_TOKEN, CONSENTRY_NUMBER, CONSENTRY_DENIAL (the code the denied send got) and
CONSENTRY_SHOTS (where to save screenshots). Chromium and its driver are Debian's
(CONSENTRY_CHROMIUM, CONSENTRY_CHROMEDRIVER override the paths); Selenium drives them.
Prints "console: ok" when every check holds; fails with the reason otherwise.
"""

import os
import pathlib
import sys

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

URL = os.environ["CONSENTRY_URL"]
TOKEN = os.environ["CONSENTRY_TOKEN"]
NUMBER = os.environ["CONSENTRY_NUMBER"]
DENIAL = os.environ["CONSENTRY_DENIAL"]
SHOTS = pathlib.Path(os.environ["CONSENTRY_SHOTS"])


def browser():
    options = Options()
    options.binary_location = os.environ.get("CONSENTRY_CHROMIUM", "/usr/bin/chromium")
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--ignore-certificate-errors",  # consentry's own self-signed certificate
        "--window-size=1280,1800",
    ):
        options.add_argument(argument)
    service = Service(os.environ.get("CONSENTRY_CHROMEDRIVER", "/usr/bin/chromedriver"))
    return webdriver.Chrome(service=service, options=options)


STEP = ["starting"]


def step(name):
    STEP[0] = name


def check(condition, what):
    if not condition:
        raise AssertionError(what)


def main():
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver = browser()
    wait = WebDriverWait(driver, 20)
    try:
        step("loading the page")
        driver.get(URL + "/console")
        driver.find_element(By.ID, "token").send_keys(TOKEN)
        driver.find_element(By.CSS_SELECTOR, "#token-form button[type=submit]").click()

        step("the checkpoint")
        # The log: the checkpoint's signature is verified by the browser itself.
        state = wait.until(lambda d: d.find_elements(By.ID, "signature-state"))[0]
        check(state.text == "verified in this browser", f"signature: {state.text!r}")
        check("audit:read" in driver.find_element(By.ID, "who").text, "scopes shown")

        step("the chart")
        # The chart: bars, and a legend naming the denial's reason.
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#chart rect.bar"))
        legend = driver.find_element(By.ID, "legend").text
        check(f"denied · {DENIAL}: 1" in legend, f"legend: {legend!r}")
        driver.save_screenshot(str(SHOTS / "console-overview.png"))

        step("the lookup")
        # The number's story.
        driver.find_element(By.ID, "number").send_keys(NUMBER)
        driver.find_element(By.CSS_SELECTOR, "#lookup button").click()
        wait.until(lambda d: d.find_element(By.ID, "story").is_displayed())
        opt_out = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#timeline li.opt_out"))[0]
        opt_in = driver.find_element(By.CSS_SELECTOR, "#timeline li.opt_in")
        check("web_form" in opt_in.text, f"opt-in method: {opt_in.text!r}")
        check("disclosure_text: By checking" in opt_in.text, f"opt-in evidence: {opt_in.text!r}")
        check("by keyword" in opt_out.text or "keyword" in opt_out.text, f"opt-out: {opt_out.text!r}")
        messages = driver.find_element(By.ID, "messages").text
        check(DENIAL in messages and "denied" in messages, f"messages: {messages!r}")
        check("sent" in messages, f"the first message's outcome: {messages!r}")
        step("the proofs")
        # Every proof checked in the browser, none failing.
        wait.until(
            lambda d: all(p.text != "checking" for p in d.find_elements(By.CSS_SELECTOR, ".proof"))
        )
        proofs = [p.text for p in driver.find_elements(By.CSS_SELECTOR, ".proof")]
        check("included" in proofs, f"proofs: {proofs}")
        check("does not verify" not in proofs, f"proofs: {proofs}")
        replies = driver.find_element(By.ID, "replies").text
        check("opt_out" in replies, f"replies: {replies!r}")
        check(NUMBER[-4:] not in replies, f"reply numbers masked: {replies!r}")
        driver.save_screenshot(str(SHOTS / "console-number.png"))

        step("resolving the review")
        # Resolve the open review from the page.
        driver.find_element(By.CSS_SELECTOR, "#reviews button.resolve-not").click()
        wait.until(lambda d: "resolved" in d.find_element(By.ID, "lookup-status").text)
        wait.until(lambda d: "not_opt_out" in d.find_element(By.ID, "reviews").text)
        check(
            not driver.find_elements(By.CSS_SELECTOR, "#reviews button"),
            "no resolve button once resolved",
        )
        driver.save_screenshot(str(SHOTS / "console-review-resolved.png"))
        print("console: ok")
    finally:
        driver.quit()


if __name__ == "__main__":
    try:
        main()
    except Exception as error:  # the reason, for the Rust test's message
        print(f"console: FAILED at {STEP[0]}: {error!r}", file=sys.stderr)
        sys.exit(1)
