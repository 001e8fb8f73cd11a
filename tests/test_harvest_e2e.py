"""End to end on the sample clip: daemon + real mosquitto + examples/arm_client.py, scored against the clip's
ground truth by bench/harvest_eval.py (the same code that produces the README figures)."""

import importlib.util

from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("harvest_eval", REPO / "bench" / "harvest_eval.py")
harvest_eval = importlib.util.module_from_spec(spec)
spec.loader.exec_module(harvest_eval)


def test_every_ripe_tomato_offered_picked_once_never_again(tmp_path, broker, model_dir):
    f = harvest_eval.run(None, fps=10.0, workdir=tmp_path, port=broker.port, threads=0)
    assert f["qualifying_ripe"] >= 5, f  # the clip holds enough clearly ripe tomatoes for this to mean something
    assert f["qualifying_offered"] == f["qualifying_ripe"], f
    assert f["reannounced_after_pick"] == 0 and f["reoffered_same_tomato_after_pick"] == 0, f
    assert f["picked"] >= 0.9 * f["targets_offered"], f
    assert f["id_switches_max"] <= 1, f
    assert f["target_latency_ms_median"] <= 1.2 * f["detection_latency_ms_median"], f
    # the arm is sent to ripe fruit: never an unripe one, and few half-ripe (the boundary the model finds hardest)
    assert f["offered_by_truth_class"].get("unripe", 0) == 0, f
    assert f["wrong_offer_share"] <= 0.15, f


def test_matching_is_greedy_by_iou():
    dets = [{"box": [0, 0, 10, 10]}, {"box": [20, 20, 30, 30]}]
    truth = [{"object": "a", "box": [1, 1, 10, 10]}, {"object": "b", "box": [100, 100, 110, 110]}]
    assert harvest_eval.match_frame(dets, truth) == {0: "a"}


def test_an_offer_counts_for_the_tomato_its_box_covers_when_offered():
    """Two overlapping fruit seen as one box drifting from the front one (a) to the one behind (b): the track's
    first object is a, but the arm was sent to b, so b is offered (session 6 counted it unoffered)."""
    box_a, box_b = [0, 0, 40, 40], [30, 0, 70, 40]
    truth = {"frames": [{"frame": i, "boxes": [{"object": "a", "class": "ripe", "box": box_a},
                                               {"object": "b", "class": "ripe", "box": box_b}]}
                        for i in range(1, 7)]}

    def det(box, conf):
        return {"box": box, "class": "ripe", "confidence": conf, "track_id": 7}

    detections = [{"frame_id": 1, "captured_at": 0.0, "published_at": 0.01, "detections": [det(box_a, 0.4)]}]
    detections += [{"frame_id": i, "captured_at": i, "published_at": i + 0.01, "detections": [det(box_b, 0.7)]}
                   for i in range(2, 7)]
    arm_log = [{"kind": "target", "state": "available", "track_id": 7, "frame_id": 6, "box": box_b,
                "arrived": 6.02, "captured_at": 6.0, "published_at": 6.01},
               {"kind": "picked_result", "ok": True, "track_id": 7, "arrived": 6.1}]
    f = harvest_eval.analyse(detections, arm_log, truth)
    assert f["qualifying_ripe"] == 1 and f["qualifying_offered"] == 1, f
    assert f["not_offered"] == {} and f["reoffered_same_tomato_after_pick"] == 0, f


def test_a_tomato_seen_only_on_an_already_picked_track_does_not_qualify():
    """One box over two overlapping fruit, offered and picked over the front one (a), then drifting onto the one
    behind (b) for many frames: the picked track is final, so b was never offerable through it."""
    box_a, box_b = [0, 0, 40, 40], [30, 0, 70, 40]
    truth = {"frames": [{"frame": i, "boxes": [{"object": "a", "class": "ripe", "box": box_a},
                                               {"object": "b", "class": "ripe", "box": box_b}]}
                        for i in range(1, 11)]}
    detections = [{"frame_id": i, "captured_at": i, "published_at": i + 0.01,
                   "detections": [{"box": box_a if i <= 4 else box_b, "class": "ripe", "confidence": 0.8,
                                   "track_id": 7}]} for i in range(1, 11)]
    arm_log = [{"kind": "target", "state": "available", "track_id": 7, "frame_id": 4, "box": box_a,
                "arrived": 4.02, "captured_at": 4.0, "published_at": 4.01},
               {"kind": "picked_result", "ok": True, "track_id": 7, "arrived": 4.5}]
    f = harvest_eval.analyse(detections, arm_log, truth)
    assert f["qualifying_ripe"] == 1 and f["qualifying_offered"] == 1 and f["not_offered"] == {}, f


def test_wrong_offers_are_scored_by_the_fruit_the_last_offer_covered():
    """Track 1 is offered over a ripe fruit; track 2 first over the ripe one, then drifts onto a half-ripe one and is
    offered there (the arm goes where the last offer points); track 3's box covers no fruit."""
    ripe, half, nothing = [0, 0, 40, 40], [100, 0, 140, 40], [300, 300, 340, 340]
    truth = {"frames": [{"frame": i, "boxes": [{"object": "r", "class": "ripe", "box": ripe},
                                               {"object": "h", "class": "half_ripe", "box": half}]}
                        for i in range(1, 6)]}

    def offer(track, frame, box):
        return {"kind": "target", "state": "available", "track_id": track, "frame_id": frame, "box": box,
                "arrived": frame + 0.02, "captured_at": float(frame), "published_at": frame + 0.01}

    arm_log = [offer(1, 2, ripe), offer(2, 2, ripe), offer(2, 4, half), offer(3, 4, nothing)]
    f = harvest_eval.analyse([], arm_log, truth)
    assert f["offered_by_truth_class"] == {"half_ripe": 1, "no fruit": 1, "ripe": 1}, f
    assert f["wrong_offers"] == 2 and f["wrong_offer_share"] == round(2 / 3, 3), f
    assert harvest_eval.analyse([], arm_log, truth, target_classes=("ripe", "half_ripe"))["wrong_offers"] == 1
    assert harvest_eval.analyse([], [], truth)["wrong_offer_share"] == 0.0
