"""Numeric tests of the pure pre/post-processing functions."""

import numpy as np
import pytest

from daemon import vision


def test_letterbox_landscape_keeps_aspect_and_pads_114():
    frame = np.full((480, 640, 3), 7, np.uint8)
    out, lb = vision.letterbox(frame, (640, 640))
    assert out.shape == (640, 640, 3)
    assert lb.scale == pytest.approx(1.0)
    assert (lb.pad_x, lb.pad_y) == (0.0, 80.0)
    assert (out[:80] == 114).all() and (out[560:] == 114).all()
    assert (out[80:560] == 7).all()


def test_letterbox_downscales_portrait_and_centres():
    frame = np.zeros((1280, 720, 3), np.uint8)
    out, lb = vision.letterbox(frame, (640, 640))
    assert out.shape == (640, 640, 3)
    assert lb.scale == pytest.approx(0.5)
    assert lb.pad_x == 140.0 and lb.pad_y == 0.0  # 360 wide content centred in 640


def test_to_tensor_rgb_nchw_scaled():
    img = np.zeros((2, 3, 3), np.uint8)
    img[..., 0] = 255  # blue in BGR
    t = vision.to_tensor(img)
    assert t.shape == (1, 3, 2, 3) and t.dtype == np.float32
    assert t[0, 2].max() == pytest.approx(1.0)  # blue lands in channel 2 of RGB
    assert t[0, 0].max() == 0.0


def _head(boxes_cxcywh, class_scores):
    """Build a 1×(4+nc)×N head output from lists."""
    b = np.asarray(boxes_cxcywh, np.float32).T
    s = np.asarray(class_scores, np.float32).T
    return np.concatenate([b, s])[None]


def test_decode_filters_by_confidence_and_converts_boxes():
    out = _head([[100, 100, 20, 40], [300, 300, 10, 10]], [[0.9, 0.1, 0.0], [0.1, 0.2, 0.05]])
    boxes, scores, ids = vision.decode_yolo(out, 0.25, num_classes=3)
    assert boxes.tolist() == [[90, 80, 110, 120]]
    assert scores.tolist() == pytest.approx([0.9]) and ids.tolist() == [0]


def test_nms_suppresses_overlaps_within_a_class_only():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    ids = np.array([0, 0, 1, 0])
    keep = vision.batched_nms(boxes, scores, ids, 0.5)
    assert sorted(keep.tolist()) == [0, 2, 3]  # box 1 overlaps box 0 (IoU 0.68) in class 0; box 2 is class 1


def test_nms_iou_threshold_boundary():
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10]], np.float32)  # IoU = 50/150 = 1/3
    scores = np.array([0.9, 0.8], np.float32)
    assert vision.nms(boxes, scores, 0.34).tolist() == [0, 1]
    assert vision.nms(boxes, scores, 0.33).tolist() == [0]


def test_unletterbox_inverts_letterbox_and_clips():
    frame = np.zeros((480, 640, 3), np.uint8)
    _, lb = vision.letterbox(frame, (320, 320))  # scale 0.5, pad_y 40
    boxes = np.array([[10, 50, 110, 90], [-5, 0, 400, 400]], np.float32)
    out = vision.unletterbox(boxes, lb)
    assert out[0].tolist() == pytest.approx([20, 20, 220, 100])
    assert out[1].tolist() == pytest.approx([0, 0, 640, 480])


def test_postprocess_end_to_end_maps_to_frame_pixels():
    frame = np.zeros((480, 640, 3), np.uint8)
    _, lb = vision.letterbox(frame, (640, 640))
    out = _head([[320, 320, 100, 50], [322, 321, 100, 50], [100, 500, 40, 40]],
                [[0.1, 0.9, 0.1], [0.1, 0.8, 0.1], [0.7, 0.0, 0.0]])
    dets = vision.postprocess(out, lb, ["ripe", "half_ripe", "unripe"], 0.25, 0.45)
    assert [d.class_name for d in dets] == ["half_ripe", "ripe"]
    assert dets[0].box == pytest.approx((270, 215, 370, 265))
    assert dets[1].box == pytest.approx((80, 400, 120, 440))
    j = dets[0].to_json(640, 480)
    assert j["class"] == "half_ripe" and j["class_id"] == 1 and j["center"] == [320.0, 240.0]
    assert j["box_norm"] == pytest.approx([270 / 640, 215 / 480, 370 / 640, 265 / 480], abs=1e-5)


def test_postprocess_empty():
    out = np.zeros((1, 7, 100), np.float32)
    _, lb = vision.letterbox(np.zeros((10, 10, 3), np.uint8), (64, 64))
    assert vision.postprocess(out, lb, ["a", "b", "c"], 0.25, 0.45) == []


def test_agnostic_nms_keeps_one_box_per_fruit():
    frame = np.zeros((640, 640, 3), np.uint8)
    _, lb = vision.letterbox(frame, (640, 640))
    out = _head([[320, 320, 100, 100], [322, 321, 100, 100]], [[0.1, 0.8, 0.1], [0.1, 0.1, 0.7]])
    per_class = vision.postprocess(out, lb, ["ripe", "half_ripe", "unripe"], 0.25, 0.45)
    agnostic = vision.postprocess(out, lb, ["ripe", "half_ripe", "unripe"], 0.25, 0.45, agnostic=True)
    assert [d.class_name for d in per_class] == ["half_ripe", "unripe"]
    assert [d.class_name for d in agnostic] == ["half_ripe"]


def test_grey_world_white_balance_neutralises_a_cast_inside_the_letterbox_only():
    from daemon.lamps import cast

    rng = np.random.default_rng(0)
    photo = rng.integers(60, 200, (300, 400, 3), dtype=np.uint8)
    sodium = cast(photo, "hps", 1.0)  # orange: blue nearly gone
    plain, _ = vision.preprocess(sodium, (320, 320))
    balanced, lb = vision.preprocess(sodium, (320, 320), "grey_world")
    top = int(lb.pad_y)
    content = balanced[0, :, top:320 - top]
    means = content.reshape(3, -1).mean(axis=1)  # RGB
    assert means.max() - means.min() < 0.03  # grey again
    raw = plain[0, :, top:320 - top].reshape(3, -1).mean(axis=1)
    assert raw[0] - raw[2] > 0.2  # as seen: red far above blue
    assert np.allclose(balanced[0, :, :top - 1], 114 / 255)  # the border stays the model's grey
    assert np.array_equal(plain, vision.preprocess(sodium, (320, 320), "none")[0])
    with pytest.raises(ValueError, match="white balance 'cloudy'"):
        vision.preprocess(sodium, (320, 320), "cloudy")
