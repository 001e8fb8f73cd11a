"""`ripeye dataset` (issue 28, item 2): a capture store of real photos (crops of the bundled sample clip's greenhouse
frames, drafts from the clip's ground truth) exported as COCO, YOLO and Label Studio tasks, and labelling-tool
exports imported back, bad records reported one by one."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import xml.etree.ElementTree as ET

import cv2
import pytest
import yaml

from daemon.cli import main
from daemon.config import SAMPLE_CLIP
from daemon.fieldstore import FieldStore
from tests.conftest import FIXTURES, MODEL_DIR

CLASSES = json.loads((MODEL_DIR / "metadata.json").read_text())["class_names"]
# trigger, crop (x, y, w, h) of a 640x640 clip frame, extra labels.json fields; non-square crops test normalisation
SAMPLES = [("failed", (40, 60, 560, 420), {"reason": "slipped off the gripper", "track_id": 7, "which": "offered"}),
           ("uncertain", (0, 100, 480, 540), {"reason": "2 detection(s) with confidence in [0.25, 0.5)"}),
           ("operator", (100, 0, 540, 600), {"note": "these green ones are half ripe"}),
           ("sample", (0, 0, 640, 480), {"reason": "random sample"})]


def _run(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["dataset", *map(str, argv)])
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A capture store written through FieldStore: real JPEG crops, drafts = the crop's ground-truth boxes (one of
    them reaching past the crop's edge, as detector boxes do), each with a confidence."""
    truth = {f["frame"]: f["boxes"] for f in json.loads((FIXTURES / "sample_clip_truth.json").read_text())["frames"]}
    clip = cv2.VideoCapture(str(SAMPLE_CLIP))
    frames = {}
    for i in range(1, max(truth) + 1):
        ok, image = clip.read()
        if not ok:
            break
        frames[i] = image
    clip.release()
    root = tmp_path_factory.mktemp("capture")
    fs, drafts = FieldStore(root), {}
    for n, (trigger, (cx, cy, cw, ch), extra) in enumerate(SAMPLES):
        frame_no = sorted(frames)[n * len(frames) // len(SAMPLES)]  # frames from different photos of the clip
        image = frames[frame_no][cy:cy + ch, cx:cx + cw]
        dets = []
        for k, t in enumerate(truth.get(frame_no, [])):
            x1, y1, x2, y2 = (t["box"][0] - cx, t["box"][1] - cy, t["box"][2] - cx, t["box"][3] - cy)
            if x2 <= 2 or y2 <= 2 or x1 >= cw - 2 or y1 >= ch - 2:
                continue
            dets.append({"class": t["class"], "confidence": round(0.3 + 0.07 * (k % 10), 2),
                         "box": [round(v, 1) for v in (x1, y1, x2, y2)], "track_id": 100 + k})
        assert len(dets) >= 2 and any(d["box"][0] < 0 or d["box"][1] < 0 or d["box"][2] > cw or d["box"][3] > ch
                                      for d in dets) or n
        labels = {"trigger": trigger, **extra, "frame_id": 1000 + n, "captured_at": 1796000000.0 + n,
                  "model": {"name": "tomato-yolo11n", "version": "2026.12.04"},
                  "image": {"width": cw, "height": ch}, "detections": dets}
        name = f"2026120{n}T120000-f{1000 + n}-{n}"
        fs.write(trigger, name, {"image.jpg": cv2.imencode(".jpg", image)[1].tobytes(),
                                 "labels.json": json.dumps(labels).encode()})
        drafts[f"{trigger}-{name}.jpg"] = (labels, [_clipped(d["box"], cw, ch) for d in dets])
    return root, drafts


def _clipped(box, w, h):
    x1, y1, x2, y2 = box
    return [max(0, x1), max(0, y1), min(w, x2), min(h, y2)]


def _close(a, b, tol=1.0):
    return len(a) == len(b) and all(abs(p - q) <= tol for p, q in zip(a, b))


def _same(boxes_a, boxes_b, tol):
    return len(boxes_a) == len(boxes_b) and all(_close(a, b, tol) for a, b in zip(boxes_a, boxes_b))


def _xyxy(bbox):
    x, y, w, h = bbox
    return [x, y, x + w, y + h]


def test_coco_export_loads_in_pycocotools_with_scores_and_sample_fields(store, tmp_path):
    from pycocotools.coco import COCO

    root, drafts = store
    rc, out, err = _run("export", root, "--to", tmp_path / "coco", "--format", "coco")
    assert rc == 0, err
    assert "exported 3 image(s) (1 failed, 1 operator, 1 uncertain)" in out
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(tmp_path / "coco" / "annotations.json"))
    assert [gt.cats[i]["name"] for i in sorted(gt.cats)] == CLASSES
    assert {im["trigger"] for im in gt.dataset["images"]} == {"failed", "uncertain", "operator"}  # no random sample
    for im in gt.dataset["images"]:
        labels, boxes = drafts[im["file_name"]]
        assert cv2.imread(str(tmp_path / "coco" / "images" / im["file_name"])).shape[:2] == (im["height"], im["width"])
        assert im["model_name"] == "tomato-yolo11n" and im["model_version"] == "2026.12.04"
        for key in ("reason", "note", "track_id", "which"):
            assert im.get(key) == labels.get(key)
        anns = gt.loadAnns(gt.getAnnIds(imgIds=[im["id"]]))
        assert _same([_xyxy(a["bbox"]) for a in anns], boxes, 0.01)
        assert [a["score"] for a in anns] == [d["confidence"] for d in labels["detections"]]
        assert [gt.cats[a["category_id"]]["name"] for a in anns] == [d["class"] for d in labels["detections"]]

    rc, out, err = _run("export", root, "--to", tmp_path / "all", "--format", "coco", "--triggers", "all",
                        "--min-confidence", "0.5")
    assert rc == 0, err
    coco = json.loads((tmp_path / "all" / "annotations.json").read_text())
    sample = [im for im in coco["images"] if im["trigger"] == "sample"]
    assert len(sample) == 1 and sample[0]["holdout"] is True and "marked holdout" in out
    assert all(a["score"] >= 0.5 for a in coco["annotations"]) and "drafts below --min-confidence" in out
    assert not any(im.get("holdout") for im in coco["images"] if im["trigger"] != "sample")

    rc, _, err = _run("export", root, "--to", tmp_path / "all", "--format", "coco")
    assert rc == 2 and "not an empty folder" in err


