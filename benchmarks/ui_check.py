"""The MLflow UI on the demo's store, checked in a real browser (headless Chromium, Selenium).

Needs, once (a tool for this check, not a celebhpo dependency):

    apt-get install -y chromium chromium-driver
    .venv/bin/pip install selenium

    python benchmarks/ui_check.py                      # quick demo into a temp folder, then check
    python benchmarks/ui_check.py --workdir W          # reuse W's store (runs the demo if none)
    python benchmarks/ui_check.py --full               # the full demo (8 trials; minutes)
    python benchmarks/ui_check.py --out /tmp/shots     # screenshots there (default: a new
                                                       # /tmp/celebhpo-ui-check-* folder)

It runs `celebhpo demo --quick --workdir W`, serves `celebhpo ui` on a free port, and with a
fresh browser profile (a first visit: nothing remembered from an earlier one) goes where a
user goes: the URL `celebhpo ui` prints, a trial's run (clicked in the runs table), its
Model metrics tab, the parent (the run page's "Parent run" link) and Compare with three runs
ticked in the table (three trials; the quick demo has two, so the parent is the third).
A click that finds nothing falls back to the page's URL, and the table says so.

Checks: every page stays in MLflow's model-training view (the sidebar's toggle on "Model
training", no GenAI sidebar: "Evaluation runs", "Judges", "Sessions", the "Evaluations"
breadcrumb); the trial's Model metrics tab shows its `val_loss` chart without opening a
collapsed section. Prints a PASS/FAIL table and the screenshots' paths; exit 1 if any fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

GENAI_MARKS = ("Evaluation runs", "Evaluations", "Judges", "Sessions")  # lines of its sidebar
CURVE = "val_loss"  # the epoch curve a trial's Model metrics tab must show
TOGGLE_JS = """return Array.from(document.querySelectorAll('[role=button]'))
  .filter(b => ['GenAI', 'Model training'].includes(b.innerText.trim()))
  .map(b => [b.innerText.trim(), getComputedStyle(b.firstElementChild || b).color]);"""


@dataclass
class Report:
    out: Path
    rows: list[tuple[str, bool, str]] = field(default_factory=list)
    shots: list[Path] = field(default_factory=list)

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.rows.append((name, ok, detail))

    def print(self) -> None:
        width = max(len(r[0]) for r in self.rows)
        print(f"\n{'check':<{width}}  result  detail")
        for name, ok, detail in self.rows:
            print(f"{name:<{width}}  {'PASS' if ok else 'FAIL':<6}  {detail}")
        print("\nscreenshots:")
        for shot in self.shots:
            print(f"  {shot}")


# -- the store: the demo, its runs ------------------------------------------------------------
def ensure_demo(workdir: Path, full: bool) -> str:
    """The tracking URI of `workdir`'s demo store, running the demo there first if it has none."""
    db = workdir / "mlruns" / "mlflow.db"
    if not db.is_file():
        cmd = [sys.executable, "-m", "celebhpo", "demo", "--workdir", str(workdir)]
        cmd += [] if full else ["--quick"]
        print(f"running {' '.join(cmd)} (log: {workdir / 'demo.log'})", flush=True)
        workdir.mkdir(parents=True, exist_ok=True)
        with open(workdir / "demo.log", "w") as log:
            subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True)
    return f"sqlite:///{db}"


