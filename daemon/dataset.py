"""`ripeye dataset`: hand the field capture store to a labelling tool and read its labels back (issue 28, item 2).

export: the store's samples (see daemon/fieldstore.py) become a dataset with the model's detections as
pre-annotations, in one of three formats:

    coco         DIR/images/<trigger>-<sample>.jpg, DIR/annotations.json (categories = the model's classes, each
                 draft an annotation with its "score"; each image entry carries the sample's trigger, reason, note,
                 track id, model name and version)
    yolo         DIR/images/, DIR/labels/<name>.txt ("class cx cy w h", normalised), DIR/data.yaml (names),
                 DIR/samples.json (each image's trigger, reason, ..., and the drafts' scores, which YOLO cannot hold)
    labelstudio  DIR/images/, DIR/tasks.json (one task per sample: data.image plus the sample's fields, the drafts as
                 "predictions" in percent coordinates), DIR/labelconfig.xml (the project's labelling config)

The random `sample` trigger is unbiased evaluation data: it is exported only when asked for (--triggers sample or
all) and its images are marked "holdout": true.

import: what the labelling tool exports back (COCO JSON, or Label Studio's JSON export: tasks with "annotations"; the
latest annotation of each task that was not cancelled counts). Every record is checked (class names against the
model's, boxes inside the image with a positive size, the image present) and every bad one is reported by file and
index; any bad record fails the import unless --skip-bad, which leaves out each image with a bad record (a partly
labelled image would teach that its other fruit is background) and says how many. The output is a COCO dataset laid
out like the base set: OUT/annotations/<split>.json and OUT/<split>/<images>, categories named as the model's
classes, the samples' fields kept in the image entries.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional
from urllib.parse import parse_qs, quote, unquote, urlparse
from xml.sax.saxutils import quoteattr

from daemon import fielddata
from daemon.config import DEFAULT_MODEL_DIR
from daemon.fieldstore import PARTIAL, TRIGGERS

FORMATS = ("coco", "yolo", "labelstudio")
IMPORT_FORMATS = ("coco", "labelstudio")
DEFAULT_TRIGGERS = tuple(t for t in TRIGGERS if t != "sample")
HOLDOUT_TRIGGER = "sample"
# labels.json fields kept with each exported image (the model's name and version are added as model_name/_version)
SAMPLE_FIELDS = ("trigger", "reason", "note", "track_id", "arm_id", "which", "frame_id", "captured_at")
OWN_PHOTOS = "the grower's own photos, taken by the device's camera (no public licence)"
TOL_PX = 0.5  # how far a labelled box may reach past the image edge (rounding in the tools) before it is an error


# ---- shared ----------------------------------------------------------------------------------------------------------
def model_classes(spec: Optional[str] = None) -> list[str]:
    """The model's class names: SPEC is a comma-separated list or a model folder; default the shipped model's."""
    if spec and "," not in spec and (Path(spec).is_dir() or Path(spec).name == "metadata.json"):
        path = Path(spec) / "metadata.json" if Path(spec).is_dir() else Path(spec)
    elif spec:
        return [c.strip() for c in spec.split(",") if c.strip()]
    else:
        path = DEFAULT_MODEL_DIR / "metadata.json"
    return list(json.loads(path.read_text())["class_names"])


def image_size(path: Path) -> tuple[int, int]:
    """(width, height); OSError/ValueError when it is not an image. Pillow (the tracking extra) reads the header
    only; without it OpenCV decodes the whole file."""
    try:
        from PIL import Image
    except ImportError:
        import cv2

        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise ValueError(f"{path.name} is not an image OpenCV can read") from None
        return image.shape[1], image.shape[0]
    with Image.open(path) as im:
        return im.size


@dataclass
class Problems:
    """Bad records, each '<file>: <where>: <what>', grouped by the unit that is left out with --skip-bad."""

    lines: list[str] = field(default_factory=list)
    units: dict[Any, int] = field(default_factory=dict)  # unit -> number of bad records in it

    def add(self, unit: Any, message: str) -> None:
        self.lines.append(message)
        self.units[unit] = self.units.get(unit, 0) + 1

    def __bool__(self) -> bool:
        return bool(self.lines)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _empty_dir(path: Path, what: str) -> Optional[str]:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        return f"{what} {path} exists and is not an empty folder"
    return None


# ---- export ----------------------------------------------------------------------------------------------------------
@dataclass
class Sample:
    trigger: str
    name: str
    folder: Path
    width: int
    height: int
    meta: dict
    drafts: list[tuple[str, float, list[float], Optional[int]]]  # class, confidence, x1 y1 x2 y2, track id

    @property
    def file(self) -> str:
        return f"{self.trigger}-{self.name}.jpg"

    @property
    def model_version(self) -> str:
        return " ".join(str(v) for v in (self.meta.get("model_name"), self.meta.get("model_version")) if v)


def read_store(store: Path, triggers: list[str], classes: list[str], min_confidence: float = 0.0,
               problems: Optional[Problems] = None) -> tuple[list[Sample], dict[str, int]]:
    """Every whole sample under the given triggers, oldest first, with its drafts checked and clipped to the frame.
    Returns the samples (those with a problem included; the caller drops them) and counts of what was left out."""
    problems = problems if problems is not None else Problems()
    samples: list[Sample] = []
    skipped: Counter = Counter()
    for trigger in triggers:
        folder = store / trigger
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.name.startswith(PARTIAL):  # a write in progress, or one a power cut interrupted
                skipped["unfinished sample folders"] += 1
                continue
            if not path.is_dir():
                continue
            where = f"{trigger}/{path.name}"
            labels_file, image_file = path / "labels.json", path / "image.jpg"
            if not labels_file.is_file() or not image_file.is_file():
                missing = "labels.json" if not labels_file.is_file() else "image.jpg"
                problems.add(where, f"{store}: {where}: no {missing}")
                continue
            try:
                labels = json.loads(labels_file.read_text())
                width, height = image_size(image_file)
            except (OSError, ValueError) as exc:
                problems.add(where, f"{store}: {where}: cannot read: {exc}")
                continue
            declared = labels.get("image") or {}
            if (declared.get("width"), declared.get("height")) != (width, height):
                problems.add(where, f"{store}: {where}: labels.json says the image is {declared.get('width')}x"
                                    f"{declared.get('height')}, image.jpg is {width}x{height}")
            meta = {k: labels[k] for k in SAMPLE_FIELDS if labels.get(k) is not None}
            meta["trigger"] = trigger
            meta["sample"] = where
            model = labels.get("model") or {}
            meta["model_name"], meta["model_version"] = model.get("name"), model.get("version")
            if trigger == HOLDOUT_TRIGGER:
                meta["holdout"] = True  # unbiased evaluation data: never to be trained or selected on
            drafts = []
            for i, d in enumerate(labels.get("detections") or []):
                try:
                    cls, conf, (x1, y1, x2, y2) = d["class"], float(d["confidence"]), map(float, d["box"])
                except (KeyError, TypeError, ValueError) as exc:
                    problems.add(where, f"{store}: {where}/labels.json: detection {i}: malformed ({exc!r})")
                    continue
                if cls not in classes:
                    problems.add(where, f"{store}: {where}/labels.json: detection {i}: class {cls!r} is not one of "
                                        f"the model's ({', '.join(classes)})")
                    continue
                if conf < min_confidence:
                    skipped["drafts below --min-confidence"] += 1
                    continue
                x1, x2 = max(0.0, min(x1, width)), max(0.0, min(x2, width))
                y1, y2 = max(0.0, min(y1, height)), max(0.0, min(y2, height))
                if x2 - x1 <= 0 or y2 - y1 <= 0:
                    skipped["drafts with no area inside the frame"] += 1
                    continue
                drafts.append((cls, conf, [x1, y1, x2, y2], d.get("track_id")))
            samples.append(Sample(trigger, path.name, path, width, height, meta, drafts))
    samples.sort(key=lambda s: (s.name, s.trigger))  # names start with the UTC time
    return samples, dict(skipped)


def to_coco(samples: list[Sample], classes: list[str], description: str = "ripeye field capture") -> dict:
    images, annotations = [], []
    for i, s in enumerate(samples, 1):
        images.append({"id": i, "file_name": s.file, "width": s.width, "height": s.height, **s.meta})
        for cls, conf, (x1, y1, x2, y2), tid in s.drafts:
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": classes.index(cls) + 1,
                                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                                "area": round((x2 - x1) * (y2 - y1), 2), "iscrowd": 0, "score": round(conf, 4),
                                **({"track_id": tid} if tid is not None else {})})
    return {"info": {"description": description, "date_created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
            "categories": [{"id": i, "name": c, "supercategory": "tomato"} for i, c in enumerate(classes, 1)],
            "images": images, "annotations": annotations}


def yolo_lines(s: Sample, classes: list[str]) -> list[str]:
    out = []
    for cls, _, (x1, y1, x2, y2), _ in s.drafts:
        out.append(f"{classes.index(cls)} {(x1 + x2) / 2 / s.width:.6f} {(y1 + y2) / 2 / s.height:.6f} "
                   f"{(x2 - x1) / s.width:.6f} {(y2 - y1) / s.height:.6f}")
    return out


def label_config(classes: list[str]) -> str:
    labels = "".join(f"    <Label value={quoteattr(c)}/>\n" for c in classes)
    return (f'<View>\n  <Image name="image" value="$image"/>\n  <RectangleLabels name="label" toName="image">\n'
            f"{labels}  </RectangleLabels>\n</View>\n")


def ls_task(s: Sample, image_url: str) -> dict:
    result = []
    for j, (cls, conf, (x1, y1, x2, y2), _) in enumerate(s.drafts):
        result.append({"id": f"draft{j}", "type": "rectanglelabels", "from_name": "label", "to_name": "image",
                       "original_width": s.width, "original_height": s.height, "image_rotation": 0,
                       "value": {"x": 100 * x1 / s.width, "y": 100 * y1 / s.height,
                                 "width": 100 * (x2 - x1) / s.width, "height": 100 * (y2 - y1) / s.height,
                                 "rotation": 0, "rectanglelabels": [cls]},
                       "score": round(conf, 4)})
    data = {"image": image_url, "file": s.file, **s.meta}
    # the task's score is its least certain draft: Label Studio sorts by it, so the doubtful frames come first
    predictions = [{"model_version": s.model_version or "drafts", "score": min(r["score"] for r in result),
                    "result": result}] if result else []
    return {"data": data, "predictions": predictions}


def image_url(out: Path, file: str, root_url: Optional[str], document_root: Optional[Path]) -> str:
    """Where Label Studio finds an exported image: under --image-root-url (the export folder served over HTTP), else
    its local-files path relative to LOCAL_FILES_DOCUMENT_ROOT (--document-root, default the export folder)."""
    if root_url:
        return f"{root_url.rstrip('/')}/images/{quote(file)}"
    root = (document_root or out).resolve()
    rel = (out / "images" / file).resolve().relative_to(root)
    return f"/data/local-files/?d={quote(rel.as_posix())}"


def export(store: Path, out: Path, fmt: str, triggers: list[str], classes: list[str], min_confidence: float = 0.0,
           skip_bad: bool = False, image_root_url: Optional[str] = None, document_root: Optional[Path] = None,
           err=None, say=print) -> int:
    err = err or sys.stderr
    if fmt not in FORMATS:
        print(f"ripeye dataset export: unknown format {fmt!r} (one of {', '.join(FORMATS)})", file=err)
        return 2
    unknown = [t for t in triggers if t not in TRIGGERS]
    if unknown:
        print(f"ripeye dataset export: unknown trigger(s) {', '.join(unknown)} (known: {', '.join(TRIGGERS)}, all)",
              file=err)
        return 2
    if not store.is_dir():
        print(f"ripeye dataset export: no capture store at {store}", file=err)
        return 2
    message = _empty_dir(out, "--to")
    if message:
        print(f"ripeye dataset export: {message}", file=err)
        return 2
    if document_root is not None:
        try:
            (out.resolve() / "images").relative_to(document_root.resolve())
        except ValueError:
            print(f"ripeye dataset export: --to {out} is not under --document-root {document_root}", file=err)
            return 2
    problems = Problems()
    samples, skipped = read_store(store, triggers, classes, min_confidence, problems)
    for line in problems.lines:
        print(line, file=err)
    if problems:
        if not skip_bad:
            print(f"ripeye dataset export: {len(problems.lines)} bad record(s) in {len(problems.units)} sample(s); "
                  "nothing written (--skip-bad leaves those samples out)", file=err)
            return 1
        samples = [s for s in samples if f"{s.trigger}/{s.name}" not in problems.units]
        print(f"ripeye dataset export: skipped {len(problems.lines)} bad record(s): {len(problems.units)} sample(s) "
              "left out", file=err)
    (out / "images").mkdir(parents=True, exist_ok=True)
    for s in samples:
        shutil.copyfile(s.folder / "image.jpg", out / "images" / s.file)
    if fmt == "coco":
        (out / "annotations.json").write_text(json.dumps(to_coco(samples, classes), indent=1) + "\n")
    elif fmt == "yolo":
        import yaml

        (out / "labels").mkdir()
        for s in samples:
            lines = yolo_lines(s, classes)
            (out / "labels" / f"{Path(s.file).stem}.txt").write_text("".join(f"{line}\n" for line in lines))
        (out / "data.yaml").write_text(yaml.safe_dump({"path": ".", "train": "images", "val": "images",
                                                       "names": dict(enumerate(classes))}, sort_keys=False))
        rows = [{"file": s.file, **s.meta, "scores": [round(d[1], 4) for d in s.drafts]} for s in samples]
        (out / "samples.json").write_text(json.dumps(rows, indent=1) + "\n")
    else:
        tasks = [ls_task(s, image_url(out, s.file, image_root_url, document_root)) for s in samples]
        (out / "tasks.json").write_text(json.dumps(tasks, indent=1) + "\n")
        (out / "labelconfig.xml").write_text(label_config(classes))
    per_trigger = Counter(s.trigger for s in samples)
    drafts = sum(len(s.drafts) for s in samples)
    say(f"exported {len(samples)} image(s) ({', '.join(f'{n} {t}' for t, n in sorted(per_trigger.items())) or 'none'}),"
        f" {drafts} draft box(es) as {fmt} into {out}")
    for what, n in sorted(skipped.items()):
        say(f"  left out: {n} {what}")
    if HOLDOUT_TRIGGER in per_trigger:
        say(f"  {per_trigger[HOLDOUT_TRIGGER]} random-sample image(s) are marked holdout: evaluation data, not for "
            "training")
    if fmt == "labelstudio" and not image_root_url:
        root = (document_root or out).resolve()
        say(f"  Label Studio: start it with LOCAL_FILES_SERVING_ENABLED=true LOCAL_FILES_DOCUMENT_ROOT={root}, create "
            f"a project with {out / 'labelconfig.xml'}, add a local storage for {(out / 'images').resolve()}, import "
            f"{out / 'tasks.json'}")
    return 0


# ---- import ----------------------------------------------------------------------------------------------------------
@dataclass
class Record:
    """One labelled image: where it is, its size, the fields it carries, its boxes (class, x, y, w, h in pixels)."""

    source: Path
    width: int
    height: int
    meta: dict
    boxes: list[tuple[str, float, float, float, float]]
    unit: Any


def _box_problem(x: float, y: float, w: float, h: float, width: int, height: int) -> Optional[str]:
    if w <= 0 or h <= 0:
        return "zero or negative size"
    if x < -TOL_PX or y < -TOL_PX or x + w > width + TOL_PX or y + h > height + TOL_PX:
        return f"outside the {width}x{height} image"
    return None


def _clip(x: float, y: float, w: float, h: float, width: int, height: int) -> tuple[float, float, float, float]:
    x1, y1 = max(0.0, x), max(0.0, y)
    x2, y2 = min(float(width), x + w), min(float(height), y + h)
    return x1, y1, x2 - x1, y2 - y1


def _find_image(candidates: list[str], dirs: list[Path]) -> Optional[Path]:
    for name in candidates:
        if not name:
            continue
        rel = Path(name)
        for d in dirs:
            for p in (d / rel, d / rel.name, d / "images" / rel.name):
                if p.is_file():
                    return p
    return None


def _ls_image_names(url: str) -> list[str]:
    """File names a Label Studio image URL may stand for: a local-files ?d= path, or the URL's last part (for an
    upload also without the 8-character prefix Label Studio adds)."""
    parsed = urlparse(url)
    names = []
    if "d" in parse_qs(parsed.query):
        names.append(parse_qs(parsed.query)["d"][0])
    base = unquote(Path(parsed.path).name)
    names.append(base)
    if len(base) > 9 and base[8] == "-":
        names.append(base[9:])
    return names


def read_labelstudio(path: Path, dirs: list[Path], classes: list[str], problems: Problems,
                     notes: list[str]) -> list[Record]:
    tasks = json.loads(path.read_text())
    if not isinstance(tasks, list):
        raise ValueError("not a Label Studio JSON export (a list of tasks)")
    records = []
    for ti, task in enumerate(tasks):
        where = f"{path.name}: task {ti}"
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            problems.add(ti, f"{where}: malformed task (no data)")
            continue
        done = [(ai, a) for ai, a in enumerate(task.get("annotations") or [])
                if isinstance(a, dict) and not a.get("was_cancelled")]
        if not done:
            notes.append(f"{where}: no annotation (not labelled yet, or every annotation cancelled): left out")
            continue
        ai, ann = max(done, key=lambda p: (str(p[1].get("updated_at") or p[1].get("created_at") or ""),
                                           p[1].get("id") if _number(p[1].get("id")) else 0, p[0]))
        data = task["data"]
        url = data.get("image")
        if not isinstance(url, str):
            problems.add(ti, f"{where}: no data.image")
            continue
        file = data.get("file") if isinstance(data.get("file"), str) else None
        source = _find_image([file, *_ls_image_names(url)], dirs)
        if source is None:
            problems.add(ti, f"{where}: image {url!r} not found under {', '.join(map(str, dirs))}")
            continue
        try:
            width, height = image_size(source)
        except (OSError, ValueError) as exc:
            problems.add(ti, f"{where}: cannot read image {source}: {exc}")
            continue
        boxes = []
        results = ann.get("result")
        if not isinstance(results, list):
            problems.add(ti, f"{where} annotation {ai}: no result list")
            continue
        for ri, r in enumerate(results):
            at = f"{where} annotation {ai} result {ri}"
            if not isinstance(r, dict) or r.get("type") != "rectanglelabels":
                kind = r.get("type") if isinstance(r, dict) else r
                problems.add(ti, f"{at}: not a rectanglelabels result ({kind!r})")
                continue
            v = r.get("value") or {}
            labels = v.get("rectanglelabels")
            if not isinstance(labels, list) or len(labels) != 1:
                problems.add(ti, f"{at}: needs exactly one label, has {labels!r}")
                continue
            if labels[0] not in classes:
                problems.add(ti, f"{at}: unknown class {labels[0]!r} (the model's: {', '.join(classes)})")
                continue
            if not all(_number(v.get(k)) for k in ("x", "y", "width", "height")):
                problems.add(ti, f"{at}: box x, y, width, height must be numbers, not "
                                 f"{[v.get(k) for k in ('x', 'y', 'width', 'height')]}")
                continue
            if v.get("rotation") not in (None, 0, 0.0):
                problems.add(ti, f"{at}: rotated box ({v['rotation']} degrees): only upright boxes can be trained on")
                continue
            ow, oh = r.get("original_width"), r.get("original_height")
            if ow is not None and oh is not None and (ow, oh) != (width, height):
                problems.add(ti, f"{at}: labelled on a {ow}x{oh} image, {source.name} is {width}x{height}")
                continue
            x, y = v["x"] * width / 100, v["y"] * height / 100
            w, h = v["width"] * width / 100, v["height"] * height / 100
            bad = _box_problem(x, y, w, h, width, height)
            if bad:
                problems.add(ti, f"{at}: box x={v['x']:g}% y={v['y']:g}% width={v['width']:g}% "
                                 f"height={v['height']:g}%: {bad}")
                continue
            boxes.append((labels[0], *_clip(x, y, w, h, width, height)))
        meta = {k: val for k, val in data.items() if k not in ("image", "file") and isinstance(val, (str, int, float,
                                                                                                   bool))}
        meta["labelstudio_task"] = task.get("id", ti)
        records.append(Record(source, width, height, meta, boxes, ti))
    return records


def read_coco(path: Path, dirs: list[Path], classes: list[str], problems: Problems, notes: list[str]) -> list[Record]:
    coco = json.loads(path.read_text())
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise ValueError("not a COCO JSON file (no images list)")
    cats = {c.get("id"): c.get("name") for c in coco.get("categories") or [] if isinstance(c, dict)}
    records: dict[Any, Record] = {}
    for ii, im in enumerate(coco["images"]):
        where = f"{path.name}: image {ii}"
        if not isinstance(im, dict) or "id" not in im or not isinstance(im.get("file_name"), str):
            problems.add(("image", ii), f"{where}: malformed (needs id and file_name)")
            continue
        if im["id"] in records:
            problems.add(("image", ii), f"{where}: id {im['id']} used twice")
            continue
        source = _find_image([im["file_name"]], dirs)
        if source is None:
            problems.add(im["id"], f"{where}: image {im['file_name']!r} not found under {', '.join(map(str, dirs))}")
            records[im["id"]] = None  # type: ignore[assignment]  # its annotations are still checked
            continue
        try:
            width, height = image_size(source)
        except (OSError, ValueError) as exc:
            problems.add(im["id"], f"{where}: cannot read image {source}: {exc}")
            records[im["id"]] = None  # type: ignore[assignment]
            continue
        if (im.get("width"), im.get("height")) not in ((width, height), (None, None)):
            problems.add(im["id"], f"{where}: says {im.get('width')}x{im.get('height')}, {source.name} is "
                                   f"{width}x{height}")
        meta = {k: v for k, v in im.items() if k not in ("id", "file_name", "width", "height")}
        records[im["id"]] = Record(source, width, height, meta, [], im["id"])
    scored = 0
    for ai, a in enumerate(coco.get("annotations") or []):
        at = f"{path.name}: annotation {ai}"
        if not isinstance(a, dict):
            problems.add(("annotation", ai), f"{at}: malformed")
            continue
        image_id = a.get("image_id")
        at += f" (image_id {image_id})"
        if image_id not in records:
            problems.add(("annotation", ai), f"{at}: no image with that id")
            continue
        rec = records[image_id]
        name = cats.get(a.get("category_id"))
        if name is None:
            problems.add(image_id, f"{at}: category_id {a.get('category_id')!r} is not among the categories")
            continue
        if name not in classes:
            problems.add(image_id, f"{at}: unknown class {name!r} (the model's: {', '.join(classes)})")
            continue
        bbox = a.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(map(_number, bbox)):
            problems.add(image_id, f"{at}: bbox must be 4 numbers [x, y, w, h], not {bbox!r}")
            continue
        if rec is None:
            continue
        bad = _box_problem(*bbox, rec.width, rec.height)
        if bad:
            problems.add(image_id, f"{at}: bbox {bbox}: {bad}")
            continue
        scored += "score" in a
        rec.boxes.append((name, *_clip(*bbox, rec.width, rec.height)))
    if scored:
        notes.append(f"{path.name}: {scored} annotation(s) carry a 'score': model drafts rather than reviewed labels?")
    return [r for r in records.values() if r is not None]


def write_coco(records: list[Record], out: Path, split: str, classes: list[str], source: Path) -> Path:
    images_dir, ann_dir = out / split, out / "annotations"
    images_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    images, annotations, used = [], [], set()
    for i, rec in enumerate(records, 1):
        name = rec.source.name
        if name in used:
            name = f"{i}-{name}"
        used.add(name)
        shutil.copyfile(rec.source, images_dir / name)
        images.append({"id": i, "file_name": name, "width": rec.width, "height": rec.height, **rec.meta})
        for cls, x, y, w, h in rec.boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": classes.index(cls) + 1,
                                "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)],
                                "area": round(w * h, 2), "iscrowd": 0})
    coco = {"info": {"description": f"imported from {source}",
                     "date_created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
            "categories": [{"id": i, "name": c, "supercategory": "tomato"} for i, c in enumerate(classes, 1)],
            "images": images, "annotations": annotations}
    path = ann_dir / f"{split}.json"
    path.write_text(json.dumps(coco, indent=1) + "\n")
    return path


def import_labels(file: Path, fmt: str, out: Path, classes: list[str], images: Optional[Path] = None,
                  split: str = "field", skip_bad: bool = False, err=None, say=print, source: str = "",
                  licence: str = OWN_PHOTOS) -> int:
    err = err or sys.stderr
    if fmt not in IMPORT_FORMATS:
        print(f"ripeye dataset import: unknown format {fmt!r} (one of {', '.join(IMPORT_FORMATS)})", file=err)
        return 2
    message = _empty_dir(out, "--out")
    if message:
        print(f"ripeye dataset import: {message}", file=err)
        return 2
    dirs = [images] if images else [file.parent]
    problems, notes = Problems(), []
    try:
        reader = read_coco if fmt == "coco" else read_labelstudio
        records = reader(file, dirs, classes, problems, notes)
    except (OSError, ValueError) as exc:
        print(f"ripeye dataset import: {file}: {exc}", file=err)
        return 2
    for line in problems.lines + notes:
        print(line, file=err)
    if problems:
        if not skip_bad:
            print(f"ripeye dataset import: {len(problems.lines)} bad record(s); nothing written (--skip-bad leaves "
                  "out each image with a bad record)", file=err)
            return 1
        records = [r for r in records if r.unit not in problems.units]
        images_out = sum(1 for u in problems.units if not isinstance(u, tuple))  # (kind, index): no image to leave out
        print(f"ripeye dataset import: skipped {len(problems.lines)} bad record(s): {images_out} "
              f"{'task' if fmt == 'labelstudio' else 'image'}(s) left out, with all their boxes", file=err)
    path = write_coco(records, out, split, classes, file)
    # where the photos came from and under what terms: `ripeye train` refuses a set without it, for the model card
    provenance = {"name": out.resolve().name, "source": source or f"field capture, labelled in {file.name}",
                  "licence": licence}
    (out / fielddata.PROVENANCE_FILE).write_text(json.dumps(provenance, indent=1) + "\n")
    per_class = Counter(b[0] for r in records for b in r.boxes)
    say(f"imported {len(records)} image(s), {sum(per_class.values())} box(es) "
        f"({', '.join(f'{per_class[c]} {c}' for c in classes)}) into {path} (images in {out / split})")
    say(f"  evaluate with: ripeye eval MODEL --data {path} --class-map "
        f"{','.join(f'{c}={c}' for c in classes)}")
    return 0


# ---- command line ----------------------------------------------------------------------------------------------------
def cmd_export(args) -> int:
    triggers = list(TRIGGERS) if args.triggers == "all" else [t.strip() for t in args.triggers.split(",") if t.strip()]
    try:
        classes = model_classes(args.classes)
    except (OSError, ValueError, KeyError) as exc:
        print(f"ripeye dataset export: cannot read the class names: {exc}", file=sys.stderr)
        return 2
    return export(Path(args.store), Path(args.to), args.format, triggers, classes, args.min_confidence, args.skip_bad,
                  args.image_root_url, Path(args.document_root) if args.document_root else None)


def cmd_import(args) -> int:
    try:
        classes = model_classes(args.classes)
    except (OSError, ValueError, KeyError) as exc:
        print(f"ripeye dataset import: cannot read the class names: {exc}", file=sys.stderr)
        return 2
    return import_labels(Path(args.file), args.format, Path(args.out), classes,
                         Path(args.images) if args.images else None, args.split, args.skip_bad,
                         source=args.source, licence=args.licence)


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="dataset_command", required=True)
    classes_help = "the model's class names: NAME,NAME,... or a model folder (default: the shipped model's)"

    ex = sub.add_parser("export", help="a capture store → COCO, YOLO or Label Studio tasks, drafts as pre-annotations")
    ex.add_argument("store", help="the capture store (capture.dir, e.g. copied off the device)")
    ex.add_argument("--to", required=True, help="an empty or new folder")
    ex.add_argument("--format", required=True, choices=FORMATS)
    ex.add_argument("--triggers", default=",".join(DEFAULT_TRIGGERS),
                    help=f"comma-separated, or all (default: {','.join(DEFAULT_TRIGGERS)}; the random `sample` "
                         "trigger is evaluation data, exported only when asked for and marked holdout)")
    ex.add_argument("--min-confidence", type=float, default=0.0, help="leave out drafts below this confidence")
    ex.add_argument("--classes", default=None, help=classes_help)
    ex.add_argument("--image-root-url", default=None,
                    help="labelstudio: the URL the --to folder is served at (images under URL/images/); default a "
                         "Label Studio local-files path")
    ex.add_argument("--document-root", default=None,
                    help="labelstudio: Label Studio's LOCAL_FILES_DOCUMENT_ROOT (default: the --to folder)")
    ex.add_argument("--skip-bad", action="store_true", help="leave out samples with a bad record instead of failing")
    ex.set_defaults(func=cmd_export)

    im = sub.add_parser("import", help="a labelling tool's export (COCO, Label Studio JSON) → a checked COCO dataset")
    im.add_argument("file", help="the tool's export: COCO JSON, or Label Studio's JSON export")
    im.add_argument("--format", required=True, choices=IMPORT_FORMATS)
    im.add_argument("--images", default=None, help="where the images are (default: beside FILE, or its images/)")
    im.add_argument("--out", required=True, help="an empty or new folder: annotations/<split>.json and <split>/")
    im.add_argument("--split", default="field", help="the split's name (default: field)")
    im.add_argument("--classes", default=None, help=classes_help)
    im.add_argument("--source", default="", help="where the photos come from (default: field capture, labelled in "
                                                   "FILE); written to OUT/dataset.json for the model card")
    im.add_argument("--licence", default=OWN_PHOTOS, help="the photos' licence (written to OUT/dataset.json)")
    im.add_argument("--skip-bad", action="store_true",
                    help="leave out each image with a bad record (said, and counted) instead of failing")
    im.set_defaults(func=cmd_import)

    from daemon import testsplit

    testsplit.add_arguments(sub)
