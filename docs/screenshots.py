"""Screenshots of optlab's runs in MLflow's web UI, for docs/tracking.md.

    python docs/screenshots.py [--out docs/images] [--keep DIR] [--colors 256]

In a fresh temporary folder with its own store, it runs a small sweep and a single run
(RUNS below), starts `mlflow ui` on that store, drives the UI with Playwright in headless
Chromium and writes one PNG per entry of PAGES to `--out` (docs/images/mlflow-<name>.png,
1400x900, saved with a 256-colour palette when Pillow is installed: `--colors 0` for full
colour). The server is always stopped at the end, the folder removed (unless --keep).

`--keep DIR` keeps the folder (its store, the runs' files, the server's log) in DIR; run again
with the same DIR to reuse its runs and only retake the screenshots (delete DIR for new runs).

Needs Chromium and Playwright's Python package (not Playwright's own browsers):

    apt-get install chromium && pip install playwright

The script depends on no metric name of today's logging: the names it needs are the
settings below (SWEEP_FILTER, SORT_METRIC, COLUMNS, CHART_SEARCH, ...), each looked up
among the keys the runs logged (`distance_to_optimum` finds `train/distance_to_optimum`).
Edit them, or PAGES, when the logging changes. The selectors are for MLflow 3's UI
(written against 3.17): roles and visible texts, and MLflow's own local-storage keys to
close its assistant panel and first-visit tips (INIT_SCRIPT).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
INSTALL_HINT = "install with: apt-get install chromium && pip install playwright"

# ---------------------------------------------------------------------------------------------
# What to run. Each entry: (label, optlab's arguments). The store is added to every command as
# tracking.uri=sqlite:///mlflow.db, relative to the temporary folder the commands run in (the
# parent run of a sweep shows its command line: no temporary path ends up in the pictures).
EXPERIMENT = "optlab"  # the default of tracking.experiment
# fmt: off
RUNS = [  # the labels "sweep" and "single" are what PAGES' placeholders refer to
    ("sweep", ["-m", "optimizer=sgd,adam,lion", "problem=himmelblau", "trainer.epochs=300",
               "optimizer.learning_rate=0.002,0.02"]),
    ("single", ["problem=mlp_digits", "trainer.epochs=5"]),
]
# fmt: on
COMMON = ["trainer.progress_bar=false"]

# Names used by PAGES; metric, param and tag names are looked up among the logged keys:
# the key itself, else a key ending in "/NAME" or ".NAME" (for metrics, the one with the
# most points: `train/x` rather than `best/x`).
SWEEP_FILTER = "params.`problem.name` = 'himmelblau'"  # MLflow search syntax: the sweep's runs
SORT_METRIC = "distance_to_optimum"  # the runs table is sorted by it (lowest first)
COLUMNS = ["Dataset", SORT_METRIC, "optimizer.learning_rate"]  # toggled in "Columns" (Dataset: off)
CHART_SEARCH = "train/"  # typed in "Search metric charts" (a substring; "" shows every chart)
RUN_CHART_SEARCH = "train/"
ARTIFACT = "path.png"  # the artifact shown (of the sweep's first run); else its first .png
PARALLEL_PARAMS = ["optimizer.name", "optimizer.learning_rate"]  # compare page's parallel coordinates
PARALLEL_METRICS = [SORT_METRIC]

VIEWPORT = {"width": 1400, "height": 900}


@dataclass
class Page:
    """One screenshot: docs/images/mlflow-<name>.png. The steps run in the order of the fields;
    strings may hold {exp} (the experiment id), {single} (the single run), {sweep_first} (the
    sweep's first run), {sweep_parent} (its parent run, if any) and {sort_metric} (the key
    SORT_METRIC resolved to); `query` is added to `url`."""

    name: str
    shows: str
    url: str | None = None  # hash route; None: stay on the page the previous entry left
    query: dict = field(default_factory=dict)
    click: str | None = None  # a button's visible name, clicked after loading (e.g. a view switch)
    wait: str | None = None  # a text that must appear (after url and click) before the steps below
    needs: str | None = None  # skip the page when this placeholder has no value (e.g. no parent run)
    expand: bool = False  # expand parent runs (sweeps) in the runs table
    columns: list = field(default_factory=list)  # names toggled in the "Columns" menu
    chart_search: str | None = None  # typed in "Search metric charts"
    artifact: str | None = None  # file clicked in the Artifacts tab
    select_all: bool = False  # tick "Select all runs" in the runs table
    parallel: tuple | None = None  # (params, metrics) for the compare page's parallel coordinates plot
    highlight: str | None = None  # outline this button in the picture (removed afterwards)


# The runs table's URL query for the sweep's runs, best first.
SORTED = {"searchFilter": SWEEP_FILTER, "orderByKey": "metrics.`{sort_metric}`", "orderByAsc": "true"}
# fmt: off
PAGES = [
    Page("experiment-genai", "the experiment as MLflow 3 first opens it: the GenAI view; 'Model training' outlined",
         url="#/experiments/{exp}", wait="Model training", highlight="Model training"),
    Page("runs", "after clicking 'Model training': the runs table, the sweep's parent run expanded",
         click="Model training", wait="matching runs", expand=True),
    Page("runs-columns", "the sweep's runs: filtered in the search box, sorted by a metric, with columns added",
         url="#/experiments/{exp}/runs", query=SORTED, wait="matching runs", expand=True, columns=COLUMNS),
    Page("runs-charts", "the same runs in the chart view (second view button): one chart per metric, every run",
         url="#/experiments/{exp}/runs", query={"compareRunsMode": "CHART", "searchFilter": SWEEP_FILTER},
         wait="matching runs", expand=True, chart_search=CHART_SEARCH),
    Page("run-overview", "one run's page: metrics, parameters, tags, datasets",
         url="#/experiments/{exp}/runs/{single}", wait="About this run"),
    Page("run-metrics", "one run's Model metrics tab: its curves",
         url="#/experiments/{exp}/runs/{single}/model-metrics", wait="Model metrics", chart_search=RUN_CHART_SEARCH),
    Page("run-artifacts", "one run's Artifacts tab with a plot optlab logged",
         url="#/experiments/{exp}/runs/{sweep_first}/artifacts", wait="Artifacts", artifact=ARTIFACT),
    Page("sweep-parent", "a sweep's parent run: its command, what was swept, its child runs",
         url="#/experiments/{exp}/runs/{sweep_parent}", wait="About this run", needs="sweep_parent"),
    Page("runs-selected", "the sweep's runs selected in the table: Compare appears",
         url="#/experiments/{exp}/runs", query=SORTED, wait="matching runs", expand=True, select_all=True),
    Page("compare", "after Compare: the runs side by side, a parallel-coordinates plot of parameters and metric",
         click="Compare", wait="Comparing", parallel=(PARALLEL_PARAMS, PARALLEL_METRICS)),
]
# fmt: on

# Keep MLflow's assistant panel closed and its first-visit tips away, light theme. These are
# MLflow's own local-storage keys (see its useLocalStorage hook: "<key>_v<version>").
INIT_SCRIPT = """
localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');
localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');
localStorage.setItem('mlflow.detectIssues.guidanceShown_v1', 'true');
localStorage.setItem('_mlflow_dark_mode_toggle_enabled', 'false');
"""
OUTLINE_ON = "e => { e.style.outline = '3px solid #e8590c'; e.style.outlineOffset = '2px'; }"
OUTLINE_OFF = "e => { e.style.outline = ''; e.style.outlineOffset = ''; }"
# Texts that mean the page did not render what it should.
ERROR_TEXTS = ["Something went wrong", "Page not found", "No metric charts", "Request failed"]

# The server: no background job runner (a dozen processes), no telemetry.
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
RUNS_FILE = "screenshots-runs.json"


class Failure(Exception):
    """A step failed: one line for the user."""


def log(message: str) -> None:
    print(message, flush=True)


# --- the runs ---------------------------------------------------------------------------------


def run_ids(client, experiment_name: str) -> dict:
    """{run id: run} of the experiment (every lifecycle stage)."""
    from mlflow.entities import ViewType

    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return {}
    runs = client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL, max_results=1000)
    return {run.info.run_id: run for run in runs}


def make_runs(folder: Path) -> dict:
    """Run RUNS in `folder`; return what PAGES needs: the experiment id and, per label, its
    leaf runs (oldest first) and parent runs."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
    found: dict = {"uri": uri, "runs": {}}
    for label, arguments in RUNS:
        # No client before the first command: MlflowClient would create the store itself.
        before = set(run_ids(MlflowClient(uri), EXPERIMENT)) if (folder / "mlflow.db").exists() else set()
        command = [sys.executable, "-m", "optlab", *arguments, *COMMON, "tracking.uri=sqlite:///mlflow.db"]
        shown = " ".join(["python -m optlab", *arguments])
        log(f"running ({label}): {shown}")
        start = time.monotonic()
        with open(folder / f"{label}.log", "w") as output:
            done = subprocess.run(command, cwd=folder, env=env, stdout=output, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            tail = (folder / f"{label}.log").read_text().strip().splitlines()[-5:]
            raise Failure(f"`{shown}` failed (exit status {done.returncode}); its last lines:\n  " + "\n  ".join(tail))
        client = MlflowClient(uri)
        runs = run_ids(client, EXPERIMENT)
        new = {rid: run for rid, run in runs.items() if rid not in before}
        parents = {run.data.tags.get("mlflow.parentRunId") for run in runs.values()} - {None}
        leaves = sorted((run for rid, run in new.items() if rid not in parents), key=lambda r: r.info.start_time)
        if not leaves:
            raise Failure(f"`{shown}` logged no run to {uri} (experiment {EXPERIMENT!r})")
        found["runs"][label] = {
            "leaves": [run.info.run_id for run in leaves],
            "parents": sorted(rid for rid in new if rid in parents),
        }
        log(
            f"  {len(leaves)} run(s), {len(found['runs'][label]['parents'])} parent run(s), "
            f"{time.monotonic() - start:.1f} s"
        )
    found["experiment_id"] = client.get_experiment_by_name(EXPERIMENT).experiment_id
    return found


def resolve(name: str, client, run_ids_: list[str]) -> str:
    """The logged metric, param or tag key that `name` stands for (see the settings above);
    `name` itself when nothing matches (a column such as "Dataset")."""
    runs = [client.get_run(rid) for rid in run_ids_]
    metrics = {k for run in runs for k in run.data.metrics}
    others = {k for run in runs for k in [*run.data.params, *run.data.tags]}
    for keys, is_metric in ((metrics, True), (others, False)):
        if name in keys:
            return name
        candidates = [k for k in keys if k.endswith("/" + name) or k.endswith("." + name)]
        if candidates and is_metric:

            def points(key: str) -> int:
                return max(len(client.get_metric_history(run.info.run_id, key)) for run in runs)

            return sorted(candidates, key=lambda k: (-points(k), len(k), k))[0]
        if candidates:
            return sorted(candidates, key=lambda k: (len(k), k))[0]
    return name


# --- the server -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(folder: Path, uri: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    log(f"starting: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port {port} --workers 1")
    server_log = open(folder / "mlflow-ui.log", "w")  # closed in stop_server()
    process = subprocess.Popen(
        command,
        cwd=folder,
        env={**os.environ, **SERVER_ENV},
        stdout=server_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    process.log_file = server_log  # type: ignore[attr-defined]
    return process, f"http://127.0.0.1:{port}/"


def wait_for_server(process: subprocess.Popen, base: str, folder: Path, timeout: float = 120) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if process.poll() is not None:
            tail = (folder / "mlflow-ui.log").read_text().strip().splitlines()[-5:]
            raise Failure(f"mlflow ui exited (status {process.returncode}); its last lines:\n  " + "\n  ".join(tail))
        try:
            with urllib.request.urlopen(base + "health", timeout=2) as answer:
                if answer.status == 200:
                    return time.monotonic() - start
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise Failure(f"mlflow ui did not answer at {base}health within {timeout:.0f} s (log: {folder / 'mlflow-ui.log'})")


def stop_server(process: subprocess.Popen) -> None:
    """SIGTERM to the server's own process group (it was started in a new session), then SIGKILL."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
        except ProcessLookupError:
            pass
    try:  # workers left in the group (the server exited first)
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.log_file.close()  # type: ignore[attr-defined]


# --- the browser ------------------------------------------------------------------------------


DATA = ("fetch", "xhr")  # the requests that load data (not the telemetry worker's script, never "finished")


class Network:
    """Counts the page's requests in flight, to wait until the page has loaded its data (the UI
    polls, so Playwright's "networkidle" never comes)."""

    def __init__(self, page) -> None:
        self.in_flight: set = set()
        page.on("request", lambda request: self.in_flight.add(request) if request.resource_type in DATA else None)
        page.on("requestfinished", lambda request: self.in_flight.discard(request))
        page.on("requestfailed", lambda request: self.in_flight.discard(request))

    def settle(self, page, quiet: float = 0.8, timeout: float = 20) -> None:
        start = last_busy = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.in_flight:
                last_busy = time.monotonic()
            elif time.monotonic() - last_busy >= quiet:
                break
            page.wait_for_timeout(100)
        page.wait_for_timeout(500)  # rendering and the charts' transitions


def fill(text: str, values: dict) -> str:
    return text.format(**values)


def expand_parents(page, families: dict[str, list[str]]) -> None:
    """Show the child runs of each parent run ({parent name: child names}) shown in the table, with
    the parent row's expander (the unnamed button in its Run Name cell; the table's "Expand rows"
    toggle is something else: it shows multi-line cells)."""
    for parent, children in families.items():
        link = page.get_by_role("link", name=parent, exact=True)
        if link.count() == 0:  # not shown (sorted by a metric, the children are listed flat)
            continue
        child = page.get_by_role("link", name=children[0], exact=True)
        if child.count():
            continue
        page.get_by_role("gridcell").filter(has=link).get_by_role("button").first.click()
        child.first.wait_for(timeout=10000)


def toggle_columns(page, names: list[str]) -> None:
    for name in names:
        if "'" in name:
            raise Failure(f"column {name!r}: quotes are not supported")
        page.get_by_role("button", name="Columns", exact=True).click()
        menu = page.get_by_role("dialog")
        menu.get_by_placeholder("Search columns").fill(name)
        # The entry whose whole text is the name (not "epoch_loss" for "loss"), innermost.
        entry = menu.locator(f"xpath=.//span[normalize-space(.)='{name}'][not(.//span[normalize-space(.)='{name}'])]")
        try:
            entry.first.wait_for(timeout=5000)
        except Exception as error:
            raise Failure(f"column {name!r} is not in the Columns menu") from error
        entry.first.click()
        page.keyboard.press("Escape")
        page.wait_for_timeout(300)


def search_charts(page, text: str, warnings: list[str], where: str) -> None:
    box = page.get_by_placeholder("Search metric charts")
    box.fill(text)
    page.wait_for_timeout(800)
    if page.get_by_text("No metric charts").count():
        warnings.append(f"{where}: no chart matches {text!r} (edit CHART_SEARCH/RUN_CHART_SEARCH); every chart shown")
        box.fill("")
        page.wait_for_timeout(800)


def show_artifact(page, name: str, client, run_id: str) -> None:
    if page.get_by_text(name, exact=True).count() == 0:
        pngs = [a.path for a in client.list_artifacts(run_id) if a.path.endswith(".png")]
        if not pngs:
            raise Failure(f"run {run_id} has no artifact {name} and no .png")
        name = pngs[0]
    page.get_by_text(name, exact=True).first.click()
    preview = page.get_by_role("img", name=name).first  # the preview: <img alt=NAME>
    preview.wait_for(timeout=15000)
    page.wait_for_function("e => e.complete && e.naturalWidth > 0", arg=preview.element_handle(), timeout=15000)


def set_parallel_coordinates(page, params: list[str], metrics: list[str]) -> None:
    panel = page.get_by_role("tabpanel", name="Parallel Coordinates Plot")
    panel.get_by_role("button", name="Clear All").click()
    boxes = panel.get_by_role("combobox")
    for box, names in ((boxes.nth(0), params), (boxes.nth(1), metrics)):
        for name in names:
            box.click()
            box.fill(name)
            page.keyboard.press("Enter")
        page.keyboard.press("Escape")
    page.mouse.click(5, 5)  # close any open list


def check_page(page, name: str) -> None:
    for text in ERROR_TEXTS:
        if page.get_by_text(text).count():
            raise Failure(f"{name}: the page shows {text!r}")


def shoot(found: dict, base: str, out: Path, client, colors: int) -> tuple[list[tuple[Path, str]], list[str]]:
    from playwright.sync_api import sync_playwright

    runs = found["runs"]
    sweep, single = runs["sweep"], runs["single"]
    sweep_runs = sweep["leaves"]
    values = {
        "exp": found["experiment_id"],
        "single": single["leaves"][-1],
        "sweep_first": sweep_runs[0],
        "sweep_parent": (sweep["parents"] or [""])[0],
        "sort_metric": resolve(SORT_METRIC, client, sweep_runs),
    }
    families: dict[str, list[str]] = {}  # parent run's name: its children's names
    for label in runs:
        for rid in runs[label]["leaves"]:
            parent = client.get_run(rid).data.tags.get("mlflow.parentRunId")
            if parent:
                families.setdefault(client.get_run(parent).info.run_name, []).append(client.get_run(rid).info.run_name)
    written: list[tuple[Path, str]] = []
    warnings: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            context = browser.new_context(viewport=VIEWPORT, color_scheme="light", locale="en-US", timezone_id="UTC")
            context.add_init_script(INIT_SCRIPT)
            context.set_default_timeout(30000)
            page = context.new_page()
            network = Network(page)
            for spec in PAGES:
                if spec.needs and not values.get(spec.needs):
                    log(f"  skipped {spec.name}: no {spec.needs}")
                    continue
                start = time.monotonic()
                try:
                    if spec.url:
                        url = fill(spec.url, values)
                        if spec.query:
                            query = {k: fill(v, values) for k, v in spec.query.items()}
                            url += "?" + urllib.parse.urlencode(query, quote_via=urllib.parse.quote)
                        page.goto(base + url)
                    if spec.click:
                        network.settle(page)
                        page.get_by_role("button", name=spec.click, exact=True).click()
                    if spec.wait:
                        try:
                            page.get_by_text(spec.wait).first.wait_for()
                        except Exception as error:
                            raise Failure(
                                f"{spec.name}: {spec.wait!r} did not appear within 30 s (at {page.url})"
                            ) from error
                    network.settle(page)
                    if spec.expand:
                        expand_parents(page, families)
                    if spec.columns:
                        toggle_columns(page, [resolve(name, client, sweep_runs) for name in spec.columns])
                    if spec.chart_search is not None:
                        search_charts(page, spec.chart_search, warnings, spec.name)
                    if spec.artifact:
                        show_artifact(page, spec.artifact, client, values["sweep_first"])
                    if spec.select_all:
                        page.get_by_role("checkbox", name="Select all runs").check()
                    if spec.parallel:
                        params, metrics = spec.parallel
                        set_parallel_coordinates(
                            page,
                            [resolve(n, client, sweep_runs) for n in params],
                            [resolve(n, client, sweep_runs) for n in metrics],
                        )
                    network.settle(page)
                    check_page(page, spec.name)
                    outlined = None
                    if spec.highlight:
                        outlined = page.get_by_role("button", name=spec.highlight, exact=True)
                        outlined.evaluate(OUTLINE_ON)
                    page.evaluate("document.activeElement && document.activeElement.blur()")  # no focus ring
                    page.mouse.move(VIEWPORT["width"] // 2, 2)  # no hover effects in the picture
                    page.wait_for_timeout(300)
                    path = out / f"mlflow-{spec.name}.png"
                    page.screenshot(path=str(path))
                    if outlined is not None:
                        outlined.evaluate(OUTLINE_OFF)
                except Failure:
                    raise
                except Exception as error:  # Playwright's errors: one line, with the page's name
                    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                    raise Failure(f"{spec.name}: {first} (at {page.url})") from error
                compress(path, colors)
                written.append((path, spec.shows))
                log(f"  wrote {path} ({path.stat().st_size // 1024} KB, {time.monotonic() - start:.1f} s)")
        finally:
            browser.close()
    return written, warnings


def compress(path: Path, colors: int) -> None:
    """Re-save with Pillow, when it is there: a palette of `colors` colours (none: 0), optimized.
    A UI's flat colours lose nothing visible at 256, and the file shrinks to about 40%."""
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(path) as image:
        image = image.convert("RGB")
    if colors:
        image = image.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    image.save(path, optimize=True)


# --- main -------------------------------------------------------------------------------------


def check_tools() -> None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        raise Failure(f"Playwright's Python package is missing; {INSTALL_HINT}") from None
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        raise Failure(f"no Chromium at {CHROMIUM} (set CHROMIUM=PATH for another); {INSTALL_HINT}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "images", help="where the PNGs go (default: docs/images)")
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="keep the runs, store and server log in DIR (reused when DIR already has them)",
    )
    parser.add_argument(
        "--colors",
        type=int,
        default=256,
        metavar="N",
        help="save the PNGs with a palette of N colours, 0: full colour (default: 256)",
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still stop the server and clean up
    started = time.monotonic()
    server = None
    folder = None
    try:
        check_tools()
        if args.keep:
            folder = args.keep.resolve()
            folder.mkdir(parents=True, exist_ok=True)
        else:
            folder = Path(tempfile.mkdtemp(prefix="optlab-screenshots-"))
        from mlflow import MlflowClient

        saved = folder / RUNS_FILE
        if saved.exists():
            found = json.loads(saved.read_text())
            log(f"reusing the runs in {folder}")
        else:
            if (folder / "mlflow.db").exists():
                raise Failure(f"{folder} holds an mlflow.db that this script did not make; pick an empty folder")
            found = make_runs(folder)
            saved.write_text(json.dumps(found, indent=1))
        client = MlflowClient(found["uri"])
        server, base = start_server(folder, found["uri"])
        log(f"  answering after {wait_for_server(server, base, folder):.1f} s")
        args.out.mkdir(parents=True, exist_ok=True)
        written, warnings = shoot(found, base, args.out.resolve(), client, args.colors)
    except Failure as failure:
        print(f"screenshots: error: {failure}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("screenshots: interrupted", file=sys.stderr)
        return 130
    finally:
        if server is not None:
            stop_server(server)
        if folder is not None and not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    for warning in warnings:
        print(f"screenshots: warning: {warning}", file=sys.stderr)
    log(f"\n{len(written)} screenshots in {time.monotonic() - started:.0f} s (MLflow {mlflow_version()}):")
    for path, shows in written:
        log(f"  {path.name:28} {path.stat().st_size // 1024:4} KB  {shows}")
    if args.keep:
        log(f"runs kept in {folder}")
    return 0


def mlflow_version() -> str:
    import mlflow

    return mlflow.__version__


if __name__ == "__main__":
    sys.exit(main())
