"""Harvest logic on synthetic frames: debouncing, re-announce rate, claim/picked/failed, suppression, calibration."""

import numpy as np
import pytest

from daemon.config import CalibrationConfig, TargetsConfig, TrackingConfig
from daemon.harvest import Harvest, fit_homography
from daemon.vision import Detection

RIPE = Detection("ripe", 0, 0.9, (100.0, 100.0, 160.0, 160.0))
GREEN = Detection("unripe", 2, 0.9, (300.0, 300.0, 360.0, 360.0))


def harvest(**targets):
    cfg = TargetsConfig(**{"min_frames": 3, "min_age_ms": 200, "reannounce_ms": 250, **targets})
    return Harvest(TrackingConfig(lost_after_s=0.5), cfg, CalibrationConfig(), fps=10)


def play(h, frames, start=0.0, dt=0.1, dets=(RIPE, GREEN)):
    """Feed `frames` frames 100 ms apart; return every target message."""
    out = []
    for i in range(frames):
        ids, msgs = h.update(list(dets), start + i * dt, frame_id=i + 1)
        out += msgs
    return out, ids


def test_ripe_offered_after_debounce_and_unripe_never():
    h = harvest()
    msgs, ids = play(h, 2)
    assert msgs == []  # 2 frames < min_frames
    msgs, ids = play(h, 3, start=0.2)
    assert [m["state"] for m in msgs] == ["available"] and msgs[0]["class"] == "ripe"
    m = msgs[0]
    assert m["track_id"] == ids[0] and m["box"] == [100.0, 100.0, 160.0, 160.0] and m["center"] == [130.0, 130.0]
    assert m["expires_at"] == pytest.approx(m["captured_at"] + 0.3) and "arm_xy" not in m
    assert ids[0] != ids[1]  # both tracked, only the ripe one offered


def test_reannounced_at_the_configured_rate():
    h = harvest()
    msgs, _ = play(h, 30)  # 3 s
    available = [m for m in msgs if m["state"] == "available"]
    assert 9 <= len(available) <= 12  # every 250 ms once offered


def test_claim_holds_then_times_out():
    h = harvest(claim_timeout_s=1.0)
    msgs, ids = play(h, 5)
    tid = ids[0]
    assert h.arm_event("claim", tid, "left", now=0.5)["ok"]
    assert not h.arm_event("claim", tid, "right", now=0.55)["ok"]  # nobody else gets it
    msgs, _ = play(h, 5, start=0.5)
    assert all(m["state"] != "available" for m in msgs)
    msgs, _ = play(h, 10, start=1.6)  # past the claim timeout
    assert any(m["state"] == "available" for m in msgs)


def test_picked_never_again_even_after_occlusion():
    h = harvest(picked_iou=0.3, picked_window_s=60)
    _, ids = play(h, 5)
    tid = ids[0]
    assert h.arm_event("claim", tid, "left", now=0.5)["ok"] and h.arm_event("picked", tid, "left", now=0.6)["ok"]
    msgs, _ = play(h, 10, start=0.6)
    assert not [m for m in msgs if m["state"] == "available"]
    # occlusion: nothing seen for 2 s, the track ends; the tomato is seen again 10 px away under a new id
    play(h, 20, start=1.6, dets=(GREEN,))
    moved = Detection("ripe", 0, 0.9, (110.0, 100.0, 170.0, 160.0))
    msgs, ids2 = play(h, 20, start=3.6, dets=(moved, GREEN))
    assert ids2[0] != tid
    assert not [m for m in msgs if m["state"] == "available"]


def test_failed_pick_is_offered_again():
    h = harvest()
    _, ids = play(h, 5)
    tid = ids[0]
    h.arm_event("claim", tid, "left", now=0.5)
    assert h.arm_event("failed", tid, "left", now=0.6)["state"] == "available-again"
    msgs, _ = play(h, 6, start=0.6)
    assert any(m["state"] == "available" and m["track_id"] == tid for m in msgs)


def test_lost_track_is_withdrawn():
    h = harvest()
    msgs, ids = play(h, 5)
    msgs, _ = play(h, 10, start=0.5, dets=(GREEN,))
    lost = [m for m in msgs if m["state"] == "lost"]
    assert len(lost) == 1 and lost[0]["track_id"] == ids[0]


def test_turning_unripe_withdraws():
    h = harvest(min_score=0.6)
    play(h, 5)
    flipped = Detection("half_ripe", 1, 0.9, RIPE.box)
    msgs, _ = play(h, 5, start=0.5, dets=(flipped, GREEN))
    assert [m["state"] for m in msgs][:1] == ["lost"]


def test_arm_events_validate():
    h = harvest()
    assert h.arm_event("claim", "7", "left")["ok"] is False and "integer" in h.arm_event("claim", "7", "left")["error"]
    assert "not an available target" in h.arm_event("claim", 999, "left")["error"]
    assert h.arm_event("picked", 999, "left")["ok"] is False


