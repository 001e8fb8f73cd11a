"""Write RealSense recordings (.db3) from dataset photos plus synthetic depth whose per-tomato values are known.

The recording is made by pyrealsense2's own software device and recorder, so it is the real file format and plays
back through the same path as a camera's recording. A truth file (JSON) beside it lists, per frame, the photo, the
intrinsics and each tomato's box, camera-frame position (mm) and whether a nearer tomato hides its centre. By default
depth is registered to colour (same intrinsics, identity extrinsics); with a separate depth camera (make(depth_cam=,
extrinsics=), as a D435 is) the depth stream is the scene as that camera sees it.

    .venv/bin/python bench/depth_recording.py --out daemon/assets/sample-3d.db3 --photos 1 --frames-per-photo 3
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATASET = REPO.parent / "shared" / "datasets" / "laboro-tomato-big"
CLASS_MAP = {"b_fully_ripened": "ripe", "b_half_ripened": "half_ripe", "b_green": "unripe"}


@dataclass
class Camera:
    width: int = 640
    height: int = 640
    fx: float = 600.0
    fy: float = 600.0
    ppx: float = 320.0
    ppy: float = 320.0
    fps: int = 10
    model: str = "brown_conrady"  # librealsense's distortion model name (coefficients all zero)


# a D435-like depth camera for a colour Camera(): its own size and focal length (the same field of view), about 15 mm
# beside the colour camera and turned 0.4° (depth → colour: colour point = rotation · depth point + translation mm)
D435_LIKE_DEPTH = Camera(width=480, height=480, fx=452.0, fy=451.0, ppx=238.5, ppy=242.0)
_YAW = np.radians(0.4)
D435_LIKE_EXTRINSICS = (np.array([[np.cos(_YAW), 0, np.sin(_YAW)], [0, 1, 0], [-np.sin(_YAW), 0, np.cos(_YAW)]]),
                        np.array([-15.0, 0.3, 0.2]))


def pick_photos(data: Path, count: int) -> list[tuple[Path, list[dict]]]:
    """Valid-split photos with the most ripe fruit first (name order breaks ties): (path, [{box, class}])."""
    coco = json.loads((data / "annotations" / "valid.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    boxes: dict[int, list[dict]] = {}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        boxes.setdefault(a["image_id"], []).append({"box": [x, y, x + w, y + h],
                                                    "class": CLASS_MAP.get(names[a["category_id"]], "?")})
    ripe = {i: sum(b["class"] == "ripe" for b in bs) for i, bs in boxes.items()}
    images = sorted(coco["images"], key=lambda im: (-min(ripe.get(im["id"], 0), 4), im["file_name"]))
    return [(data / "valid" / im["file_name"], boxes.get(im["id"], [])) for im in images[:count]]


def synthetic_depth(tomatoes: list[dict], z_front: np.ndarray, cam: Camera, background_mm: float,
                    rng: np.random.Generator, holes_in: tuple = ()) -> tuple[np.ndarray, list[dict]]:
    """Depth (uint16 mm) of a leaf wall with tomatoes (spheres) in front; returns it and the truth per tomato.

    Tomato k's front surface lies at z_front[k] (mm) at the box centre
    and bulges back as a sphere across the box's inscribed ellipse. Nearer tomatoes are drawn last, so they hide
    farther ones where boxes overlap. Per-pixel noise of 1 % of the depth and 3 % random holes imitate a stereo
    camera; tomatoes with their index in `holes_in` lose 90 % of their pixels (the `null` case).
    """
    h, w = cam.height, cam.width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    depth = background_mm + 60.0 * (xx / w) - 40.0 * (yy / h)  # a slightly tilted wall of leaves
    owner = np.full((h, w), -1, np.int32)
    for k in np.argsort(-z_front):  # far to near
        x1, y1, x2, y2 = tomatoes[k]["box"]
        cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, max((x2 - x1) / 2, 1), max((y2 - y1) / 2, 1)
        rho2 = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
        inside = rho2 < 1
        radius_mm = min(rx, ry) * z_front[k] / cam.fx
        surface = z_front[k] + radius_mm * (1 - np.sqrt(np.clip(1 - rho2, 0, 1)))
        nearer = inside & (surface < depth)
        depth[nearer] = surface[nearer]
        owner[nearer] = k
    depth *= 1 + rng.normal(0, 0.01, depth.shape).astype(np.float32)
    depth[rng.random(depth.shape) < 0.03] = 0
    truth = []
    for k, t in enumerate(tomatoes):
        x1, y1, x2, y2 = t["box"]
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        qx, qy = (x2 - x1) / 4, (y2 - y1) / 4
        centre = owner[int(max(0, cy - qy)):int(cy + qy) + 1, int(max(0, cx - qx)):int(cx + qx) + 1]
        occluded = bool((centre != k).mean() > 0.05)  # something nearer covers part of the central region
        if k in holes_in:
            region = owner == k
            depth[region & (rng.random(depth.shape) < 0.9)] = 0
        z = float(z_front[k])
        truth.append({"box": [round(v, 2) for v in t["box"]], "class": t["class"], "occluded": occluded,
                      "holes": k in holes_in,
                      "xyz_mm": [round((cx - cam.ppx) / cam.fx * z, 2), round((cy - cam.ppy) / cam.fy * z, 2),
                                 round(z, 2)]})
    return np.clip(depth, 0, 65535).astype(np.uint16), truth


def depth_camera_view(depth_mm: np.ndarray, cam: Camera, depth_cam: Camera, rotation: np.ndarray,
                      translation_mm: np.ndarray) -> np.ndarray:
    """A colour-frame depth image (uint16 mm, 0 = none) as a depth camera elsewhere sees the same surfaces (uint16
    mm in its own frame): each colour pixel's point is moved into the depth camera (colour point = rotation · depth
    point + translation_mm) and projected there, the nearest one kept per pixel (pinhole, no distortion)."""
    v, u = np.nonzero(depth_mm)
    z = depth_mm[v, u].astype(np.float64)
    colour = np.stack([(u - cam.ppx) / cam.fx * z, (v - cam.ppy) / cam.fy * z, z], axis=1)
    seen = (colour - translation_mm) @ rotation  # Rᵀ(p − t), row vectors
    ud = np.rint(seen[:, 0] / seen[:, 2] * depth_cam.fx + depth_cam.ppx).astype(np.intp)
    vd = np.rint(seen[:, 1] / seen[:, 2] * depth_cam.fy + depth_cam.ppy).astype(np.intp)
    inside = (seen[:, 2] > 0) & (ud >= 0) & (ud < depth_cam.width) & (vd >= 0) & (vd < depth_cam.height)
    out = np.full((depth_cam.height, depth_cam.width), np.inf)
    np.minimum.at(out, (vd[inside], ud[inside]), seen[inside, 2])
    out[np.isinf(out)] = 0
    return np.clip(np.rint(out), 0, 65535).astype(np.uint16)


def write_recording(path: Path, frames: list[tuple[np.ndarray, np.ndarray]], cam: Camera, depth: bool = True,
                    depth_cam: Camera = None, extrinsics: tuple = None, compress: bool = True) -> None:
    """Record (BGR image, depth uint16 mm) pairs through pyrealsense2's software device and recorder; with
    depth=False only the colour stream (a RealSense run without depth, for comparisons). The depth stream has
    `depth_cam`'s intrinsics and `extrinsics` = (rotation 3×3, translation mm), depth → colour, when given; else
    the colour camera's and identity (depth registered to colour). compress=False writes the frames as they are
    (a larger file that plays back without decompressing, closer to what a live camera costs to read)."""
    import pyrealsense2 as rs

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    device = rs.software_device()
    depth_sensor, color_sensor = device.add_sensor("Depth"), device.add_sensor("Color")
    depth_cam = depth_cam or cam
    profiles = []
    for sensor, stream, fmt, bpp, uid, c in ((depth_sensor, rs.stream.depth, rs.format.z16, 2, 0, depth_cam),
                                             (color_sensor, rs.stream.color, rs.format.bgr8, 3, 1, cam)):
        intr = rs.intrinsics()
        intr.width, intr.height, intr.fx, intr.fy, intr.ppx, intr.ppy = c.width, c.height, c.fx, c.fy, c.ppx, c.ppy
        intr.model, intr.coeffs = getattr(rs.distortion, c.model), [0.0] * 5
        vs = rs.video_stream()
        vs.type, vs.index, vs.uid, vs.width, vs.height = stream, 0, uid, c.width, c.height
        vs.fps, vs.bpp, vs.fmt, vs.intrinsics = cam.fps, bpp, fmt, intr
        profiles.append(sensor.add_video_stream(vs))
    depth_sensor.add_read_only_option(rs.option.depth_units, 0.001)
    rotation, translation_mm = extrinsics if extrinsics is not None else (np.eye(3), np.zeros(3))
    to_colour = rs.extrinsics()
    # librealsense keeps the rotation column-major and the translation in metres
    to_colour.rotation = [float(r) for r in np.asarray(rotation, dtype=np.float64).T.ravel()]
    to_colour.translation = [float(t) / 1000.0 for t in translation_mm]
    profiles[0].register_extrinsics_to(profiles[1], to_colour)
    device.create_matcher(rs.matchers.default)
    recorder = rs.recorder(str(path), device, compress)
    queue = rs.frame_queue(len(frames) * 2 + 2)
    sensors = [(depth_sensor, profiles[0], 0, 2), (color_sensor, profiles[1], 1, 3)][0 if depth else 1:]
    for sensor, profile, _, _ in sensors:
        sensor.open(profile)
        sensor.start(queue)
    for n, pair in enumerate(frames):
        for sensor, profile, which, bpp in sensors:
            pixels = pair[1 - which]  # (image, depth)
            f = rs.software_video_frame()
            f.pixels, f.bpp, f.stride = np.ascontiguousarray(pixels), bpp, pixels.shape[1] * bpp
            f.timestamp, f.domain, f.frame_number = n * 1000.0 / cam.fps, rs.timestamp_domain.hardware_clock, n + 1
            f.profile = profile.as_video_stream_profile()
            sensor.on_video_frame(f)
        time.sleep(0.01)  # let the recorder's writer keep up; frames are written in order either way
    for sensor, _, _, _ in sensors:
        sensor.stop()
        sensor.close()
    del recorder  # closing the recorder finishes the file


def make(out: Path, photos: int = 2, frames_per_photo: int = 3, seed: int = 0, holes: bool = True,
         data: Path = DATASET, cam: Camera = None, stamp: bool = False, depth_cam: Camera = None,
         extrinsics: tuple = None) -> dict:
    """Write `out` (.db3) and `out` with .json (truth); return the truth. Background depth differs per frame
    (1000 mm + 7 mm × frame number). With `stamp`, the top-left 8×8 pixels carry the frame number n: grey level n
    in colour and exactly STAMP_MM(n) in depth, so a depth map can be checked against the colour it came with.
    With `depth_cam` and `extrinsics` (rotation, translation mm; depth → colour) the depth stream is what that
    camera sees (depth_camera_view); the truth stays in the colour camera's frame."""
    cam = cam or Camera()
    frames, truth_frames = [], []
    for p, (photo, boxes) in enumerate(pick_photos(Path(data), photos)):
        image = cv2.imread(str(photo), cv2.IMREAD_COLOR)
        if image.shape[:2] != (cam.height, cam.width):
            raise ValueError(f"{photo}: expected {cam.width}x{cam.height}")
        z_front = np.random.default_rng([seed, p]).uniform(350.0, 950.0, len(boxes))  # fixed per scene
        # the largest ripe tomato that no nearer box overlaps becomes the hole-riddled one in the first photo
        clear = [k for k, b in enumerate(boxes) if b["class"] == "ripe" and not any(
            z_front[j] < z_front[k] and _overlap(b["box"], o["box"]) for j, o in enumerate(boxes))]
        big = max(clear, key=lambda k: (boxes[k]["box"][2] - boxes[k]["box"][0]), default=None)
        holes_in = (big,) if holes and p == 0 and big is not None else ()
        for _ in range(frames_per_photo):
            n = len(frames) + 1
            background = 1000.0 + 7.0 * n
            # the same scene each frame (same tomato depths), fresh noise and holes
            depth, tomatoes = synthetic_depth(boxes, z_front, cam, background, np.random.default_rng([seed, p, n]),
                                              holes_in)
            if depth_cam is not None:
                depth = depth_camera_view(depth, cam, depth_cam, *(np.asarray(e, np.float64) for e in extrinsics))
            if stamp:
                image = image.copy()
                image[:8, :8] = n
                depth[:8, :8] = stamp_mm(n)
            frames.append((image, depth))
            truth_frames.append({"frame": n, "photo": photo.name, "background_mm": background, "tomatoes": tomatoes})
    write_recording(out, frames, cam, depth_cam=depth_cam, extrinsics=extrinsics)
    truth = {"camera": cam.__dict__, "frames": truth_frames}
    Path(out).with_suffix(".json").write_text(json.dumps(truth, indent=1))
    return truth


def stamp_mm(n: int) -> int:
    return 2000 + 10 * n


def _overlap(a, b) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="daemon/assets/sample-3d.db3")
    p.add_argument("--data", default=str(DATASET))
    p.add_argument("--photos", type=int, default=1)
    p.add_argument("--frames-per-photo", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    truth = make(Path(args.out), args.photos, args.frames_per_photo, args.seed, data=Path(args.data))
    size = Path(args.out).stat().st_size
    print(f"{args.out}: {len(truth['frames'])} frames, {size / 2**20:.2f} MiB; truth in "
          f"{Path(args.out).with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
