"""Train YOLO11n on a COCO-format dataset offline and export the shipped model folder (needs the `train` extra)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from pathlib import Path

import yaml

from daemon import fielddata
from daemon.durable import write_durably
from daemon.model import SIZES_DIR
from daemon.runtimes.base import usable_cores

SOURCES_FILE = "sources.json"
AUGMENT_FILE = "augment.json"  # the run's own augmentations (lamp casts, close-ups): a resumed run applies them too
DEFAULT_DATA = "../shared/datasets/laboro-tomato-big"
DEFAULT_CLASS_MAP = {"b_fully_ripened": "ripe", "b_half_ripened": "half_ripe", "b_green": "unripe"}


def offline_env(work: Path) -> None:
    """Make Ultralytics/OpenVINO run without network calls, auto-installs or telemetry."""
    cfg = work / "config"
    cfg.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "False")
    os.environ.setdefault("CI", "true")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(cfg))
    os.environ.setdefault("MPLCONFIGDIR", str(cfg))
    os.environ.setdefault("OMP_NUM_THREADS", str(usable_cores()))


def parse_class_map(text: str | None) -> dict[str, str]:
    """Parse 'src=dst,src=dst' into an ordered mapping; ids follow the order given."""
    if not text:
        return dict(DEFAULT_CLASS_MAP)
    out: dict[str, str] = {}
    for part in text.split(","):
        if "=" not in part:
            raise ValueError(f"class map entry {part!r} is not SRC=DST")
        src, dst = (p.strip() for p in part.split("=", 1))
        out[src] = dst
    return out


def polygon_of(ann: dict) -> list[float] | None:
    """A COCO annotation's outline as [x1, y1, x2, y2, ...], or None (RLE, empty, or in several parts)."""
    seg = ann.get("segmentation")
    return seg[0] if isinstance(seg, list) and len(seg) == 1 and len(seg[0]) >= 6 else None


def polygon_line(class_id: int, ann: dict, w: float, h: float, box: tuple[float, float, float, float]) -> str:
    """One YOLO segment label line: the annotation's outline, normalised and clipped to the image.

    Ultralytics reads a file as polygons when any line has more than 5 values, then takes each box from its polygon's
    extent; so an annotation without a usable polygon (RLE, empty) is written as its box's four corners.
    """
    pts = polygon_of(ann)
    if pts is None:
        x1, y1, x2, y2 = box
        pts = [x1, y1, x2, y1, x2, y2, x1, y2]
    coords = [min(1.0, max(0.0, v / (w if i % 2 == 0 else h))) for i, v in enumerate(pts)]
    return f"{class_id} " + " ".join(f"{v:.6f}" for v in coords)


def coco_to_yolo_labels(coco: dict, class_map: dict[str, str],
                        polygons: bool = False) -> tuple[dict[str, list[str]], list[str]]:
    """Convert COCO boxes to YOLO label lines per image file name; returns (labels, class names in id order).

    With `polygons`, each line is the object's outline instead (what Ultralytics' copy-paste cuts out).
    """
    names = list(dict.fromkeys(class_map.values()))
    cat_to_id = {}
    for cat in coco["categories"]:
        if cat["name"] in class_map:
            cat_to_id[cat["id"]] = names.index(class_map[cat["name"]])
    missing = set(class_map) - {c["name"] for c in coco["categories"]}
    if missing:
        raise ValueError(f"class map names categories not in the dataset: {sorted(missing)}")
    images = {im["id"]: im for im in coco["images"]}
    labels: dict[str, list[str]] = {im["file_name"]: [] for im in coco["images"]}
    for ann in coco["annotations"]:
        if ann["category_id"] not in cat_to_id:
            continue
        im = images[ann["image_id"]]
        w, h = float(im["width"]), float(im["height"])
        x, y, bw, bh = ann["bbox"]
        x1, y1 = max(0.0, x), max(0.0, y)
        x2, y2 = min(w, x + bw), min(h, y + bh)
        if x2 <= x1 or y2 <= y1:
            continue
        if polygons:
            labels[im["file_name"]].append(polygon_line(cat_to_id[ann["category_id"]], ann, w, h, (x1, y1, x2, y2)))
            continue
        cx, cy = (x1 + x2) / 2 / w, (y1 + y2) / 2 / h
        labels[im["file_name"]].append(
            f"{cat_to_id[ann['category_id']]} {cx:.6f} {cy:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}"
        )
    return labels, names


def oversample_plan(labels: dict[str, list[str]], class_id: int | None, factor: int) -> dict[str, int]:
    """How many copies of each training image to use: `factor` for images showing `class_id`, 1 for the rest.

    Class-balanced sampling by repetition: the rarest class (ripe, the one the arm acts on) is seen more often per
    epoch without touching the loss. Ultralytics has no per-class loss weight for detection.
    """
    plan = {}
    for fname, lines in labels.items():
        shows = class_id is not None and any(int(line.split()[0]) == class_id for line in lines)
        plan[fname] = max(1, factor) if shows else 1
    return plan