def test_homography_from_point_pairs_and_arm_xy():
    pixel = np.array([[0, 0], [640, 0], [640, 480], [0, 480], [320, 240]], float)
    arm = np.array([[-200, 500], [200, 500], [200, 200], [-200, 200], [0, 350]], float)
    cal = fit_homography(pixel, arm)
    assert cal.rms_error < 1e-6
    assert cal.to_arm(320, 240) == pytest.approx((0, 350), abs=1e-6)
    cfg = CalibrationConfig(points=[{"pixel": list(p), "arm": list(a)} for p, a in zip(pixel, arm)])
    h = Harvest(TrackingConfig(), TargetsConfig(min_frames=1, min_age_ms=0), cfg)
    msgs, _ = play(h, 2)
    u, v = msgs[0]["center"]
    assert msgs[0]["arm_xy"] == pytest.approx(list(cal.to_arm(u, v)), abs=0.1)


def test_calibration_needs_four_pairs():
    with pytest.raises(ValueError, match="at least 4"):
        fit_homography(np.zeros((3, 2)), np.zeros((3, 2)))
    with pytest.raises(Exception, match="4 point pairs"):
        CalibrationConfig(points=[{"pixel": [0, 0], "arm": [0, 0]}] * 3)


def test_scene_cut_restarts_tracks_with_fresh_ids():
    h = harvest()
    dark = np.zeros((64, 64, 3), np.uint8)
    bright = np.full((64, 64, 3), 200, np.uint8)
    for i in range(5):
        ids, msgs = h.update([RIPE], i * 0.1, i, image=dark)
    first = ids[0]
    ids, msgs = h.update([RIPE], 0.5, 5, image=bright)  # the view jumped
    assert any(m["state"] == "lost" and m["track_id"] == first for m in msgs)
    assert ids[0] is None or ids[0] > first  # never a reused id
    for i in range(6, 12):
        ids, _ = h.update([RIPE], i * 0.1, i, image=bright)
    assert ids[0] > first and h.counts()["scene_cuts"] == 1


def test_failed_after_picked_is_refused_and_never_reannounced():
    h = harvest(picked_window_s=60)
    _, ids = play(h, 5)
    tid = ids[0]
    assert h.arm_event("claim", tid, "left", now=0.5)["ok"]
    assert h.arm_event("picked", tid, "left", now=0.6) == {"ok": True, "arm_id": "left", "track_id": tid,
                                                           "state": "picked", "claimed": True}
    late = h.arm_event("failed", tid, "left", now=0.7)
    assert late["ok"] is False and "already reported picked" in late["error"] and late["state"] == "picked"
    assert h.arm_event("picked", tid, "left", now=0.75)["duplicate"] is True  # a redelivered picked: same answer
    msgs, _ = play(h, 10, start=0.8)
    assert not [m for m in msgs if m["state"] == "available" and m["track_id"] == tid]
    play(h, 20, start=1.8, dets=(GREEN,))  # the track ends; a late failed is still refused, not "unknown"
    assert "already reported picked" in h.arm_event("failed", tid, "left", now=4.0)["error"]


def test_picked_without_claim_is_accepted_and_says_so():
    h = harvest()
    _, ids = play(h, 5)
    reply = h.arm_event("picked", ids[0], "left", now=0.5)
    assert reply["ok"] is True and reply["claimed"] is False
    msgs, _ = play(h, 10, start=0.6)
    assert not [m for m in msgs if m["state"] == "available" and m["track_id"] == ids[0]]


# ---- several arms (issue 27) ---------------------------------------------------------------------------------
def test_a_claim_belongs_to_one_arm_and_only_it_may_report_it():
    h = harvest()
    _, ids = play(h, 5)
    tid = ids[0]
    grant = h.arm_event("claim", tid, "left", now=0.5)
    assert grant["granted"] is True and grant["arm_id"] == "left"
    other = h.arm_event("claim", tid, "right", now=0.55)
    assert other["granted"] is False and other["holder"] == "left" and "claimed by arm left" in other["error"]
    again = h.arm_event("claim", tid, "left", now=0.56)  # a redelivered claim from the holder: granted again
    assert again["granted"] is True and again["duplicate"] is True
    failed = h.arm_event("failed", tid, "right", now=0.6)  # right never held it: its failed must not free it
    assert failed["ok"] is False and "does not hold a claim" in failed["error"]
    picked = h.arm_event("picked", tid, "right", now=0.6)
    assert picked["ok"] is False and "only the arm holding the claim" in picked["error"]
    msgs, _ = play(h, 5, start=0.6)
    assert not [m for m in msgs if m["track_id"] == tid and m["state"] == "available"]  # still left's
    assert h.arm_event("picked", tid, "left", now=1.2)["ok"] is True
    dup = h.arm_event("picked", tid, "right", now=1.3)
    assert dup["ok"] is False and "picked by arm left" in dup["error"]


