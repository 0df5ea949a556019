"""`ctfgen serve`: the page's input checks and generation (no web framework), then the real command
in a subprocess on a free loopback port, driven by headless Chromium (Debian's chromium and
chromium-driver, through Selenium; nothing is downloaded) and hit by a burst of 20 requests.

The browser test skips only when chromium or chromedriver is not installed; scripts/setup.sh
installs both, and Gradio and Selenium come with `pip install -e ".[test]"`.
Environment: CTFGEN_SERVE_SCREENSHOT=PNG keeps the page's screenshot there (the README's comes from
this test); CTFGEN_SERVE_PIPELINES=CTF_DIR,BASELINE_DIR serves those pipelines instead of tiny ones.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import types
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from ctfgen.apps.web import PageRequest, PageService, class_names_for
from ctfgen.errors import CtfgenError
from ctfgen.sample import BaselinePipeline, CTFPipeline, make_pipeline
from ctfgen.tokenizer import VQModel
from ctfgen.tokenizer.artifact import TokenizerArtifact, save_tokenizer
from ctfgen.tokenizer.model import vq_preset
from test_sample import CLASSES, TINY_VQ, free_port, make_folders

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,1100"]
MAX_IMAGES = 4


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory) -> dict[str, Path]:
    given = os.environ.get("CTFGEN_SERVE_PIPELINES")
    if given:
        ctf, base = given.split(",")
        return {"ctf": Path(ctf), "baseline": Path(base)}
    root = tmp_path_factory.mktemp("serve")
    f = make_folders(root)
    return {"ctf": make_pipeline(root / "pipe-ctf", tokenizer=f["tokenizer"], ar=f["ar"], aux=f["aux"]),
            "baseline": make_pipeline(root / "pipe-base", tokenizer=f["tokenizer"], baseline=f["baseline"])}


@pytest.fixture(scope="module")
def service(pipelines) -> PageService:
    return PageService(CTFPipeline.from_pretrained(pipelines["ctf"]),
                       BaselinePipeline.from_pretrained(pipelines["baseline"]), max_images=MAX_IMAGES)


# ---------------------------------------------------------------- the page's logic

@pytest.mark.parametrize("field, value, message", [
    ("class_id", 7, "class: 7 is not a class of this model; pick one of 0..2"),
    ("class_id", "-1", "class: -1 is not a class"),
    ("class_id", "shoe", "class: 'shoe' is neither a class id (0..2) nor a class name"),
    ("count", 9, "number of images: 9 is more than this server allows (at most 4, set by `ctfgen serve --max-images`)"),
    ("count", 0, "number of images: must be at least 1"),
    ("count", 1.5, "number of images: must be a whole number"),
    ("count", None, "number of images: enter a number"),
    ("seed", -3, "seed: must be >= 0"),
    ("guidance_scale", 0.5, "guidance scale: must be >= 1 (1 = no guidance), got 0.5"),
    ("temperature", 0, "temperature: must be > 0, got 0"),
    ("stage2_temperature", -1, "stage-2 temperature: must be > 0, got -1"),
    ("top_k", -2, "top-k: must be >= 0"),
    ("top_p", 1.5, "top-p: must be in (0, 1]"),
    ("top_p", float("nan"), "top-p: must be a finite number"),
])
def test_bad_input_names_the_field(service, field, value, message):
    req = PageRequest(**{**vars(service.defaults()), field: value})
    with pytest.raises(CtfgenError) as e:
        service.generate(req)
    assert message in str(e.value)


def test_page_result_ctf_and_baseline_same_seeds(service):
    req = PageRequest(**{**vars(service.defaults()), "class_id": "2", "count": 3, "seed": 5, "temperature": 1.3})
    r = service.generate(req)
    ctf = service.ctf.generate([2, 2, 2], seed=5, temperature=1.3)
    base = service.baseline.generate([2, 2, 2], seed=5, temperature=1.3, guidance_scale=r.settings["guidance_scale"])
    assert r.seeds == ctf.seeds == base.seeds and r.label == 2
    H = ctf.images.shape[1]
    assert r.ctf_images.shape == (3, H, H, 3) and np.array_equal(r.ctf_images[..., :1], ctf.images)
    assert np.array_equal(r.baseline_images[..., :1], base.images)
    assert r.triplets.shape == (3, H, 3 * H + 2, 3)
    assert r.ctf_seconds > 0 and r.baseline_seconds > 0


def test_class_names(service, tmp_path):
    assert service.class_names == ["0", "1", "2"] and service.label_of(1) == "1"
    assert service.parse_class("2: anything") == 2
    named = PageService(service.ctf, class_names=["cat", "Dog", "bird"])
    assert named.parse_class("dog") == 1 and named.class_choices()[2] == ("2: bird", "2")
    with pytest.raises(CtfgenError, match="2 names given, but the pipeline has 3 classes"):
        PageService(service.ctf, class_names=["a", "b"])
    # a tokenizer trained on Fashion-MNIST: its manifest records the source, so the page names classes
    tok = tmp_path / "tok"
    save_tokenizer(VQModel(vq_preset("fmnist", **TINY_VQ)), tok,
                   made_from={"data_description": {"source": "fashion-mnist"}})
    parts = {"folders": {"tokenizer": tok}, "artifacts": {"tokenizer": TokenizerArtifact.load(tok)}}
    fake = types.SimpleNamespace(num_classes=10, **parts)
    assert class_names_for(fake)[9] == "Ankle boot"
    assert class_names_for(types.SimpleNamespace(num_classes=CLASSES, **parts)) == ["0", "1", "2"]


def test_class_names_come_from_the_tokenizer_s_classes_json(tmp_path):
    """A folder data set's class names (classes.json, written by `tokenizer train`) reach the page, also
    through a copied pipeline folder (issue 22: the page showed ids); --class-names takes such a file too."""
    from ctfgen.data.classes import class_table, classes_json
    from ctfgen.tokenizer import load_tokenizer

    f = make_folders(tmp_path / "f")
    table = classes_json(class_table(["cat", "dog", "bird"], {"train": [5, 5, 5]}, source="folder"))
    save_tokenizer(load_tokenizer(f["tokenizer"]), f["tokenizer"], overwrite=True, extra_files={"classes.json": table},
                   made_from={"data_description": {"source": "folder"}})
    pipe = make_pipeline(tmp_path / "pipe", tokenizer=f["tokenizer"], ar=f["ar"], aux=f["aux"])
    assert PageService(CTFPipeline.from_pretrained(pipe)).class_names == ["cat", "dog", "bird"]
    from ctfgen.apps.cli.serve import _class_names

    (tmp_path / "codes-classes.json").write_bytes(table)
    assert _class_names(str(tmp_path / "codes-classes.json")) == ["cat", "dog", "bird"]
    assert _class_names("a,b,c") == ["a", "b", "c"]
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(CtfgenError, match="bad.json: not a readable classes.json"):
        _class_names(str(tmp_path / "bad.json"))


def test_service_refuses_mismatched_pipelines(service):
    with pytest.raises(CtfgenError, match="must be a CTF pipeline"):
        PageService(service.baseline)
    with pytest.raises(CtfgenError, match="must be a baseline pipeline"):
        PageService(service.ctf, service.ctf)
    with pytest.raises(CtfgenError, match="--max-images must be >= 1"):
        PageService(service.ctf, max_images=0)


def test_page_outputs_turn_errors_into_a_message(service, tmp_path):
    from ctfgen.apps.web.app import ImageFiles, page_outputs  # the handler itself needs no Gradio

    files = ImageFiles(tmp_path / "png")
    bad = PageRequest(**{**vars(service.defaults()), "guidance_scale": 0.2})
    ctf, base, steps, status = page_outputs(service, bad, files)
    assert (ctf, base, steps) == ([], [], []) and status.startswith("**Error:** guidance scale")
    ctf, base, steps, status = page_outputs(service, service.defaults(), files)
    assert len(ctf) == len(base) == len(steps) == MAX_IMAGES and "CTF:" in status and "baseline:" in status
    from PIL import Image

    r = service.generate(service.defaults())
    assert np.array_equal(np.asarray(Image.open(ctf[0][0]).convert("RGB")), r.ctf_images[0])
    assert ctf[0][1] == "#1" and Image.open(steps[0][0]).size == (r.triplets.shape[2], r.triplets.shape[1])
    # the same images again: the same files, not rewritten; old files are pruned
    before = {p: Path(p).stat().st_ino for p, _ in ctf}
    again = page_outputs(service, service.defaults(), files)[0]
    assert {p: Path(p).stat().st_ino for p, _ in again} == before
    os.utime(again[0][0], (0, 0))
    files.prune()
    assert not Path(again[0][0]).exists() and Path(again[1][0]).exists()


# ---------------------------------------------------------------- the Edit tab's logic

def test_edit_service_each_edit_and_its_source(service, tmp_path):
    from PIL import Image

    from ctfgen.apps.web.edit_service import EditRequest, run_edit
    from ctfgen.sample.edit_sources import samples_source

    sampling = PageRequest(**{**vars(service.defaults()), "class_id": "1", "seed": 4})
    drawn = service.ctf.generate([1, 1], seed=4)
    H = drawn.images.shape[1]
    r = run_edit(service, EditRequest(source="generated", index=2, kind="complete", keep_rows=2, count=2,
                                      sampling=sampling))
    assert r.label == 1 and r.ctf_images.shape == (2, H, H, 3) and r.baseline_images.shape == (2, H, H, 3)
    grid = service.ctf.models["ar"].config.grid
    assert r.record["kept_tokens"] == 2 * grid and r.coarse_after.shape == (2, H, H, 3)
    direct = service.ctf.complete(samples_source(drawn, [1]), keep_tokens=2 * grid, n=2, seed=0)
    assert np.array_equal(r.ctf_images[..., :1], direct.samples.images)  # image #2 of the Generate tab
    r = run_edit(service, EditRequest(kind="inpaint", top=0, left=1, height=2, width=2, mode="detail", count=1,
                                      sampling=sampling))
    assert r.record["mode"] == "detail" and "raster order" in r.note and r.baseline_images is not None
    png = tmp_path / "up.png"
    Image.fromarray(drawn.images[0][..., 0]).save(png)
    r = run_edit(service, EditRequest(source="upload", upload=str(png), kind="vary", count=3, sampling=sampling))
    assert r.ctf_images.shape[0] == 3 and r.baseline_images is None and "no detail variations" in r.note
    assert np.array_equal(r.coarse_before[0], r.coarse_after[0])  # variations keep the coarse map


@pytest.mark.parametrize("field, value, message", [
    ("kind", "blur", "edit: pick one of vary, complete, inpaint, got 'blur'"),
    ("count", 9, "edits: 9 is outside 1..4"),
    ("keep_rows", 99, "rows to keep: 99 is outside 0..4"),
    ("height", 0, "region: 0x4 tokens is empty"),
    ("top", 3, "region: rows 3..6, columns 0..3 leave the 4x4 token grid"),
    ("source", "upload", "upload: choose an image file first"),
    ("index", 7, "generated image #: 7 is outside 1..4"),
])
def test_edit_bad_input_names_the_field(service, field, value, message):
    from ctfgen.apps.web.edit_service import EditRequest, run_edit

    base = dict(kind="inpaint" if field in ("height", "top") else "complete", top=0, left=0, height=4, width=4)
    with pytest.raises(CtfgenError) as e:
        run_edit(service, EditRequest(**{**base, field: value}, sampling=service.defaults()))
    assert message in str(e.value)


# ---------------------------------------------------------------- the real server

def _get(url: str, timeout: float = 5.0) -> int:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status


@pytest.fixture(scope="module")
def server(pipelines):
    """`ctfgen serve` in a subprocess on a free loopback port; yields its URL."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        pytest.fail("Gradio is not installed: run scripts/setup.sh (pip install -e '.[test]' brings the [web] extra)")
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "ctfgen", "serve", "--pipeline", str(pipelines["ctf"]),
                             "--baseline-pipeline", str(pipelines["baseline"]), "--port", str(port),
                             "--max-images", str(MAX_IMAGES), "--device", "cpu", "--threads", "1"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 120  # ~10 s on an idle 2-core machine; more under load
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"ctfgen serve exited with {proc.returncode}:\n{log.read().decode()[-3000:]}")
            try:
                if _get(url) == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail("ctfgen serve did not answer within 120 s")
            time.sleep(0.3)
        yield types.SimpleNamespace(url=url, proc=proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("chromium and chromedriver are not installed (scripts/setup.sh installs Debian's packages)")
    os.environ.setdefault("SE_AVOID_STATS", "true")  # Selenium Manager is never run (both paths given)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="ctfgen-chromium-")
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _resolution(pipeline: Path) -> int:
    manifest = json.loads((pipeline / "manifest.json").read_text())
    tok = Path(manifest["config"]["components"]["tokenizer"])
    tok = tok if tok.is_absolute() else pipeline / tok
    return int(json.loads((tok / "manifest.json").read_text())["config"]["resolution"])


def _natural_widths(driver, gallery: str) -> list[int]:
    """Widths of the gallery's loaded images (thumbnails load lazily: below the fold they would not)."""
    return driver.execute_script(
        "const imgs = Array.from(document.querySelectorAll(arguments[0] + ' img'));"
        "imgs.forEach(i => { i.loading = 'eager'; });"
        "return imgs.filter(i => i.complete && i.naturalWidth > 0).map(i => i.naturalWidth);", f"#{gallery}")


def _set_number(driver, elem_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(value, Keys.TAB)


def _status(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, "#status").text


def test_page_in_a_real_browser(server, browser, pipelines, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    H = _resolution(pipelines["ctf"])
    browser.get(server.url)
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#generate"))
    # pick class 2 from the drop-down, ask for 3 images
    browser.find_element(By.CSS_SELECTOR, "#class input").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#class [role=option][data-index='2']"))[0].click()
    _set_number(browser, "count", "3")
    browser.find_element(By.CSS_SELECTOR, "#generate").click()
    wait.until(lambda d: len(_natural_widths(d, "coarse-to-fine")) == 3 and len(_natural_widths(d, "ctf")) == 3
               and len(_natural_widths(d, "baseline")) == 3)
    assert _natural_widths(browser, "ctf") == [H] * 3
    assert _natural_widths(browser, "baseline") == [H] * 3
    assert _natural_widths(browser, "coarse-to-fine") == [3 * H + 2] * 3
    status = _status(browser)
    assert status.startswith("3 images of class 2") and "CTF:" in status and "baseline:" in status
    shot = Path(os.environ.get("CTFGEN_SERVE_SCREENSHOT") or tmp_path / "serve.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000

    # bad input: a message on the page, the earlier images gone
    _set_number(browser, "guidance", "0.5")
    browser.find_element(By.CSS_SELECTOR, "#generate").click()
    wait.until(lambda d: _status(d).startswith("Error:"))
    assert "guidance scale: must be >= 1 (1 = no guidance), got 0.5" in _status(browser)
    assert _natural_widths(browser, "ctf") == []
    _set_number(browser, "guidance", "2")
    _set_number(browser, "count", str(MAX_IMAGES + 1))
    browser.find_element(By.CSS_SELECTOR, "#generate").click()
    wait.until(lambda d: "number of images" in _status(d))
    assert f"{MAX_IMAGES + 1} is more than this server allows (at most {MAX_IMAGES}" in _status(browser)


def test_burst_of_20_requests_all_answered(server):
    """20 requests at once through Gradio's HTTP API (a quarter of them invalid): every one answered,
    in turn, and the server still up."""
    from gradio_client import Client

    client = Client(server.url, verbose=False)
    good = ["1", 2, 7, 2.0, 1.1, 0, 1.0, 1.1]
    bad = ["1", 2, 7, 0.5, 1.1, 0, 1.0, 1.1]

    def ask(i: int):
        return client.predict(*(bad if i % 4 == 3 else good), api_name="/generate")

    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(ask, range(20), timeout=120))
    assert len(results) == 20
    for i, (ctf, base, steps, status) in enumerate(results):
        if i % 4 == 3:
            assert status.startswith("**Error:** guidance scale") and ctf == []
        else:
            assert status.startswith("2 images of class 1") and len(ctf) == len(base) == len(steps) == 2
    assert server.proc.poll() is None and _get(server.url) == 200


def _edit_status(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, "#edit-status").text


def _choose(driver, elem_id: str, value: str) -> None:
    """Click the radio button `value` of the radio group `elem_id`."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input[value='{value}']").click()


def test_edit_tab_in_a_real_browser(server, browser, pipelines, tmp_path):
    """One edit of each kind on the Edit tab: completion and region resampling of a generated image,
    detail variations of an uploaded PNG; then a bad value, reported on the page."""
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    H = _resolution(pipelines["ctf"])
    browser.get(server.url)
    wait = WebDriverWait(browser, 120)  # a loaded 2-core machine: several edits and an upload
    tab = wait.until(lambda d: [b for b in d.find_elements(By.CSS_SELECTOR, "button[role=tab]") if b.text == "Edit"])
    tab[0].click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#edit-run"))
    for kind, choices in [("complete", []), ("inpaint", [("edit-mode", "detail")])]:
        _choose(browser, "edit-kind", kind)
        for elem, value in choices:
            _choose(browser, elem, value)
        browser.find_element(By.CSS_SELECTOR, "#edit-run").click()
        wait.until(lambda d: _edit_status(d).startswith(f"{kind}: 3 edits")
                   and len(_natural_widths(d, "edit-ctf")) == 3 and len(_natural_widths(d, "edit-baseline")) == 3
                   and len(_natural_widths(d, "edit-coarse-after")) == 3 and len(_natural_widths(d, "edit-before")) == 2)
        assert _natural_widths(browser, "edit-ctf") == [H] * 3 and "baseline:" in _edit_status(browser)
    png = tmp_path / "upload.png"
    Image.fromarray(np.full((H, H), 90, np.uint8)).save(png)
    _choose(browser, "edit-source", "upload")
    browser.find_element(By.CSS_SELECTOR, "#edit-upload input[type=file]").send_keys(str(png))
    # uploaded: the component links to the server's copy (its name is shown split in spans)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#edit-upload a[href$='upload.png']"))
    _choose(browser, "edit-kind", "vary")
    browser.find_element(By.CSS_SELECTOR, "#edit-run").click()
    wait.until(lambda d: _edit_status(d).startswith("vary: 3 edits") and len(_natural_widths(d, "edit-ctf")) == 3)
    assert "no detail variations" in _edit_status(browser) and _natural_widths(browser, "edit-baseline") == []
    shot = Path(os.environ.get("CTFGEN_EDIT_SCREENSHOT") or tmp_path / "edit.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000

    _choose(browser, "edit-kind", "complete")
    _set_number(browser, "edit-keep-rows", "99")
    browser.find_element(By.CSS_SELECTOR, "#edit-run").click()
    wait.until(lambda d: _edit_status(d).startswith("Error:"))
    assert "rows to keep: 99 is outside 0.." in _edit_status(browser) and _natural_widths(browser, "edit-ctf") == []