def test_yolo_export_is_normalised_to_each_image(store, tmp_path):
    root, drafts = store
    rc, _, err = _run("export", root, "--to", tmp_path / "y", "--format", "yolo", "--triggers", "failed,sample")
    assert rc == 0, err
    data = yaml.safe_load((tmp_path / "y" / "data.yaml").read_text())
    assert data["names"] == dict(enumerate(CLASSES)) and data["train"] == "images"
    files = sorted(p.name for p in (tmp_path / "y" / "images").iterdir())
    assert len(files) == 2 and {f.split("-")[0] for f in files} == {"failed", "sample"}
    meta = {row["file"]: row for row in json.loads((tmp_path / "y" / "samples.json").read_text())}
    for f in files:
        labels, boxes = drafts[f]
        h, w = cv2.imread(str(tmp_path / "y" / "images" / f)).shape[:2]
        assert w != h
        txt = tmp_path / "y" / "labels" / f.replace(".jpg", ".txt")
        rows = [line.split() for line in txt.read_text().splitlines()]
        assert [CLASSES[int(r[0])] for r in rows] == [d["class"] for d in labels["detections"]]
        for r, box in zip(rows, boxes):
            cx, cy, bw, bh = map(float, r[1:])
            assert all(0 <= v <= 1 for v in (cx, cy, bw, bh))
            assert _close([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], box, 0.01)
        assert meta[f]["trigger"] == labels["trigger"] and meta[f]["scores"] == [d["confidence"]
                                                                                 for d in labels["detections"]]