def prepare_dataset(root: Path, work: Path, class_map: dict[str, str], splits=("train", "valid"),
                    oversample: str | None = None, oversample_factor: int = 1, polygons: bool = False) -> Path:
    """Write the Ultralytics layout (symlinked images, label txts, data.yaml) under work/dataset.

    With `oversample` (a class name), training images showing that class appear `oversample_factor` times (extra
    symlinks named `<stem>__dupN<ext>`); the validation split is never repeated. With `polygons`, the training
    labels are outlines (for copy-paste); validation keeps boxes, so its scores compare with box-trained stages.
    """
    ds = work / "dataset"
    names: list[str] = []
    for split in splits:
        coco = json.loads((root / "annotations" / f"{split}.json").read_text())
        outlines = polygons and split == "train"
        if outlines and not any(polygon_of(ann) for ann in coco["annotations"]):
            print(f"warning: {root}/annotations/{split}.json has no polygon outlines: copy-paste will paste whole "
                  "rectangles")
        labels, names = coco_to_yolo_labels(coco, class_map, polygons=outlines)
        if oversample is not None and oversample not in names:
            raise ValueError(f"--oversample {oversample!r} is not a class; classes: {names}")
        class_id = names.index(oversample) if oversample and split == "train" else None
        plan = oversample_plan(labels, class_id, oversample_factor)
        img_dir, lbl_dir = ds / "images" / split, ds / "labels" / split
        if img_dir.exists():  # a previous run may have used another oversampling plan
            shutil.rmtree(img_dir)
        if lbl_dir.exists():
            shutil.rmtree(lbl_dir)
        img_dir.mkdir(parents=True, exist_ok=True)
        lbl_dir.mkdir(parents=True, exist_ok=True)
        for fname, lines in labels.items():
            for copy in range(plan[fname]):
                stem, ext = Path(fname).stem, Path(fname).suffix
                name = stem if copy == 0 else f"{stem}__dup{copy}"
                (img_dir / (name + ext)).symlink_to((root / split / fname).resolve())
                (lbl_dir / (name + ".txt")).write_text("\n".join(lines) + ("\n" if lines else ""))
    data = {"path": str(ds), "train": "images/train", "val": "images/valid", "names": dict(enumerate(names))}
    (ds / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return ds / "data.yaml"


def add_field_sets(data_yaml: Path, roots: list[Path], work: Path, class_map: dict[str, str], holdout: float,
                   seed: int, repeat: int = 1) -> list[dict]:
    """Add field sets to a prepared dataset: each set's training part joins the training images (`repeat` times:
    a few dozen field photos beside hundreds of base ones), its holdout is written to work/holdout/<name>/ for
    `ripeye eval` and `ripeye compare`. Validation (best-epoch selection) stays the base valid split. Returns what
    the model card records of each set: provenance, counts per part, the holdout's file names and where it is."""
    data = yaml.safe_load(data_yaml.read_text())
    ds = Path(data["path"])
    train_dirs, records, names = [data["train"]], [], list(data["names"].values())
    for root in roots:
        part = fielddata.split_field_set(root, holdout, seed)
        try:
            field_map = fielddata.identity_or(class_map, part.train)
        except ValueError as exc:
            raise ValueError(f"--data {root}: {exc}") from exc
        labels, _ = coco_to_yolo_labels(part.train, field_map)
        tag = f"field-{part.name}"
        img_dir, lbl_dir = ds / "images" / tag, ds / "labels" / tag
        for folder in (img_dir, lbl_dir):
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
        for fname, lines in labels.items():
            stem, ext = Path(fname).stem, Path(fname).suffix
            for copy in range(max(1, repeat)):
                name = stem if copy == 0 else f"{stem}__dup{copy}"
                (img_dir / (name + ext)).symlink_to((part.images_dir[fname] / fname).resolve())
                (lbl_dir / (name + ".txt")).write_text("\n".join(lines) + ("\n" if lines else ""))
        train_dirs.append(f"images/{tag}")
        holdout_json = fielddata.write_holdout(part, work / "holdout" / part.name)
        records.append({**part.provenance, "role": "field", "dataset": dataset_fingerprint(root),
                        "images_in_set": part.frames, "scenes": part.groups, "holdout_fraction": holdout,
                        "repeat": repeat,
                        **part.counts(), "holdout_images": [im["file_name"] for im in part.holdout["images"]],
                        "holdout_json": str(holdout_json)})
        print(f"field set {root}: {part.counts()['train']['images']} training image(s) (x{max(1, repeat)}), "
              f"{part.counts()['holdout']['images']} held out in {holdout_json} ({part.groups} scenes)")
    data["train"] = train_dirs if len(train_dirs) > 1 else train_dirs[0]
    data["names"] = dict(enumerate(names))
    data_yaml.write_text(yaml.safe_dump(data, sort_keys=False))
    return records


def add_closeups(data_yaml: Path, root: Path, class_map: dict[str, str], per_photo: float, seed: int,
                 fractions: tuple[float, float] = (0.25, 0.95)) -> dict:
    """Add zoom-in crops of the base training photos as extra training images (work/dataset/images/closeups):
    about `per_photo` crops per photo, each around one fruit at least 48 px wide that spans a random share of the
    window's width in `fractions`, at a random camera aspect (daemon/closeups.py); neighbours keep clipped boxes
    when half of them is inside. Returns the record the model card keeps (counts per class of the targets)."""
    import cv2
    import numpy as np

    from daemon import closeups

    data = yaml.safe_load(data_yaml.read_text())
    ds = Path(data["path"])
    coco = json.loads((root / "annotations" / "train.json").read_text())
    names = list(dict.fromkeys(class_map.values()))
    cat_to_id = {c["id"]: names.index(class_map[c["name"]]) for c in coco["categories"] if c["name"] in class_map}
    per_image: dict[str, list] = {im["file_name"]: [] for im in coco["images"]}
    sizes = {im["file_name"]: (im["width"], im["height"]) for im in coco["images"]}
    by_id = {im["id"]: im["file_name"] for im in coco["images"]}
    for ann in coco["annotations"]:
        if ann["category_id"] in cat_to_id:
            x, y, w, h = ann["bbox"]
            per_image[by_id[ann["image_id"]]].append((cat_to_id[ann["category_id"]], (x, y, x + w, y + h)))
    count = int(round(per_photo * len(per_image)))
    targets = closeups.pick_targets(per_image, count, seed, min_width=48.0, per_photo=max(1, int(per_photo) + 1))
    img_dir, lbl_dir = ds / "images" / "closeups", ds / "labels" / "closeups"
    for folder in (img_dir, lbl_dir):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
    rng = random.Random(seed)
    made: dict[str, int] = {}
    for n, (name, idx) in enumerate(targets):
        cls, box = per_image[name][idx]
        lo, hi = closeups.fraction_range(box[2] - box[0], *fractions, min_side=64)
        window = None
        for _ in range(20):  # a window of that share and aspect may not fit the photo: draw again
            if lo > hi:
                break
            window = closeups.window_around(box, *sizes[name], rng.uniform(lo, hi), rng.choice(closeups.ASPECTS), rng)
            if window is not None:
                break
        if window is None:
            continue
        image = cv2.imread(str(root / "train" / name))
        if image is None:
            raise ValueError(f"{root / 'train' / name}: cannot read the photo")
        boxes = np.array([b for _, b in per_image[name]], dtype=np.float64)
        moved, keep = closeups.boxes_in_window(boxes, window)
        stem = f"{Path(name).stem}__closeup{n}"
        cv2.imwrite(str(img_dir / f"{stem}.jpg"), closeups.crop(image, window), [cv2.IMWRITE_JPEG_QUALITY, 95])
        lines = []
        for (x1, y1, x2, y2), k in zip(moved, keep):
            c = per_image[name][k][0]
            lines.append(f"{c} {(x1 + x2) / 2 / window.width:.6f} {(y1 + y2) / 2 / window.height:.6f} "
                         f"{(x2 - x1) / window.width:.6f} {(y2 - y1) / window.height:.6f}")
        (lbl_dir / f"{stem}.txt").write_text("\n".join(lines) + "\n")
        made[names[cls]] = made.get(names[cls], 0) + 1
    train_dirs = data["train"] if isinstance(data["train"], list) else [data["train"]]
    data["train"] = train_dirs + ["images/closeups"]
    data_yaml.write_text(yaml.safe_dump(data, sort_keys=False))
    print(f"close-ups: {sum(made.values())} crops of training photos ({made})")
    return {"per_photo": per_photo, "width_fractions": list(fractions), "crops": sum(made.values()),
            "targets_per_class": made}


def apply_lamp_augment(settings: dict | None) -> None:
    """Make Ultralytics' training datasets cast lamps (daemon/lamps.py) on their augmented images, just before the
    final formatting; validation images stay as photographed. A no-op without settings or with p = 0."""
    if not settings or not settings.get("p"):
        return
    from ultralytics.data import dataset as ul_dataset

    from daemon.lamps import LampAugment

    original = getattr(ul_dataset.YOLODataset.build_transforms, "__wrapped__", ul_dataset.YOLODataset.build_transforms)

    def build_transforms(self, hyp):
        transforms = original(self, hyp)
        if self.augment:  # the final transform formats labels into tensors: cast before it
            transforms.insert(len(transforms.transforms) - 1, LampAugment(settings["p"], settings["max_strength"],
                                                                          settings["balance_p"]))
        return transforms

    build_transforms.__wrapped__ = original
    ul_dataset.YOLODataset.build_transforms = build_transforms


def base_record(root: Path, class_map: dict[str, str]) -> dict:
    """The base set as the model card records it: provenance and image/box counts per split."""
    counts = {}
    for split in ("train", "valid"):
        coco = json.loads((root / "annotations" / f"{split}.json").read_text())
        cats = {c["id"] for c in coco["categories"] if c["name"] in class_map}
        counts[split] = {"images": len(coco["images"]),
                         "boxes": sum(1 for a in coco["annotations"] if a["category_id"] in cats)}
    return {**fielddata.read_provenance(root), "role": "base", **counts}


def choose_calibration(coco: dict, class_map: dict[str, str], count: int = 100, seed: int = 0) -> list[str]:
    """Pick `count` training images stratified by class: rarest classes first so each is represented."""
    labels, names = coco_to_yolo_labels(coco, class_map)
    per_class: dict[int, list[str]] = {i: [] for i in range(len(names))}
    for fname, lines in sorted(labels.items()):
        present = {int(line.split()[0]) for line in lines}
        for c in present:
            per_class[c].append(fname)
    rng = random.Random(seed)
    chosen: list[str] = []
    order = sorted(per_class, key=lambda c: len(per_class[c]))
    pools = {c: rng.sample(per_class[c], len(per_class[c])) for c in order}
    while len(chosen) < min(count, len(labels)):
        progressed = False
        for c in order:
            while pools[c] and pools[c][0] in chosen:
                pools[c].pop(0)
            if pools[c] and len(chosen) < count:
                chosen.append(pools[c].pop(0))
                progressed = True
        if not progressed:
            break
    return sorted(chosen)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def train(args) -> Path:
    """Train (or resume) and return the best checkpoint path."""
    work = Path(args.work).resolve()
    offline_env(work)
    import torch  # noqa: F401  (train extra only)
    from ultralytics import YOLO
    from ultralytics.utils import torch_utils

    threads = args.threads or usable_cores()
    torch.set_num_threads(threads)
    if hasattr(torch_utils, "NUM_THREADS"):
        torch_utils.NUM_THREADS = threads
    class_map = parse_class_map(args.class_map)
    data_yaml = prepare_dataset(base_data(args), work, class_map, oversample=args.oversample,
                                oversample_factor=args.oversample_factor,
                                polygons=bool(args.copy_paste))
    sources = [base_record(base_data(args), class_map)] + add_field_sets(
        data_yaml, [Path(p) for p in args.data[1:]], work, class_map, args.holdout, args.seed, args.field_repeat)
    run_dir = work / "runs" / args.name
    run_dir.mkdir(parents=True, exist_ok=True)
    last = run_dir / "weights" / "last.pt"
    augment_path = run_dir / AUGMENT_FILE
    if last.exists() and not args.restart and augment_path.is_file():
        augment = json.loads(augment_path.read_text())  # a resumed run keeps the augmentations it started with
    else:
        augment = {"lamps": ({"p": args.lamp_p, "max_strength": args.lamp_max_strength,
                              "balance_p": args.lamp_balance_p} if args.lamp_p else None),
                   "closeups": {"per_photo": args.closeups} if args.closeups else None}
    if augment.get("closeups"):  # the crops are drawn from the seed: a resumed run gets the same ones back
        augment["closeups"] = add_closeups(data_yaml, base_data(args), class_map, augment["closeups"]["per_photo"],
                                           args.seed)
    # export (maybe a later --skip-train call) records what this run trained on
    write_durably(run_dir / SOURCES_FILE, json.dumps(sources, indent=1) + "\n")
    write_durably(augment_path, json.dumps(augment, indent=1) + "\n")
    apply_lamp_augment(augment.get("lamps"))
    device = args.device or ("0" if torch.cuda.is_available() else "cpu")
    t0 = time.time()
    state = None
    if last.exists() and not args.restart:
        state = checkpoint_state(torch.load(last, map_location="cpu", weights_only=False))
    if state == "finished":
        # Ultralytics would start a fresh run on its own default data (coco8) from a finished checkpoint
        print(f"{run_dir} finished its training already: exporting its best.pt (--restart trains it again)")
    elif state == "interrupted":
        print(f"resuming {last}")
        YOLO(str(last)).train(resume=True, device=device)
    else:
        # --init starts from earlier weights (e.g. the shipped model.pt) instead of random: no hub download here
        model = YOLO(args.init) if args.init else YOLO("yolo11n.yaml")
        model.train(data=str(data_yaml), device=device, project=str(work / "runs"), **train_settings(args))
    print(f"training wall time this call: {time.time() - t0:.0f} s")
    return run_dir / "weights" / "best.pt"


def train_settings(args) -> dict:
    """The Ultralytics `train` settings a fresh stage runs with (data, device and project aside)."""
    overrides = {k: getattr(args, k) for k in AUGMENT_KEYS + TRAINING_KEYS if getattr(args, k) is not None}
    return dict(
        epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, seed=args.seed, deterministic=True,
        workers=args.workers, name=args.name, exist_ok=True, pretrained=bool(args.init), plots=False, patience=0,
        cache="ram", amp=False, verbose=True, optimizer=args.optimizer, cos_lr=args.cos_lr,
        close_mosaic=args.close_mosaic if args.close_mosaic is not None else max(1, args.epochs // 10),
        **({"lr0": args.lr0} if args.lr0 else {}),
        # unset, Ultralytics' own default (3 warm-up epochs) applies
        **({"warmup_epochs": args.warmup_epochs} if args.warmup_epochs is not None else {}),
        **overrides,
        # feature distillation (Ultralytics' distill_model): the frozen teacher sees the same batches
        **({"distill_model": args.distill_from, "dis": args.distill_weight} if args.distill_from else {}),
    )


def average_weights(state_dicts: list[dict]) -> dict:
    """Element-wise mean of several models' same-named weights (torch tensors or numpy arrays), each in its dtype.

    Integer entries (BatchNorm's batch counters) are counters, not weights: the last model's are kept.
    """
    if not state_dicts:
        raise ValueError("no weights to average")
    keys = list(state_dicts[0])
    for i, sd in enumerate(state_dicts[1:], 1):
        if list(sd) != keys:
            raise ValueError(f"weights {i} do not have the same layers as weights 0: cannot average them")
    out = {}
    for key in keys:
        values = [sd[key] for sd in state_dicts]
        dtype = values[0].dtype
        if not _is_floating(dtype):
            out[key] = values[-1]
            continue
        # accumulate in float32 whatever the stored precision (Ultralytics keeps checkpoints in FP16)
        total = sum(_as_float32(v) for v in values)
        mean = total / len(values)
        out[key] = mean.to(dtype) if hasattr(mean, "to") else mean.astype(dtype)
    return out


def _is_floating(dtype) -> bool:
    import numpy as np

    return bool(getattr(dtype, "is_floating_point", False)) or (isinstance(dtype, np.dtype)
                                                                 and np.issubdtype(dtype, np.floating))


def _as_float32(value):
    return value.float() if hasattr(value, "float") else value.astype("float32")


def last_epochs(weights_dir: Path, count: int, epochs: int) -> list[Path]:
    """The checkpoints of a finished run's last `count` epochs (Ultralytics' weights/epoch<N>.pt, N from 0)."""
    wanted = [weights_dir / f"epoch{n}.pt" for n in range(epochs - count, epochs)]
    missing = [p.name for p in wanted if not p.exists()]
    if count < 1 or count > epochs:
        raise ValueError(f"--average-last {count}: the run has {epochs} epochs")
    if missing:
        raise ValueError(f"--average-last {count} needs {', '.join(missing)} in {weights_dir} "
                         "(train with --save-period 1 so that every epoch is kept)")
    return wanted


def epochs_kept(weights_dir: Path) -> int:
    """How many epochs a --save-period 1 run went through: one past its highest weights/epoch<N>.pt."""
    numbers = [int(p.stem[5:]) for p in weights_dir.glob("epoch*.pt") if p.stem[5:].isdigit()]
    if not numbers:
        raise ValueError(f"no epoch<N>.pt in {weights_dir} (train with --save-period 1 to keep every epoch)")
    return max(numbers) + 1


def average_last(args) -> Path:
    """Average the run's last --average-last epochs into weights/average-last-<K>.pt and return that path."""
    import torch

    weights_dir = Path(args.work).resolve() / "runs" / args.name / "weights"
    # a --time run settles its epoch count itself: count the checkpoints it kept
    epochs = epochs_kept(weights_dir) if getattr(args, "time", None) else args.epochs
    paths = last_epochs(weights_dir, args.average_last, epochs)
    ckpts = [torch.load(p, map_location="cpu", weights_only=False) for p in paths]
    model = ckpts[-1]["ema"]
    model.load_state_dict(average_weights([c["ema"].state_dict() for c in ckpts]))
    out = weights_dir / f"average-last-{args.average_last}.pt"
    # weights only, like a finished run's best.pt: an optimizer state would make it look resumable
    torch.save({**ckpts[-1], "ema": model, "optimizer": None, "epoch": -1,
                "averaged": [p.name for p in paths]}, out)
    print(f"averaged {', '.join(p.name for p in paths)} into {out}")
    return out


def checkpoint_state(ckpt: dict) -> str:
    """'interrupted' when an Ultralytics checkpoint can resume, 'finished' when training stripped it at the end."""
    # a finished run's last.pt has its optimizer stripped and epoch set to -1 (Ultralytics' strip_optimizer)
    return "interrupted" if ckpt.get("optimizer") is not None and ckpt.get("epoch", -1) >= 0 else "finished"


def export(args) -> Path:
    """Export best.pt to a static --export-imgsz square ONNX plus metadata into the model folder."""
    work = Path(args.work).resolve()
    offline_env(work)
    from ultralytics import YOLO

    run_dir = work / "runs" / args.name
    best = Path(args.weights) if args.weights else run_dir / "weights" / "best.pt"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = getattr(args, "model_name", None) or model_name(out)
    model = YOLO(str(best))
    onnx_path = Path(model.export(format="onnx", imgsz=args.export_imgsz, batch=1, dynamic=False,
                                  simplify=True, opset=17))
    shutil.copy(onnx_path, out / "model.onnx")
    shutil.copy(best, out / "model.pt")
    from ultralytics.utils.torch_utils import strip_optimizer

    strip_optimizer(str(out / "model.pt"))  # ship weights only (FP16 state dict is Ultralytics' own format)
    names = [model.names[i] for i in sorted(model.names)]
    from daemon import artifact_info

    # the source names itself too (before it is hashed: its hash is the model version, so it carries no hash)
    artifact_info.stamp(out / "model.onnx", artifact_info.describe(
        {"name": name, "class_names": names, "input_size": [args.export_imgsz, args.export_imgsz]}, "",
        "onnx", "fp32"))
    train_args = dict(model.ckpt.get("train_args", {})) if getattr(model, "ckpt", None) else {}
    calib = (out / "calibration.txt")
    meta = {
        "name": name,
        "task": "detect",
        "architecture": "yolo11n",
        "class_names": names,
        "input_size": [args.export_imgsz, args.export_imgsz],
        "input_layout": "NCHW",
        "color_order": "RGB",
        "scale": 1 / 255,
        "letterbox_pad": 114,
        "stride": int(max(model.model.stride)),
        "output_layout": "1x(4+nc)xN, boxes cx,cy,w,h in input pixels, class scores sigmoid-ed",
        "training": {
            "dataset": dataset_fingerprint(base_data(args)),
            # every set trained on: provenance (source, licence), counts per part, and each field set's holdout
            "sources": training_sources(args),
            "class_map": parse_class_map(args.class_map),
            "settings": {k: train_args.get(k) for k in RECIPE_KEYS},
            # what Ultralytics' train_args do not hold: the class-balanced sampling, and the starting and teacher
            # weights by name and hash (train_args has only their machine paths)
            "oversample": ({"class": args.oversample, "factor": args.oversample_factor} if args.oversample else None),
            "init": _init_reference(args.init),
            "distilled_from": ({**_init_reference(args.distill_from), "weight": args.distill_weight}
                               if args.distill_from else None),
            "train_images_sha256": _annotations_hash(base_data(args), "train"),
            # the shipped weights are the mean of the run's last N epochs (stochastic weight averaging)
            "averaged_last_epochs": getattr(args, "average_last", None),
            # lamp casts on training images and zoom-in crops of training photos (daemon/lamps.py, closeups.py)
            "augment": run_augment(args),
        },
        "sources": {"model.pt": sha256(out / "model.pt"), "model.onnx": sha256(out / "model.onnx")},
        "calibration_list": calib.name if calib.exists() else None,
    }
    write_durably(out / "metadata.json", json.dumps(meta, indent=2) + "\n")
    print(f"exported {out / 'model.onnx'}")
    return out / "model.onnx"


# Ultralytics augmentation hyper-parameters exposed as flags (None keeps Ultralytics' default)
# copy_paste pastes mirrored fruit outlines into free space (the labels become polygons for it)
AUGMENT_KEYS = ("mosaic", "mixup", "scale", "translate", "degrees", "fliplr", "flipud", "hsv_h", "hsv_s", "hsv_v",
                "copy_paste")

# Ultralytics settings beyond augmentation that a stage may set: batches resized by up to ±multi_scale of imgsz,
# the classification loss weighted by inverse class frequency to the power cls_pw, a checkpoint kept every
# save_period epochs (what --average-last averages), and a wall-time budget in hours (Ultralytics' time: after the
# first epoch it sets epochs to what fits, and the learning-rate schedule follows; train_args records that count)
TRAINING_KEYS = ("multi_scale", "cls_pw", "save_period", "time")

# The training settings recorded in metadata.json: enough to rerun the recipe (Ultralytics' names)
RECIPE_KEYS = ("epochs", "imgsz", "batch", "seed", "optimizer", "lr0", "lrf", "cos_lr", "warmup_epochs",
               "close_mosaic", "pretrained") + AUGMENT_KEYS + TRAINING_KEYS


def _init_reference(init: str | None) -> dict | None:
    """The starting weights by file name and content hash (no machine path)."""
    if not init:
        return None
    path = Path(init)
    return {"file": path.name, "sha256": sha256(path) if path.is_file() else None}


def model_name(out: Path) -> str:
    """The model's name: its folder's, or for an input-size folder (<model>/sizes/<N>/) the model folder's."""
    out = Path(out).resolve()
    return out.parent.parent.name if out.parent.name == SIZES_DIR and out.name.isdigit() else out.name


def dataset_fingerprint(root: Path) -> dict:
    """The training data by name and content, not by this machine's path: sha256 over every file's relative path
    and sha256, in path order (the same on any machine holding the same files)."""
    root = Path(root).resolve()
    h = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file())
    for p in files:
        h.update(f"{p.relative_to(root).as_posix()}\0{sha256(p)}\n".encode())
    return {"name": root.name, "files": len(files), "sha256": h.hexdigest()}


def _annotations_hash(root: Path, split: str) -> str | None:
    path = root / "annotations" / f"{split}.json"
    return sha256(path) if path.exists() else None


def calibration_path(root: Path, file_name: str) -> str:
    """Where a training photo lies in the dataset it came from, as `<split>/<file>`.

    A built training root (a test split carved out, a final fit's train + valid) links its train/ photos to the
    original dataset's train/ or valid/: the list must name the original place, the one `ripeye optimize
    --calib-root <dataset>` reads.
    """
    photo = Path(root) / "train" / file_name
    return f"{photo.resolve().parent.name}/{file_name}" if photo.exists() else f"train/{file_name}"


def write_calibration_list(args) -> Path:
    root = base_data(args)
    coco = json.loads((root / "annotations" / "train.json").read_text())
    chosen = choose_calibration(coco, parse_class_map(args.class_map), args.calib_count, args.seed)
    out = Path(args.out) / "calibration.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# INT8 calibration images (training photos, stratified by class); paths relative to the dataset\n"
                   + "".join(f"{calibration_path(root, f)}\n" for f in chosen))
    return out




