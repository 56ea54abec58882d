"""The browser studio driven in a real headless Chromium against a real server on loopback: load the page, move
sliders, check each image against ``Model.edit``/``generate`` and the server's own ``/metrics``, the strips, the
order check, downloads fed back to ``curvedit edit``, uploads good and bad. Skips without Selenium or Chromium."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from browser_util import canvas_rgb, chromium, wait_for, wait_idle
from PIL import Image
from service_util import metric

import curvedit
from curvedit.images import decode_image_file
from curvedit.service.background import BackgroundServer
from curvedit.service.config import ServeConfig

ROOT = Path(__file__).resolve().parents[1]
DRAWN = ROOT / "docs" / "figures" / "drawn" / "shape_00.png"
INFER = "/v2/models/{name}/infer"
PIXEL_ATOL = 1  # uint8 rounding between the server's batch and a one-off local render


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def driver(downloads):
    session = chromium(download_dir=downloads)
    yield session
    session.quit()


@pytest.fixture(scope="module")
def server(tiny_bundle, tiny_vae_bundle, driver):
    config = ServeConfig(port=0, http_port=0, metrics_port=0, models=(str(tiny_bundle), str(tiny_vae_bundle)),
                         max_batch_size=64, engine="torch")
    with BackgroundServer(config) as bg:
        yield bg


@pytest.fixture(scope="module")
def models(tiny_bundle, tiny_vae_bundle):
    return {"tiny": curvedit.load(tiny_bundle, engine="torch"), "tinyvae": curvedit.load(tiny_vae_bundle,
                                                                                         engine="torch")}


@pytest.fixture
def page(driver, server):
    """The page freshly loaded, first image drawn."""
    driver.get(f"http://127.0.0.1:{server.server.http_port}/")
    wait_idle(driver)
    return driver


def studio(driver) -> dict:
    return driver.execute_script("const s = window.curveditStudio; return {z: s.z, t: s.t, updates: s.updates, "
                                 "model: s.model.name, editor: s.editor, directions: s.directions, "
                                 "commutation: s.commutation, source: s.source, latencies: s.latencies};")


def infer_count(server, code: str = "200") -> float:
    return metric(server.server.metrics_port, "curvedit_http_requests_total", route=INFER, code=code)


def expected_image(model, s: dict) -> np.ndarray:
    z = np.float32([s["z"]])
    return model.generate(model.edit(z, np.float32([s["t"]]), editor=s["editor"]))[0]


def drag(driver, element_id: str, dx: int) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    slider = driver.find_element(By.ID, element_id)
    ActionChains(driver).click_and_hold(slider).move_by_offset(dx // 2, 0).move_by_offset(dx - dx // 2, 0) \
        .release().perform()


def message(driver) -> str:
    return wait_for(driver, "!document.getElementById('message').hidden && "
                            "document.getElementById('message-text').textContent", what="a visible message")


def test_page_shows_every_model_and_a_slider_per_direction(page, models):
    from selenium.webdriver.common.by import By

    options = [o.get_attribute("value") for o in page.find_elements(By.CSS_SELECTOR, "#model option")]
    assert options == ["tiny", "tinyvae"]
    labels = [e.text for e in page.find_elements(By.CSS_SELECTOR, ".direction .name")]
    assert labels == ["x", "y", "scale", "rotation"]
    assert "standard deviation" in page.find_element(By.ID, "units").text
    s = studio(page)
    assert s["source"] == {"seed": 0} and s["t"] == [0, 0, 0, 0]
    np.testing.assert_array_equal(np.float32(s["z"]), models["tiny"].sample(1, seed=0)[0])
    np.testing.assert_allclose(canvas_rgb(page, "image"), expected_image(models["tiny"], s), atol=PIXEL_ATOL)
    assert not [e for e in page.get_log("browser") if e["level"] == "SEVERE"]


def test_moving_a_slider_changes_the_image_through_the_server(page, server, models):
    before_image, before_count = canvas_rgb(page, "image"), infer_count(server)
    before_updates = studio(page)["updates"]
    drag(page, "slider-2", 120)  # scale, by mouse
    wait_for(page, f"window.curveditStudio.updates > {before_updates}")
    wait_idle(page)
    s = studio(page)
    assert s["t"][2] > 0.3 and s["t"][:2] == [0, 0]
    after = canvas_rgb(page, "image")
    assert (after != before_image).any(), "the image did not change"  # (the tiny model's images are faint)
    np.testing.assert_allclose(after, expected_image(models["tiny"], s), atol=PIXEL_ATOL)
    assert infer_count(server) > before_count  # the edit went through the server's OIP endpoint
    assert s["latencies"] and max(s["latencies"]) < 5000


def test_strips_and_the_order_check(page, models):
    from selenium.webdriver.common.by import By

    page.find_elements(By.CSS_SELECTOR, "#strip-0 canvas")[5].click()  # x = +1 from its strip
    drag(page, "slider-3", -100)  # rotation
    wait_for(page, "window.curveditStudio.commutation !== null && window.curveditStudio.idle()")
    s = studio(page)
    assert s["t"][0] == 1 and s["t"][3] < -0.2
    c = s["commutation"]
    assert (c["order"], c["reverse"]) == ("x → rotation", "rotation → x")
    assert c["maxPixelDiff"] <= 2 and c["maxLatentDiff"] < 1e-4  # the edits commute
    model = models["tiny"]
    np.testing.assert_allclose(canvas_rgb(page, "order-a"), expected_image(model, s), atol=2)
    text = page.find_element(By.ID, "commute-result").text
    assert f"max pixel difference {c['maxPixelDiff']} of 255" in text
    # Each strip: its direction from -1.5 to +1.5 with the other amounts held.
    z, t = np.float32([s["z"]]), np.float32(s["t"])
    for k in range(4):
        amounts = np.repeat(t[None], 7, 0)
        amounts[:, k] = [-1.5, -1, -0.5, 0, 0.5, 1, 1.5]
        expected = model.generate(model.edit(np.repeat(z, 7, 0), amounts))
        got = np.stack([canvas_rgb(page, f"strip-{k}-{i}") for i in range(7)])
        np.testing.assert_allclose(got, expected, atol=PIXEL_ATOL)


def test_reset_returns_to_the_unedited_image(page, models):
    from selenium.webdriver.common.by import By

    drag(page, "slider-0", 150)
    wait_for(page, "window.curveditStudio.t[0] !== 0")
    wait_idle(page)
    page.find_element(By.ID, "reset").click()
    wait_for(page, "window.curveditStudio.t.every((v) => v === 0)")
    wait_idle(page)
    s = studio(page)
    unedited = models["tiny"].generate(np.float32([s["z"]]))[0]
    np.testing.assert_allclose(canvas_rgb(page, "image"), unedited, atol=PIXEL_ATOL)
    assert [e.get_attribute("value") for e in page.find_elements(By.CSS_SELECTOR, ".direction input")] == ["0"] * 4


def test_downloads_feed_back_to_curvedit_edit(page, models, downloads, tiny_bundle, tmp_path):
    from selenium.webdriver.common.by import By

    seed = page.find_element(By.ID, "seed")
    seed.clear()
    seed.send_keys("5")
    page.find_element(By.ID, "use-seed").click()
    wait_for(page, "window.curveditStudio.source.seed === 5")
    drag(page, "slider-1", 100)
    page.find_elements(By.CSS_SELECTOR, "#strip-0 canvas")[1].click()  # x = -1
    wait_for(page, "window.curveditStudio.t[0] === -1 && window.curveditStudio.t[1] > 0")
    wait_idle(page)
    page.find_element(By.ID, "download-png").click()
    page.find_element(By.ID, "download-json").click()
    png, state = downloads / "curvedit-tiny-seed5.png", downloads / "curvedit-tiny-seed5.json"
    saved = _when_written(png, state)
    s = studio(page)
    assert saved["model"] == "tiny" and saved["editor"] == "decurved" and saved["source"] == {"seed": 5}
    assert saved["edits"] == dict(zip(s["directions"], s["t"], strict=True))
    # The JSON runs again on the command line (the bundle by path: "tiny" is not a shipped model's name).
    cli = shutil.which("curvedit", path=str(Path(sys.executable).parent))
    done = subprocess.run([cli, "edit", "--state", str(state), "--model", str(tiny_bundle), "--engine", "torch",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    model = models["tiny"]
    np.testing.assert_array_equal(np.load(tmp_path / "latents.npy"), model.sample(1, seed=5))
    edited = np.load(tmp_path / "edited.npy")
    image = np.asarray(Image.open(png).convert("RGB"))
    assert image.shape == (32, 32, 3)
    np.testing.assert_allclose(image, model.generate(edited)[0], atol=PIXEL_ATOL)


def _when_written(png: Path, state: Path, timeout: float = 20.0) -> dict:
    """The downloaded state once both files are complete: Chromium creates a download's file before it has
    written all of it (a loaded CI machine read an empty JSON file), so wait until the JSON parses and the PNG
    opens."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            saved = json.loads(state.read_text())
            Image.open(png).verify()
            return saved
        except (OSError, ValueError, SyntaxError):  # PIL raises SyntaxError for a cut-off PNG
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _choose_model(page, name: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(page.find_element("id", "model")).select_by_value(name)
    wait_for(page, f"window.curveditStudio.model.name === '{name}' && window.curveditStudio.z !== null")
    wait_idle(page)


def test_upload_starts_from_the_encoded_image(page, models):
    _choose_model(page, "tinyvae")
    page.find_element("id", "upload").send_keys(str(DRAWN))
    wait_for(page, "window.curveditStudio.source.image === 'shape_00.png'")
    wait_idle(page)
    s = studio(page)
    vae = models["tinyvae"]
    expected = vae.encode(decode_image_file(DRAWN.read_bytes(), vae.image_shape)[None])[0]
    np.testing.assert_allclose(np.float32(s["z"]), expected, atol=1e-5)
    np.testing.assert_allclose(canvas_rgb(page, "image"), expected_image(vae, s), atol=PIXEL_ATOL)


def _oversized(tmp_path: Path) -> Path:
    path = tmp_path / "huge.png"
    with path.open("wb") as f:  # sparse: 40 MB on paper, nothing on disk
        f.truncate(40 * 1024 * 1024)
    return path


@pytest.mark.parametrize(("make", "says", "reaches_server"), [
    (lambda tmp: (tmp / "notes.png").write_text("not an image\n") and tmp / "notes.png", "not a readable image",
     True),
    (_oversized, "over the 32 MB upload limit", False),
], ids=["not-an-image", "oversized"])
def test_bad_upload_shows_a_message_and_the_server_keeps_serving(page, server, tmp_path, make, says,
                                                                 reaches_server):
    _choose_model(page, "tinyvae")
    z = studio(page)["z"]
    before = metric(server.server.metrics_port, "curvedit_http_requests_total", code="400")
    page.find_element("id", "upload").send_keys(str(make(tmp_path)))
    assert says in message(page)
    after = metric(server.server.metrics_port, "curvedit_http_requests_total", code="400")
    assert after == before + (1 if reaches_server else 0)  # a too-large file is refused before it is sent
    assert studio(page)["z"] == z  # the current image stays
    updates = studio(page)["updates"]
    drag(page, "slider-0", 80)  # and editing goes on
    wait_for(page, f"window.curveditStudio.updates > {updates}")
    assert page.find_element("id", "message").is_displayed()  # the message stays until dismissed
    page.find_element("id", "message-close").click()
    assert not page.find_element("id", "message").is_displayed()