def study_runs(uri: str) -> tuple[str, str, list[tuple[str, str]]]:
    """(experiment id, parent run id, [(trial run id, run name)] best first, then by trial)."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = next(e for e in client.search_experiments(order_by=["creation_time DESC"])
               if "celebhpo.study" in e.tags)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    trials.sort(key=lambda r: (r.data.tags.get("celebhpo.best") != "true",
                               r.info.status != "FINISHED", r.info.run_name))
    return exp.experiment_id, parent.info.run_id, [(r.info.run_id, r.info.run_name)
                                                   for r in trials]


# -- the server ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_ui(uri: str, port: int, log: Path) -> tuple[subprocess.Popen, str]:
    """`celebhpo ui` in its own process group; (the process, the landing URL it printed),
    once the server answers."""
    cmd = [sys.executable, "-m", "celebhpo", "ui", "--port", str(port), "--tracking-uri", uri]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"celebhpo ui exited {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as answer:
                if answer.status == 200:
                    break
        except OSError:
            time.sleep(1)
    else:
        stop(proc)
        raise SystemExit(f"the UI did not answer on port {port} in 240 s:\n{log.read_text()}")
    landing = next(line.split(" ", 1)[1] for line in log.read_text().splitlines()
                   if line.startswith("open http"))
    return proc, landing


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the process group this script started
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


# -- the browser --------------------------------------------------------------------------------
def browser(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1600,1000", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.implicitly_wait(0)
    return driver


def lines(driver) -> list[str]:
    from selenium.webdriver.common.by import By

    return [s.strip() for s in driver.find_element(By.TAG_NAME, "body").text.splitlines()]


def wait_for(driver, predicate, seconds: float = 60) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if predicate(driver):
                time.sleep(1.5)  # let the sidebar and charts settle
                return True
        except Exception:  # the page is still being replaced
            pass
        time.sleep(0.5)
    return False


def view(driver) -> tuple[bool, str]:
    """(model-training view?, what says so): the toggle's darker label is the selected one."""
    seen = [m for m in GENAI_MARKS if m in lines(driver)]
    toggle = driver.execute_script(TOGGLE_JS) or []
    shade = {label: sum(float(v) for v in re.findall(r"[\d.]+", color)[:3])
             for label, color in toggle}
    selected = min(shade, key=shade.get) if len(shade) == 2 else "?"
    ok = not seen and selected in ("Model training", "?")
    sidebar = f"GenAI sidebar ({', '.join(seen)})" if seen else "no GenAI sidebar"
    return ok, f"toggle on {selected}; {sidebar}"


def shot(driver, report: Report, name: str) -> None:
    path = report.out / f"{len(report.shots) + 1:02d}-{name}.png"
    driver.save_screenshot(str(path))
    report.shots.append(path)


def click(driver, css: str, seconds: float = 30) -> bool:
    from selenium.webdriver.common.by import By

    def found(d):
        els = [e for e in d.find_elements(By.CSS_SELECTOR, css) if e.is_displayed()]
        if els:
            d.execute_script("arguments[0].scrollIntoView({block: 'center'});", els[0])
            els[0].click()
        return bool(els)

    return wait_for(driver, found, seconds)


def expand_parent(driver, parent: str, child: str) -> None:
    """Open the parent's row in the runs table, unless its trial `child` shows already (the
    table remembers an open row)."""
    if not wait_for(driver, lambda d: d.find_elements("css selector", f"[row-id='{child}']"), 5):
        click(driver, f"[role=row][row-id='{parent}'] [col-id*='Run Name'] button", 30)
        wait_for(driver, lambda d: d.find_elements("css selector", f"[row-id='{child}']"), 15)


# -- the pages ----------------------------------------------------------------------------------
def check_landing(driver, report: Report, landing: str, parent: str) -> None:
    driver.get(landing)
    ok = wait_for(driver, lambda d: d.find_elements("css selector", f"a[href*='{parent}']"))
    shot(driver, report, "landing")
    report.check("landing: the runs table", ok, landing)
    report.check("landing: model-training view", *view(driver))


def check_trial(driver, report: Report, base: str, exp: str, trial: tuple[str, str],
                parent: str) -> None:
    run_id, name = trial
    expand_parent(driver, parent, run_id)
    how = "clicked in the runs table"
    if not click(driver, f"a[href*='/runs/{run_id}']"):
        driver.get(f"{base}#/experiments/{exp}/runs/{run_id}")
        how = "opened by URL (no link to click)"
    wait_for(driver, lambda d: name in lines(d))
    shot(driver, report, "trial")
    ok, detail = view(driver)
    report.check(f"trial {name}: model-training view", ok, f"{detail} ({how})")
    if not click(driver, "[role=tab]:nth-child(2), [role=tab][id*='model-metrics']", 15):
        driver.get(f"{base}#/experiments/{exp}/runs/{run_id}/model-metrics")
    charts = wait_for(driver, lambda d: CURVE in lines(d), 30)
    shot(driver, report, "trial-model-metrics")
    sections = [s for s in lines(driver) if s.startswith("(") and s.endswith(")")]
    report.check(f"trial {name}: {CURVE} chart on Model metrics", charts,
                 f"{'shown' if charts else 'not shown (collapsed or missing)'}; "
                 f"{len(sections)} sections")
    report.check(f"trial {name}: model-training view on Model metrics", *view(driver))