def add_arguments(p) -> None:
    p.add_argument("--data", action="append", default=None,
                   help="COCO dataset root; give it again for field sets (`ripeye dataset import` output), which "
                        "join training minus a held-out part (default: ../shared/datasets/laboro-tomato-big)")
    p.add_argument("--holdout", type=float, default=0.3,
                   help="fraction of each field set held out, by near-duplicate scene, never trained or selected on")
    p.add_argument("--field-repeat", type=int, default=1, help="copies of each field training image per epoch")
    p.add_argument("--work", default=str(Path.home() / "ripeye-train"), help="work dir outside the repo")
    p.add_argument("--class-map", default=None, help="SRC=DST,... (default: Laboro Tomato → ripe,half_ripe,unripe)")
    p.add_argument("--name", default="tomato-yolo11n")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--imgsz", type=int, default=512)
    p.add_argument("--export-imgsz", type=int, default=640)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, 0, ... (default: GPU when present)")
    p.add_argument("--init", default=None, help="start from these weights (e.g. an earlier model.pt)")
    p.add_argument("--optimizer", default="auto", help="Ultralytics optimizer (auto, AdamW, SGD)")
    p.add_argument("--lr0", type=float, default=None, help="initial learning rate (default: Ultralytics' choice)")
    p.add_argument("--cos-lr", action="store_true", help="cosine learning-rate schedule")
    # a stage fine-tuning earlier weights may not want Ultralytics' 3 warm-up epochs (bias rate from 0.1 down)
    p.add_argument("--warmup-epochs", type=float, default=None, help="Ultralytics' warm-up epochs (default 3)")
    p.add_argument("--close-mosaic", type=int, default=None,
                   help="last epochs trained without mosaic (default: a tenth of --epochs, at least 1)")
    p.add_argument("--oversample", default=None, help="repeat training images showing this class (e.g. ripe)")
    p.add_argument("--oversample-factor", type=int, default=2, help="copies of each image showing --oversample")
    for key in AUGMENT_KEYS:
        p.add_argument(f"--{key.replace('_', '-')}", dest=key, type=float, default=None,
                       help=f"Ultralytics augmentation '{key}'")
    p.add_argument("--multi-scale", dest="multi_scale", type=float, default=None,
                   help="resize each batch to a random size within ±this fraction of --imgsz (Ultralytics "
                        "multi_scale; 0 = off)")
    p.add_argument("--cls-pw", dest="cls_pw", type=float, default=None,
                   help="weight the class loss by inverse class frequency to this power, 0–1 (Ultralytics cls_pw)")
    p.add_argument("--save-period", dest="save_period", type=int, default=None,
                   help="also keep every Nth epoch's checkpoint (weights/epochN.pt), e.g. for --average-last")
    p.add_argument("--time", dest="time", type=float, default=None,
                   help="train for this many hours instead of --epochs (Ultralytics time; the epochs run are recorded)")
    p.add_argument("--average-last", dest="average_last", type=int, default=None,
                   help="ship the mean of the last N epochs' weights instead of best.pt (needs --save-period 1)")
    p.add_argument("--distill-from", default=None,
                   help="a teacher's weights (e.g. a larger model.pt): the student also learns to match its features")
    p.add_argument("--distill-weight", type=float, default=6.0, help="the distillation loss's weight (Ultralytics dis)")
    p.add_argument("--lamp-p", dest="lamp_p", type=float, default=0.0,
                   help="share of training images cast under a random greenhouse lamp (daemon/lamps.py; 0 = off)")
    p.add_argument("--lamp-max-strength", dest="lamp_max_strength", type=float, default=1.0,
                   help="the strongest lamp cast drawn (1 = the lamp in full)")
    p.add_argument("--lamp-balance-p", dest="lamp_balance_p", type=float, default=0.25,
                   help="share of lamp-cast images then grey-world balanced, as a camera with auto white balance")
    p.add_argument("--closeups", type=float, default=0.0,
                   help="zoom-in crops per training photo added as training images: one fruit spanning 25-95%% of "
                        "the crop's width (daemon/closeups.py; 0 = none)")
    p.add_argument("--restart", action="store_true", help="ignore an interrupted run instead of resuming it")
    # no default into the repo: a stage trained without --out must not overwrite the shipped model's files
    p.add_argument("--out", default=None,
                   help="model folder to export into (default: <work>/exports/<name>; the shipped model is "
                        "models/tomato-yolo11n, its size variants models/tomato-yolo11n/sizes/<N>)")
    p.add_argument("--model-name", default=None,
                   help="the model's name in metadata.json and the artifacts (default: the --out folder's, or for "
                        "<model>/sizes/<N>/ the model folder's); set it when --out is a staging folder")
    p.add_argument("--weights", default=None, help="export these weights instead of the run's best.pt")
    p.add_argument("--calib-count", type=int, default=100)
    p.add_argument("--skip-train", action="store_true", help="only export (and write the calibration list)")


