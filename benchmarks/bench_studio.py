"""How fast the browser studio's image follows a slider, measured in a real headless Chromium on a real server.

    python benchmarks/bench_studio.py --csv out/bench_studio.csv --screenshot docs/figures/studio.png

Three rows, one run, one machine:
- ``page, one move at a time``: a slider is set and its ``input`` event fired; the time from that event to the
  edited image drawn on the page's canvas (the page's own ``performance.now()``), then the next move (driven from
  inside the page: Selenium polling the page meanwhile doubled the figure on a loaded 2-core machine);
- ``page, dragging at 60 Hz``: ``input`` events every 16 ms for a few seconds, as a drag makes them; the page keeps
  one request in flight and sends the latest amounts when it returns, so the figure is the time from the oldest
  input not yet shown to the image that shows it, and ``requests`` says how many of the events became requests;
- ``page, fetch only``: the browser's Resource Timing of those same one-at-a-time requests (request start to
  response end, inside Chromium): what of the first row is the network round trip, the rest being the page's own
  work (building the request, reading the answer, drawing);
- ``python client``: the same request (binary OIP ``infer``, z + t in, ``images`` out) from Python's urllib,
  sequentially: the floor under the page's figure (no browser, no canvas).
Needs Selenium (``pip install 'curvedit[browser]'``) and Chromium with chromedriver (Debian: ``chromium
chromium-driver``). Prints a table and writes CSV.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from curvedit.models.files import write_csv
from curvedit.service.background import BackgroundServer
from curvedit.service.config import ServeConfig


def chromium(width: int, height: int):
    from selenium import webdriver

    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        raise SystemExit("needs chromium and chromedriver on PATH (Debian: apt-get install chromium "
                         "chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}"):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))


def wait(driver, script: str, timeout: float = 30.0):
    end = time.monotonic() + timeout
    while not driver.execute_script(f"return {script};"):
        if time.monotonic() > end:
            raise TimeoutError(script)
        time.sleep(0.002)


IDLE = "window.curveditStudio && window.curveditStudio.z !== null && window.curveditStudio.idle()"
MOVE = ("const s = document.getElementById('slider-' + arguments[0]); s.value = arguments[1];"
        "s.dispatchEvent(new Event('input'));")
DRAG = """
const done = arguments[arguments.length - 1], k = arguments[0], until = performance.now() + arguments[1];
const s = document.getElementById('slider-' + k), st = window.curveditStudio;
const first = st.latencies.length, updates = st.updates;
let events = 0;
const timer = setInterval(() => {
  if (performance.now() > until) {
    clearInterval(timer);
    const check = setInterval(() => { if (st.idle()) { clearInterval(check);
      done({events, requests: st.updates - updates, latencies: st.latencies.slice(first)}); } }, 5);
    return;
  }
  s.value = (Math.sin(events / 10) * 2).toFixed(2); s.dispatchEvent(new Event('input')); events += 1;
}, 16);
"""


SEQUENTIAL = """
const done = arguments[arguments.length - 1], k = arguments[0], amounts = arguments[1];
const s = document.getElementById('slider-' + k), st = window.curveditStudio, out = [];
(async () => {
  for (const amount of amounts) {
    const n = st.updates;
    s.value = amount; s.dispatchEvent(new Event('input'));
    while (st.updates === n) await new Promise((r) => setTimeout(r, 0));
    out.push(st.latencies.at(-1));
  }
  done(out);
})();
"""


def one_at_a_time(driver, moves: int, k: int) -> list[float]:
    """Each move waits for the last one's image; timed in the page (the harness polls nothing meanwhile)."""
    amounts = [f"{a:.2f}" for a in np.random.default_rng(0).uniform(-2, 2, moves)]
    return driver.execute_async_script(SEQUENTIAL, k, amounts)


def python_client(port: int, model: str, z: list[float], k: int, n: int) -> list[float]:
    rng = np.random.default_rng(1)
    out = []
    for _ in range(n):
        zb, tb = np.float32([z]).tobytes(), rng.uniform(-2, 2, (1, k)).astype(np.float32).tobytes()
        head = json.dumps({"inputs": [
            {"name": "z", "datatype": "FP32", "shape": [1, len(z)], "parameters": {"binary_data_size": len(zb)}},
            {"name": "t", "datatype": "FP32", "shape": [1, k], "parameters": {"binary_data_size": len(tb)}}],
            "outputs": [{"name": "images", "parameters": {"binary_data": True}}]}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/{model}/infer", data=head + zb + tb,
                                         headers={"Inference-Header-Content-Length": str(len(head))})
        start = time.perf_counter()
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
        out.append((time.perf_counter() - start) * 1000)
    return out