def check_parent(driver, report: Report, base: str, exp: str, parent: str) -> None:
    how = "the trial page's Parent run link"
    _click_text(driver, "Overview", "//*[@role='tab']")
    if not click(driver, f"a[href*='/runs/{parent}']", 15):
        driver.get(f"{base}#/experiments/{exp}/runs/{parent}")
        how = "opened by URL"
    wait_for(driver, lambda d: "Parent run" not in lines(d) and "Metrics" in " ".join(lines(d)))
    shot(driver, report, "parent")
    ok, detail = view(driver)
    report.check("parent run: model-training view", ok, f"{detail} ({how})")


def check_compare(driver, report: Report, base: str, landing: str, exp: str, parent: str,
                  runs: list[str]) -> None:
    driver.get(landing)
    wait_for(driver, lambda d: d.find_elements("css selector", f"[row-id='{parent}']"))
    expand_parent(driver, parent, runs[0])
    ticked = sum(click(driver, f"[role=row][row-id='{r}'] .ag-selection-checkbox "
                               ".ag-checkbox-input-wrapper", 15) for r in runs)
    how = f"{ticked} ticked in the runs table, Compare pressed"
    if ticked != len(runs) or not wait_for(driver, lambda d: _click_text(d, "Compare"), 15):
        ids = urllib.parse.quote(json.dumps(runs))
        driver.get(f"{base}#/compare-runs?runs={ids}&experiments="
                   f"{urllib.parse.quote(json.dumps([exp]))}")
        how = f"{ticked} ticked in the runs table; opened by URL"
    ok = wait_for(driver, lambda d: any(s.startswith(f"Comparing {len(runs)} Runs")
                                        for s in lines(d)))
    shot(driver, report, "compare")
    detail = view(driver)
    report.check(f"compare {len(runs)} runs: the page", ok, how)
    report.check(f"compare {len(runs)} runs: model-training view", *detail)


def _click_text(driver, text: str, xpath: str = "//button") -> bool:
    from selenium.webdriver.common.by import By

    for el in driver.find_elements(By.XPATH, f"{xpath}[normalize-space(.)='{text}']"):
        if el.is_displayed() and el.is_enabled():
            el.click()
            return True
    return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--full", action="store_true", help="the full demo, not --quick")
    args = ap.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="celebhpo-ui-demo-"))
    out = args.out or Path(tempfile.mkdtemp(prefix="celebhpo-ui-check-", dir="/tmp"))
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out)
    uri = ensure_demo(workdir.resolve(), args.full)
    exp, parent, trials = study_runs(uri)
    port = free_port()
    proc, landing = start_ui(uri, port, out / "ui.log")
    base = f"http://127.0.0.1:{port}/"
    profile = Path(tempfile.mkdtemp(prefix="celebhpo-ui-profile-"))
    driver = browser(profile)
    try:
        check_landing(driver, report, landing, parent)
        check_trial(driver, report, base, exp, trials[0], parent)
        check_parent(driver, report, base, exp, parent)
        compare = [r for r, _ in trials[:3]]
        if len(compare) < 3:  # the quick demo has two trials: the parent is the third
            compare.append(parent)
        check_compare(driver, report, base, landing, exp, parent, compare)
    finally:
        driver.quit()
        stop(proc)
        shutil.rmtree(profile, ignore_errors=True)
    print(f"store: {uri}\nUI: {landing}")
    report.print()
    return 0 if all(ok for _, ok, _ in report.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
