"""Pre- and post-processing for YOLO11 detectors as small pure functions: letterbox, decode, NMS, box mapping."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from daemon.lamps import auto_balance, grey_world

PAD_VALUE = 114


@dataclass(frozen=True)
class Letterbox:
    """How a frame was fitted into the model input: uniform scale, then padding left/top."""

    scale: float
    pad_x: float
    pad_y: float
    frame_w: int
    frame_h: int


def letterbox(frame: np.ndarray, size: tuple[int, int], pad_value: int = PAD_VALUE,
              balance=None) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping aspect ratio and pad to size=(width, height), centred like Ultralytics' LetterBox; `balance`
    (image → image) is applied to the resized picture before the padding, so the grey border does not count."""
    h, w = frame.shape[:2]
    out_w, out_h = size
    scale = min(out_w / w, out_h / h)
    new_w, new_h = int(round(w * scale)), int(round(h * scale))
    pad_x, pad_y = (out_w - new_w) / 2, (out_h - new_h) / 2
    if (new_w, new_h) != (w, h):
        frame = cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    if balance is not None:
        frame = balance(frame)
    top, bottom = int(round(pad_y - 0.1)), int(round(pad_y + 0.1))
    left, right = int(round(pad_x - 0.1)), int(round(pad_x + 0.1))
    out = cv2.copyMakeBorder(frame, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(pad_value,) * 3)
    return out, Letterbox(scale, float(left), float(top), w, h)


def to_tensor(image_bgr: np.ndarray, rgb: bool = True, layout: str = "NCHW") -> np.ndarray:
    """HWC uint8 BGR → float32 batch of one in [0, 1], in the colour order and layout the model wants."""
    img = image_bgr[..., ::-1] if rgb else image_bgr
    if layout == "NCHW":
        img = img.transpose(2, 0, 1)
    return np.ascontiguousarray(img[None], dtype=np.float32) * np.float32(1 / 255)


# detect.white_balance: what a frame's colours go through before the model (at input size, after the resize)
# auto: grey world only for frames whose colour lies outside the training photos' daylight (a lamp's cast)
WHITE_BALANCE = {"none": None, "grey_world": grey_world, "auto": auto_balance}


def preprocess(frame_bgr: np.ndarray, size: tuple[int, int],
               white_balance: str = "none") -> tuple[np.ndarray, Letterbox]:
    """Letterbox (and white-balance, when asked) then tensor: what every runtime is fed."""
    if white_balance not in WHITE_BALANCE:
        raise ValueError(f"white balance {white_balance!r}: one of {', '.join(WHITE_BALANCE)}")
    boxed, lb = letterbox(frame_bgr, size, balance=WHITE_BALANCE[white_balance])
    return to_tensor(boxed), lb


def xywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    out = np.empty_like(b)
    half_w, half_h = b[:, 2] / 2, b[:, 3] / 2
    out[:, 0], out[:, 1] = b[:, 0] - half_w, b[:, 1] - half_h
    out[:, 2], out[:, 3] = b[:, 0] + half_w, b[:, 1] + half_h
    return out


def decode_yolo(output: np.ndarray, conf_threshold: float,
                num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode a YOLO11 head output 1×(4+nc)×N into (boxes xyxy in input pixels, scores, class ids) above threshold."""
    pred = output[0] if output.ndim == 3 else output
    channels = 4 + num_classes if num_classes else min(pred.shape)
    if pred.shape[0] != channels and pred.shape[1] == channels:  # some exporters emit N×(4+nc)
        pred = pred.T
    scores_all = pred[4:]
    class_ids = scores_all.argmax(axis=0)
    scores = scores_all[class_ids, np.arange(pred.shape[1])]
    keep = scores > conf_threshold
    boxes = xywh_to_xyxy(pred[:4, keep].T.astype(np.float32))
    return boxes, scores[keep].astype(np.float32), class_ids[keep].astype(np.int64)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices, highest score first."""
    order = scores.argsort()[::-1]
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter + 1e-9)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Class-wise NMS by offsetting each class's boxes far apart (the torchvision trick)."""
    if boxes.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    offset = class_ids[:, None].astype(np.float32) * (float(boxes.max()) + 1.0)
    return nms(boxes + offset, scores, iou_threshold)


def unletterbox(boxes: np.ndarray, lb: Letterbox) -> np.ndarray:
    """Map xyxy boxes from model-input pixels back to frame pixels, clipped to the frame."""
    out = boxes.copy()
    out[:, [0, 2]] = (out[:, [0, 2]] - lb.pad_x) / lb.scale
    out[:, [1, 3]] = (out[:, [1, 3]] - lb.pad_y) / lb.scale
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, lb.frame_w)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, lb.frame_h)
    return out


@dataclass(frozen=True)
class Detection:
    class_name: str
    class_id: int
    confidence: float
    box: tuple[float, float, float, float]

    def to_json(self, frame_w: int, frame_h: int, track_id: int | None = None) -> dict:
        x1, y1, x2, y2 = self.box
        out = {
            "class": self.class_name,
            "class_id": self.class_id,
            "confidence": round(self.confidence, 4),
            "box": [round(x1, 1), round(y1, 1), round(x2, 1), round(y2, 1)],
            "box_norm": [round(x1 / frame_w, 5), round(y1 / frame_h, 5),
                         round(x2 / frame_w, 5), round(y2 / frame_h, 5)],
            "center": [round((x1 + x2) / 2, 1), round((y1 + y2) / 2, 1)],
        }
        if track_id is not None:
            out["track_id"] = track_id
        return out


def postprocess(
    output: np.ndarray,
    lb: Letterbox,
    class_names: list[str],
    conf_threshold: float,
    iou_threshold: float,
    max_detections: int = 300,
    agnostic: bool = False,
) -> list[Detection]:
    """Raw head output → detections in frame pixels, sorted by confidence.

    agnostic=True suppresses overlaps across classes too: one box per fruit, with its most likely ripeness.
    """
    boxes, scores, class_ids = decode_yolo(output, conf_threshold, len(class_names) or None)
    keep = (nms(boxes, scores, iou_threshold) if agnostic and len(boxes)
            else batched_nms(boxes, scores, class_ids, iou_threshold))[:max_detections]
    boxes = unletterbox(boxes[keep], lb)
    return [
        Detection(class_names[c] if c < len(class_names) else str(c), int(c), float(s), tuple(map(float, b)))
        for b, s, c in zip(boxes, scores[keep], class_ids[keep])
    ]


# ---- drawing (snapshots and the live view) ----------------------------------------------------------------------
COLOURS = {"ripe": (40, 40, 230), "half_ripe": (30, 160, 240), "unripe": (60, 190, 60)}


def annotate(image, detections, track_ids=None):
    """Boxes, class, confidence and track id drawn on a BGR image, each label on a filled background that reads on
    any fruit (daemon/liveview.py draws it)."""
    from daemon.liveview import draw_overlay

    return draw_overlay(image, detections, track_ids)