def weights_record(args) -> dict:
    """The training record that came with --weights: a stage kept as model.pt beside its metadata.json (e.g.
    bench/results/v4/stage*/) exported on a machine without the run's work dir; {} when there is none."""
    weights = getattr(args, "weights", None)
    if not weights:
        return {}
    try:
        meta = json.loads((Path(weights).parent / "metadata.json").read_text())
    except (OSError, ValueError):
        return {}
    return (meta.get("training") or {}) if isinstance(meta, dict) else {}


def run_augment(args) -> dict | None:
    """The augmentations the exported weights trained with: their own record, else the run's as train() wrote it
    (None for a run from before they existed)."""
    recorded = weights_record(args)
    if "augment" in recorded:
        return recorded["augment"]
    path = Path(args.work).resolve() / "runs" / args.name / AUGMENT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def training_sources(args) -> list[dict]:
    """What the exported weights trained on: their own record, else the run's (written by train()); a run trained
    before field sets existed: the base set."""
    recorded = weights_record(args)
    if recorded.get("sources"):
        return recorded["sources"]
    path = Path(args.work).resolve() / "runs" / args.name / SOURCES_FILE
    if path.is_file():
        return json.loads(path.read_text())
    return [base_record(base_data(args), parse_class_map(args.class_map))]


def base_data(args) -> Path:
    """The base dataset (the first --data): its train split, valid split (selection) and calibration images."""
    data = args.data if isinstance(args.data, list) else [args.data] if args.data else []
    return Path(data[0] if data else DEFAULT_DATA)


def export_folder(args) -> Path:
    """Where the stage is exported: --out, else a staging folder beside the run, outside the repo."""
    return Path(args.out) if args.out else Path(args.work) / "exports" / args.name


def main(args) -> int:
    args.data = args.data or [DEFAULT_DATA]
    args.out = str(export_folder(args))
    if not args.skip_train:
        train(args)
    if args.average_last and not args.weights:
        args.weights = str(average_last(args))
    write_calibration_list(args)
    export(args)
    return 0


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="ripeye train")
    add_arguments(parser)
    raise SystemExit(main(parser.parse_args()))