def _accept(tasks: list[dict]) -> list[dict]:
    """What Label Studio's JSON export holds after a person accepted every draft: one annotation per task whose result
    is the prediction's (without scores), an earlier one cancelled, ids and times as Label Studio writes them."""
    out = []
    for i, task in enumerate(tasks):
        result = [{k: v for k, v in r.items() if k != "score"} for p in task["predictions"] for r in p["result"]]
        out.append({"id": 40 + i, "data": task["data"], "predictions": task["predictions"],
                    "annotations": [{"id": 2 * i + 1, "was_cancelled": False, "created_at": "2026-12-05T09:00:00Z",
                                     "updated_at": "2026-12-05T09:00:00Z", "result": result[:1]},
                                    {"id": 2 * i + 2, "was_cancelled": False, "created_at": "2026-12-05T09:01:00Z",
                                     "updated_at": "2026-12-05T10:00:00Z", "result": result},
                                    {"id": 2 * i + 3, "was_cancelled": True, "created_at": "2026-12-05T11:00:00Z",
                                     "updated_at": "2026-12-05T11:00:00Z", "result": []}]})
    return out


def test_labelstudio_export_and_import_round_trip_within_a_pixel(store, tmp_path):
    from pycocotools.coco import COCO

    from daemon.evaluate import coco_metrics

    root, drafts = store
    ls = tmp_path / "ls"
    rc, out, err = _run("export", root, "--to", ls, "--format", "labelstudio", "--triggers", "all")
    assert rc == 0, err
    assert "LOCAL_FILES_DOCUMENT_ROOT" in out
    config = ET.fromstring((ls / "labelconfig.xml").read_text())
    assert config.find("Image").attrib == {"name": "image", "value": "$image"}
    rect = config.find("RectangleLabels")
    assert rect.attrib == {"name": "label", "toName": "image"}
    assert [label.attrib["value"] for label in rect] == CLASSES
    tasks = json.loads((ls / "tasks.json").read_text())
    assert len(tasks) == 4
    for task in tasks:
        data = task["data"]
        labels, boxes = drafts[data["file"]]
        assert data["image"] == f"/data/local-files/?d=images/{data['file']}"
        assert (ls / "images" / data["file"]).is_file()
        assert data["trigger"] == labels["trigger"] and data["model_version"] == "2026.12.04"
        assert data.get("note") == labels.get("note") and data.get("track_id") == labels.get("track_id")
        assert data.get("holdout", False) == (labels["trigger"] == "sample")
        (pred,) = task["predictions"]
        assert pred["model_version"] == "tomato-yolo11n 2026.12.04"
        assert pred["score"] == min(d["confidence"] for d in labels["detections"])
        for r, d in zip(pred["result"], labels["detections"]):
            assert r["type"] == "rectanglelabels" and r["from_name"] == "label" and r["to_name"] == "image"
            assert (r["original_width"], r["original_height"]) == (labels["image"]["width"], labels["image"]["height"])
            assert r["value"]["rectanglelabels"] == [d["class"]] and r["score"] == d["confidence"]
            assert all(0 <= r["value"][k] <= 100 for k in ("x", "y", "width", "height"))

    exported = tmp_path / "export.json"
    exported.write_text(json.dumps(_accept(tasks)))
    rc, out, err = _run("import", exported, "--format", "labelstudio", "--images", ls, "--out", tmp_path / "ds")
    assert rc == 0, err
    path = tmp_path / "ds" / "annotations" / "field.json"
    assert f"into {path}" in out
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(path))
    assert [gt.cats[i]["name"] for i in sorted(gt.cats)] == CLASSES
    assert len(gt.dataset["images"]) == 4
    for im in gt.dataset["images"]:
        labels, boxes = drafts[f"{im['trigger']}-{im['sample'].split('/')[1]}.jpg"]
        assert (tmp_path / "ds" / "field" / im["file_name"]).is_file()
        assert im.get("reason") == labels.get("reason") and im["labelstudio_task"] >= 40
        anns = gt.loadAnns(gt.getAnnIds(imgIds=[im["id"]]))
        assert len(anns) == len(boxes)  # the latest non-cancelled annotation, not the first
        for a, box, d in zip(anns, boxes, labels["detections"]):
            assert _close(_xyxy(a["bbox"]), box), (a["bbox"], box)
            assert gt.cats[a["category_id"]]["name"] == d["class"]
    # `ripeye eval` reads it: the labels scored against themselves are perfect
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
               for a in gt.dataset["annotations"]]
    metrics = coco_metrics(path, results, {c: c for c in CLASSES})
    assert metrics["mAP50"] == pytest.approx(1.0) and metrics["images"] == 4

    rc, _, err = _run("export", root, "--to", tmp_path / "url", "--format", "labelstudio",
                      "--image-root-url", "http://nas.local:8080/field/")
    tasks = json.loads((tmp_path / "url" / "tasks.json").read_text())
    assert rc == 0 and tasks[0]["data"]["image"] == f"http://nas.local:8080/field/images/{tasks[0]['data']['file']}"