def test_failed_needs_a_claim():
    h = harvest()
    _, ids = play(h, 5)
    reply = h.arm_event("failed", ids[0], "left", now=0.5)
    assert reply["ok"] is False and "not claimed" in reply["error"]


def test_an_arm_going_offline_releases_its_claims_at_once():
    h = harvest(claim_timeout_s=60)
    _, ids = play(h, 5)
    tid = ids[0]
    assert h.arm_event("claim", tid, "left", now=0.5)["granted"]
    assert h.release_arm("right") == [] and h.release_arm("left") == [tid]
    msgs, _ = play(h, 2, start=0.5)
    assert [m["state"] for m in msgs if m["track_id"] == tid] == ["available"]  # offered again on the next frame
    assert h.arm_event("claim", tid, "right", now=0.8)["granted"] is True
    assert h.counts()["claims_by_arm"] == {"right": 1} and h.counts()["released"] == 1


def test_a_claimed_fruit_covered_by_the_gripper_keeps_its_id_and_claim():
    """Claim, then no detection for 3 s (lost_after_s is 0.5), then the fruit seen again 8 px away: the same id,
    still claimed, no `lost`, no new offer; picked is accepted."""
    h = harvest(claim_timeout_s=5.0)
    _, ids = play(h, 5)
    tid = ids[0]
    assert h.arm_event("claim", tid, "left", now=0.5)["granted"]
    hidden, _ = play(h, 30, start=0.5, dets=(GREEN,))
    nudged = Detection("ripe", 0, 0.9, (108.0, 100.0, 168.0, 160.0))
    back, ids2 = play(h, 5, start=3.5, dets=(nudged, GREEN))
    assert ids2[0] == tid
    assert not [m for m in hidden + back if m["track_id"] == tid]  # neither lost nor offered again
    assert h.tracks[tid].state == "claimed" and h.tracks[tid].claimed_by == "left"
    assert h.arm_event("picked", tid, "left", now=4.0)["claimed"] is True


def test_picked_is_accepted_while_the_fruit_is_hidden_and_after_its_track_ended():
    h = harvest(claim_timeout_s=1.0)
    _, ids = play(h, 5)
    tid = ids[0]
    assert h.arm_event("claim", tid, "left", now=0.5)["granted"]
    msgs, _ = play(h, 30, start=0.5, dets=(GREEN,))  # hidden past the claim timeout: withdrawn
    assert [m["state"] for m in msgs if m["track_id"] == tid] == ["lost"] and tid not in h.tracks
    late = h.arm_event("picked", tid, "left", now=3.6)
    assert late["ok"] is True and late["state"] == "picked"
    msgs, _ = play(h, 10, start=3.6)  # the same spot seen again: that picked fruit, never offered
    assert not [m for m in msgs if m["state"] == "available"]


def test_a_tracker_rebuilt_by_a_config_edit_keeps_ids_claims_and_picks():
    """tracking.match_threshold changes (ByteTrack is rebuilt): the picked fruit stays picked, the claimed one
    stays claimed under its id, the available one keeps its id with no `lost`; new ids are never reused ones."""
    h = harvest(picked_window_s=0)  # only the track's own state may keep the picked fruit from coming back
    third = Detection("ripe", 0, 0.9, (500.0, 100.0, 560.0, 160.0))
    dets = (RIPE, GREEN, third, Detection("ripe", 0, 0.9, (300.0, 40.0, 350.0, 90.0)))
    _, ids = play(h, 5, dets=dets)
    picked, claimed, available = ids[0], ids[2], ids[3]
    assert h.arm_event("claim", picked, "left", now=0.5)["granted"] and h.arm_event("picked", picked, "left", now=0.5)
    assert h.arm_event("claim", claimed, "right", now=0.5)["granted"]
    before = h.max_id
    h.reconfigure(TrackingConfig(lost_after_s=0.5, match_threshold=0.7, history=10), h.cfg, CalibrationConfig(),
                  fps=10)
    msgs, ids2 = play(h, 40, start=0.5, dets=dets)  # 4 s
    assert ids2 == ids
    assert not [m for m in msgs if m["state"] == "lost"]
    assert not [m for m in msgs if m["track_id"] in (picked, claimed) and m["state"] == "available"]
    assert any(m["track_id"] == available and m["state"] == "available" for m in msgs)
    assert h.tracks[claimed].claimed_by == "right" and h.tracks[picked].state == "picked"
    fresh, ids3 = play(h, 3, start=4.5, dets=(*dets, Detection("unripe", 2, 0.9, (10.0, 300.0, 60.0, 350.0))))
    assert ids3[-1] > before  # a new fruit gets an id never used before