def row(name: str, ms: list[float], extra: str = "") -> dict:
    q = np.percentile(ms, [50, 95])
    return {"measure": name, "n": len(ms), "p50_ms": round(float(q[0]), 2), "p95_ms": round(float(q[1]), 2),
            "mean_ms": round(statistics.fmean(ms), 2), "max_ms": round(max(ms), 2), "note": extra}


def screenshot(driver, path: Path) -> None:
    """The page with a few edits made, the strips and the order check drawn."""
    for k, amount in ((0, "-0.8"), (2, "1.1"), (5, "0.9")):
        driver.execute_script(MOVE, k, amount)
        wait(driver, IDLE)
    wait(driver, "window.curveditStudio.commutation !== null && window.curveditStudio.idle()")
    time.sleep(0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="shapes32", help="the model whose sliders move (default shapes32)")
    parser.add_argument("--editor", default=None, help="the editor the page uses (default: the model's default)")
    parser.add_argument("--engine", default="auto", help="the server's engine (default auto)")
    parser.add_argument("--moves", type=int, default=200, help="one-at-a-time slider moves (default 200)")
    parser.add_argument("--drag-s", type=float, default=5.0, help="seconds of 60 Hz dragging (default 5)")
    parser.add_argument("--csv", default="out/bench_studio.csv",
                        help="CSV to write (default out/bench_studio.csv)")
    parser.add_argument("--screenshot", default=None, help="PNG of the page to write (default: none)")
    args = parser.parse_args(argv)
    models = tuple(dict.fromkeys([args.model, "shapes32", "shapes-vae", "digits-vae"]))
    config = ServeConfig(port=0, http_port=0, metrics_port=0, models=models, engine=args.engine)
    with BackgroundServer(config) as bg:
        port = bg.server.http_port
        driver = chromium(1280, 1060)
        driver.set_script_timeout(300)
        try:
            driver.get(f"http://127.0.0.1:{port}/")
            wait(driver, IDLE)
            if args.editor:
                driver.execute_script("const e = document.getElementById('editor'); e.value = arguments[0];"
                                      "e.dispatchEvent(new Event('change'));", args.editor)
                wait(driver, f"window.curveditStudio.editor === {json.dumps(args.editor)}")
                wait(driver, IDLE)
            k = len(driver.execute_script("return window.curveditStudio.directions;"))
            one_at_a_time(driver, 20, 2)  # warm: the browser's and the server's first calls
            driver.execute_script("performance.setResourceTimingBufferSize(100000); "
                                  "performance.clearResourceTimings();")
            rows = [row("page, one move at a time", one_at_a_time(driver, args.moves, 2),
                        "input event → image drawn")]
            fetches = driver.execute_script("return performance.getEntriesByType('resource')"
                                            ".filter((e) => e.name.endsWith('/infer')).map((e) => e.duration);")
            drag = driver.execute_async_script(DRAG, 0, args.drag_s * 1000)
            rows.append(row("page, fetch only", fetches, "Resource Timing of the row above's requests"))
            rows.append(row("page, dragging at 60 Hz", drag["latencies"],
                            f"{drag['events']} input events → {drag['requests']} requests"))
            z = driver.execute_script("return window.curveditStudio.z;")
            rows.append(row("python client", python_client(port, args.model, z, k, args.moves),
                            "urllib, same request"))
            engine = bg.server.inference.model(args.model).model.engine
            if args.screenshot:
                driver.execute_script(MOVE, 0, "0")
                screenshot(driver, Path(args.screenshot))
        finally:
            driver.quit()
    editor = args.editor or "default editor"
    print(f"model {args.model} ({editor}), server engine {engine}, {sys.platform}; times in ms")
    print(f"{'measure':28s} {'n':>5s} {'p50':>7s} {'p95':>7s} {'mean':>7s} {'max':>7s}  note")
    for r in rows:
        print(f"{r['measure']:28s} {r['n']:5d} {r['p50_ms']:7.1f} {r['p95_ms']:7.1f} {r['mean_ms']:7.1f} "
              f"{r['max_ms']:7.1f}  {r['note']}")
    ratio = rows[0]["p50_ms"] / rows[-1]["p50_ms"]
    print(f"page / python client, p50: {ratio:.2f}×")
    out = Path(args.csv)
    write_csv(out, [{**r, "model": args.model, "engine": engine} for r in rows])
    print(f"→ {out}" + (f", {args.screenshot}" if args.screenshot else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