def test_labelstudio_import_reports_every_bad_record(store, tmp_path):
    root, _ = store
    ls = tmp_path / "ls"
    assert _run("export", root, "--to", ls, "--format", "labelstudio")[0] == 0
    tasks = _accept(json.loads((ls / "tasks.json").read_text()))
    good = copy.deepcopy(tasks[0])
    bad = [copy.deepcopy(tasks[i % 3]) for i in range(4)]

    def result(t, i):
        return t["annotations"][1]["result"][i]["value"]

    result(bad[0], 1)["rectanglelabels"] = ["green"]
    result(bad[1], 0)["x"], result(bad[1], 0)["width"] = 90.0, 20.0
    result(bad[2], 0)["width"] = 0
    bad[3]["data"]["image"] = "/data/local-files/?d=images/gone.jpg"
    del bad[3]["data"]["file"]
    unlabelled = copy.deepcopy(tasks[1])
    unlabelled["annotations"] = [{"id": 99, "was_cancelled": True, "result": []}]
    exported = tmp_path / "export.json"
    exported.write_text(json.dumps([*bad, good, unlabelled]))

    rc, out, err = _run("import", exported, "--format", "labelstudio", "--images", ls, "--out", tmp_path / "ds")
    assert rc == 1 and not (tmp_path / "ds").exists()
    lines = err.splitlines()
    assert "export.json: task 0 annotation 1 result 1: unknown class 'green' (the model's: ripe, half_ripe, unripe)" \
        in lines
    assert any(line.startswith("export.json: task 1 annotation 1 result 0: box x=90% y=") and "outside the" in line
               for line in lines)
    assert any(line.startswith("export.json: task 2 annotation 1 result 0: box ")
               and line.endswith("zero or negative size") for line in lines)
    assert any(line.startswith("export.json: task 3: image '/data/local-files/?d=images/gone.jpg' not found")
               for line in lines)
    assert "export.json: task 5: no annotation (not labelled yet, or every annotation cancelled): left out" in lines
    assert "4 bad record(s); nothing written" in err

    rc, out, err = _run("import", exported, "--format", "labelstudio", "--images", ls, "--out", tmp_path / "ds",
                        "--skip-bad")
    assert rc == 0, err
    assert "skipped 4 bad record(s): 4 task(s) left out, with all their boxes" in err
    coco = json.loads((tmp_path / "ds" / "annotations" / "field.json").read_text())
    assert [im["labelstudio_task"] for im in coco["images"]] == [good["id"]]
    assert len(coco["annotations"]) == len(good["annotations"][1]["result"])

    rc, _, err = _run("import", exported, "--format", "labelstudio", "--images", ls, "--out", tmp_path / "ds2",
                      "--classes", "ripe,half_ripe,unripe,green", "--skip-bad")
    assert rc == 0 and "skipped 3 bad record(s)" in err  # --classes replaces the model's names


