"""A real Label Studio (issue 28, item 5): ripeye's drafts imported, shown, accepted, exported and read back."""

# Label Studio runs from its own venv (.venv-labelstudio, `./install.sh --dev --labelstudio`: its pins would downgrade
# the main venv's numpy and OpenCV) on a SQLite in a temp dir and a free loopback port, serving the exported images
# as local files; tests/labelstudio_sdk.py drives it through the SDK from that venv. Without it the test is skipped.

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from pycocotools.coco import COCO

from tests.conftest import REPO, free_port
from tests.test_dataset import CLASSES, _close, _run, _xyxy, store  # noqa: F401  (store: the capture store fixture)
from tests.test_liveview_browser import _browser, _until

LS_VENV = Path(os.environ.get("RIPEYE_LABELSTUDIO_VENV", REPO / ".venv-labelstudio"))
LS_BIN = LS_VENV / "bin" / "label-studio"
DRIVER = Path(__file__).with_name("labelstudio_sdk.py")
USER, PASSWORD, TOKEN = "grower@ripeye.test", "tomatoes-2026", "ripeye-test-token-4f2a9c"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not LS_BIN.exists(), reason=f"Label Studio is not installed (no {LS_BIN}): "
                                                             "`./install.sh --dev --labelstudio` installs it; CI does")]