def test_coco_import_round_trip_and_bad_records(store, tmp_path):
    from pycocotools.coco import COCO

    root, drafts = store
    assert _run("export", root, "--to", tmp_path / "c", "--format", "coco")[0] == 0
    coco = json.loads((tmp_path / "c" / "annotations.json").read_text())
    reviewed = copy.deepcopy(coco)
    for a in reviewed["annotations"]:
        del a["score"]
    labelled = tmp_path / "c" / "labelled.json"
    labelled.write_text(json.dumps(reviewed))
    rc, out, err = _run("import", labelled, "--format", "coco", "--out", tmp_path / "ds", "--split", "train")
    assert rc == 0 and err == "", err  # images found under the file's images/
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(tmp_path / "ds" / "annotations" / "train.json"))
    assert len(gt.dataset["images"]) == 3 and len(gt.dataset["annotations"]) == len(coco["annotations"])
    for im in gt.dataset["images"]:
        labels, boxes = drafts[im["file_name"]]
        assert (tmp_path / "ds" / "train" / im["file_name"]).is_file() and im["trigger"] == labels["trigger"]
        assert _same([_xyxy(a["bbox"]) for a in gt.loadAnns(gt.getAnnIds(imgIds=[im["id"]]))], boxes, 0.01)

    # `ripeye train` reads it with the identity class map (annotations/<split>.json beside <split>/)
    from daemon.train import coco_to_yolo_labels, parse_class_map

    yolo, names = coco_to_yolo_labels(gt.dataset, parse_class_map(",".join(f"{c}={c}" for c in CLASSES)))
    assert names == CLASSES and sum(map(len, yolo.values())) == len(coco["annotations"])

    # the drafts imported as they are: allowed, but said
    rc, _, err = _run("import", tmp_path / "c" / "annotations.json", "--format", "coco", "--out", tmp_path / "d2")
    assert rc == 0 and "carry a 'score': model drafts rather than reviewed labels?" in err

    broken = copy.deepcopy(reviewed)
    broken["categories"].append({"id": 9, "name": "green"})
    broken["annotations"][0]["category_id"] = 9
    w = broken["images"][1]["width"]
    second = [i for i, a in enumerate(broken["annotations"]) if a["image_id"] == 2][0]
    broken["annotations"][second]["bbox"] = [w - 10, 5, 30, 30]
    broken["annotations"].append({"id": 999, "image_id": 77, "category_id": 1, "bbox": [1, 1, 5, 5]})
    broken["images"][2]["file_name"] = "nowhere.jpg"
    (tmp_path / "c" / "broken.json").write_text(json.dumps(broken))
    rc, _, err = _run("import", tmp_path / "c" / "broken.json", "--format", "coco", "--out", tmp_path / "d3")
    assert rc == 1
    lines = err.splitlines()
    assert "broken.json: annotation 0 (image_id 1): unknown class 'green' (the model's: ripe, half_ripe, unripe)" \
        in lines
    assert any(line.startswith(f"broken.json: annotation {second} (image_id 2): bbox ") and "outside the" in line
               for line in lines)
    n = len(broken["annotations"]) - 1
    assert f"broken.json: annotation {n} (image_id 77): no image with that id" in lines
    assert any(line.startswith("broken.json: image 2: image 'nowhere.jpg' not found") for line in lines)
    rc, out, err = _run("import", tmp_path / "c" / "broken.json", "--format", "coco", "--out", tmp_path / "d3",
                        "--skip-bad")
    assert rc == 0 and "skipped 4 bad record(s): 3 image(s) left out" in err and "imported 0 image(s)" in out


def test_export_reports_drafts_the_model_cannot_have(store, tmp_path):
    root, _ = store
    fs = FieldStore(tmp_path / "store")
    for sample in (root / "failed").iterdir():
        labels = json.loads((sample / "labels.json").read_text())
        labels["detections"][1]["class"] = "b_green"
        fs.write("failed", sample.name, {"image.jpg": (sample / "image.jpg").read_bytes(),
                                         "labels.json": json.dumps(labels).encode()})
        fs.write("uncertain", sample.name, {"image.jpg": (sample / "image.jpg").read_bytes(),
                                            "labels.json": (sample / "labels.json").read_bytes()})
    rc, _, err = _run("export", tmp_path / "store", "--to", tmp_path / "x", "--format", "coco")
    assert rc == 1
    assert f"failed/{sample.name}/labels.json: detection 1: class 'b_green' is not one of the model's" in err
    rc, out, err = _run("export", tmp_path / "store", "--to", tmp_path / "x", "--format", "coco", "--skip-bad")
    assert rc == 0 and "1 sample(s) left out" in err and "exported 1 image(s) (1 uncertain)" in out


def test_image_size_without_pillow(store, monkeypatch):
    import sys

    from daemon.dataset import image_size

    root, _ = store
    path = next((root / "failed").iterdir()) / "image.jpg"
    with_pillow = image_size(path)
    monkeypatch.setitem(sys.modules, "PIL", None)  # Pillow comes with the tracking extra only
    assert image_size(path) == with_pillow == tuple(cv2.imread(str(path)).shape[1::-1])