@contextlib.contextmanager
def label_studio(tmp_path: Path, document_root: Path):
    """`label-studio start` on a fresh SQLite (a copy of the template install.sh migrated, else migrated now: minutes),
    with the test user and its API token, serving local files under DOCUMENT_ROOT; yields its URL, stops it after."""
    data = tmp_path / "ls-data"
    data.mkdir()
    version = subprocess.run([LS_VENV / "bin" / "python", "-c", "import importlib.metadata as m; "
                              "print(m.version('label-studio'))"], capture_output=True, text=True).stdout.strip()
    template = LS_VENV / f"ripeye-empty-{version}.sqlite3"
    if template.is_file():
        (data / "label_studio.sqlite3").write_bytes(template.read_bytes())
    port = free_port()
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(data), "LATEST_VERSION_CHECK": "false",
           "LOCAL_FILES_SERVING_ENABLED": "true", "LOCAL_FILES_DOCUMENT_ROOT": str(document_root)}
    log = tmp_path / "label-studio.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([LS_BIN, "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
                                 "--data-dir", str(data), "--username", USER, "--password", PASSWORD,
                                 "--user-token", TOKEN, "--enable-legacy-api-token"],
                                env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + (180 if template.is_file() else 900)
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as r:
                    if json.loads(r.read()).get("status") == "UP":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise AssertionError(f"Label Studio did not come up on {url}:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _sdk(step: str, url: str, *args) -> dict:
    """One step of tests/labelstudio_sdk.py in Label Studio's venv; its JSON answer."""
    done = subprocess.run([LS_VENV / "bin" / "python", DRIVER, step, url, TOKEN, *map(str, args)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"labelstudio_sdk.py {step} failed:\n{done.stderr[-4000:]}"
    return json.loads(done.stdout.splitlines()[-1])


def _pre_annotation(browser, width: int):
    """What the labelling page shows once the image is in and the drafts are drawn on it: its regions' labels."""
    return browser.execute_script("""
        const store = window.Htx && window.Htx.annotationStore;
        const image = [...document.querySelectorAll('img')].find(i => i.src.startsWith('blob:') && i.complete);
        if (!store || !store.selected || !image || image.naturalWidth !== arguments[0]) return null;
        return {labels: store.selected.regions.map(r => r.labelName),
                predictions: store.predictions.map(p => p.regions.length)};""", width)


def screenshot_task(url: str, project: int, task: dict, shots: Path, tmp_path: Path) -> dict:
    """Log in as the grower, open the task: its drafts are the pre-annotation on the image. The README's picture."""
    browser = _browser(tmp_path)
    try:
        browser.set_window_size(1400, 860)
        browser.get(url + "/user/login/")
        browser.find_element("id", "email").send_keys(USER)
        browser.find_element("id", "password").send_keys(PASSWORD)
        browser.find_element("css selector", "button[type=submit]").click()
        _until(lambda: "/user/login" not in browser.current_url, 60, "the login")
        browser.get(f"{url}/projects/{project}/data?task={task['id']}")
        width = task["predictions"][0]["result"][0]["original_width"]
        drafts = len(task["predictions"][0]["result"])

        def drawn():
            shown = _pre_annotation(browser, width)
            return shown if shown and len(shown["labels"]) == drafts else None

        shown = _until(drawn, 120, "the task's image and its drafts on the labelling page")
        time.sleep(1.5)  # the canvas draws the boxes after the store has them
        browser.save_screenshot(str(shots / "labelstudio.png"))
        return shown
    finally:
        browser.quit()


def test_drafts_go_through_label_studio_and_come_back_within_a_pixel(store, tmp_path):  # noqa: F811
    root, drafts = store
    export_dir = tmp_path / "export"
    rc, out, err = _run("export", root, "--to", export_dir, "--format", "labelstudio", "--triggers", "all")
    assert rc == 0, err
    tasks = json.loads((export_dir / "tasks.json").read_text())
    shots = Path(os.environ.get("RIPEYE_SCREENSHOT_DIR", tmp_path))
    started = time.time()
    with label_studio(tmp_path, export_dir) as url:
        up = time.time()
        made = _sdk("setup", url, export_dir / "labelconfig.xml", export_dir / "tasks.json", export_dir / "images")
        project = made["project"]
        assert made["label_config"].strip() == (export_dir / "labelconfig.xml").read_text().strip()
        assert made["imported"]["task_count"] == len(tasks) == 4 and made["imported"]["prediction_count"] == 4
        # every draft is a prediction, as exported: class, box, score, model version; nothing annotated yet
        by_file = {t["data"]["file"]: t for t in made["tasks"]}
        assert sorted(by_file) == sorted(t["data"]["file"] for t in tasks)
        for sent in tasks:
            got = by_file[sent["data"]["file"]]
            assert got["annotations"] == 0 and got["data"] == sent["data"]
            (pred,) = got["predictions"]
            assert pred["model_version"] == sent["predictions"][0]["model_version"] == "tomato-yolo11n 2026.12.04"
            assert pred["score"] == pytest.approx(sent["predictions"][0]["score"])
            assert len(pred["result"]) == len(sent["predictions"][0]["result"]) >= 2
            for r, s in zip(pred["result"], sent["predictions"][0]["result"]):
                assert r["value"]["rectanglelabels"] == s["value"]["rectanglelabels"] and r["score"] == s["score"]
                assert _close([r["value"][k] for k in ("x", "y", "width", "height")],
                              [s["value"][k] for k in ("x", "y", "width", "height")], 1e-9)
            # Label Studio serves the exported image itself (local files under LOCAL_FILES_DOCUMENT_ROOT)
            req = urllib.request.Request(url + got["data"]["image"], headers={"Authorization": f"Token {TOKEN}"})
            with urllib.request.urlopen(req, timeout=30) as r:
                assert r.read() == (export_dir / "images" / sent["data"]["file"]).read_bytes()

        shown_task = next(t for t in made["tasks"] if t["data"]["trigger"] == "failed")
        shown = screenshot_task(url, project, shown_task, shots, tmp_path)
        assert shown["labels"] == [r["value"]["rectanglelabels"][0] for r in shown_task["predictions"][0]["result"]]
        assert shown["predictions"] == [len(shown_task["predictions"][0]["result"])]

        accepted = _sdk("accept", url, project)["annotations"]
        assert sorted(a["regions"] for a in accepted) == sorted(len(t["predictions"][0]["result"]) for t in tasks)
        exported = _sdk("export", url, project, tmp_path / "label-studio-export.json")
        assert exported["tasks"] == 4
        in_ls = time.time() - up
    print(f"Label Studio: up in {up - started:.0f} s, project through export in {in_ls:.0f} s")

    back = json.loads((tmp_path / "label-studio-export.json").read_text())
    assert all(len(t["annotations"]) == 1 and t["annotations"][0]["parent_prediction"] for t in back)
    ds = tmp_path / "dataset"
    rc, out, err = _run("import", tmp_path / "label-studio-export.json", "--format", "labelstudio",
                        "--images", export_dir, "--out", ds)
    assert rc == 0, err
    assert f"imported 4 image(s), {sum(len(b) for _, b in drafts.values())} box(es)" in out
    coco = json.loads((ds / "annotations" / "field.json").read_text())
    assert [c["name"] for c in coco["categories"]] == CLASSES
    for im in coco["images"]:
        labels, boxes = drafts[im["file_name"]]
        assert (ds / "field" / im["file_name"]).is_file() and im["trigger"] == labels["trigger"]
        assert im.get("holdout", False) == (labels["trigger"] == "sample")
        anns = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
        assert len(anns) == len(boxes)
        for a, box, d in zip(anns, boxes, labels["detections"]):
            assert _close(_xyxy(a["bbox"]), box), (im["file_name"], a["bbox"], box)  # within 1 px of the draft
            assert coco["categories"][a["category_id"] - 1]["name"] == d["class"]
    with contextlib.redirect_stdout(io.StringIO()):
        COCO(str(ds / "annotations" / "field.json"))  # as `ripeye eval` reads it
