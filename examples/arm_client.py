"""A small harvesting-arm simulator: takes offered targets, claims one, "picks" it, reports picked (or failed).

    python examples/arm_client.py --port 1883 --device demo --arm-id left --seconds 30 --report arm.json

Each arm has an id: it sends on arm/<arm_id>/{claim,picked,failed} with {"arm_id", "track_id"}, reads its own
answers on arm/<arm_id>/result (so it never acts on another arm's grant), and leaves a last will "offline" on
arm/<arm_id>/status, which makes the daemon release its claims at once if it dies. It keeps a log of everything it
saw and did, which the end-to-end tests and bench/harvest_eval.py read.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time

import paho.mqtt.client as mqtt


class ArmSimulator:
    def __init__(self, host: str, port: int, prefix: str, device: str, pick_time_s: float = 0.2,
                 fail_rate: float = 0.0, seed: int = 0, arm_id: str = "arm"):
        self.base = f"{prefix}/{device}"
        self.arm_id = arm_id
        self.own = f"{self.base}/arm/{arm_id}"
        self.pick_time_s, self.fail_rate = pick_time_s, fail_rate
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.busy_with: int | None = None
        self.log: list[dict] = []  # every target message and acknowledgement, with arrival time
        self.picked: set[int] = set()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"arm-sim-{device}-{arm_id}")
        self.client.will_set(f"{self.own}/status", "offline", qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect_async(host, port)

    def start(self) -> ArmSimulator:
        self.client.loop_start()
        return self

    def stop(self) -> None:
        self.client.publish(f"{self.own}/status", "offline", qos=1, retain=True).wait_for_publish(2)
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client, userdata, flags, rc, props=None):
        client.subscribe(f"{self.base}/targets", qos=1)
        client.subscribe(f"{self.own}/result", qos=1)  # this arm's answers only
        client.publish(f"{self.own}/status", "online", qos=1, retain=True)

    def _send(self, action: str, track_id: int) -> None:
        self.client.publish(f"{self.own}/{action}", json.dumps({"arm_id": self.arm_id, "track_id": track_id}), qos=1)

    def _on_message(self, client, userdata, msg):
        body = json.loads(msg.payload)
        kind = "target" if msg.topic.endswith("/targets") else body.get("action", "unknown") + "_result"
        with self.lock:
            self.log.append({"kind": kind, "arrived": time.time(), **body})
        if kind == "target" and body["state"] == "available":
            self._maybe_claim(body)
        elif kind == "claim_result":
            if body.get("granted") and body.get("arm_id") == self.arm_id:
                threading.Thread(target=self._pick, args=(body["track_id"],), daemon=True).start()
            else:
                with self.lock:
                    self.busy_with = None

    def _maybe_claim(self, target: dict) -> None:
        with self.lock:
            if self.busy_with is not None or target["track_id"] in self.picked:
                return
            if time.time() > target["expires_at"] + 1.0:  # stale: the position can no longer be trusted
                return
            self.busy_with = target["track_id"]
        self._send("claim", target["track_id"])

    def _pick(self, track_id: int) -> None:
        time.sleep(self.pick_time_s)
        failed = self.rng.random() < self.fail_rate
        self._send("failed" if failed else "picked", track_id)
        with self.lock:
            if not failed:
                self.picked.add(track_id)
            self.busy_with = None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="localhost")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--prefix", default="ripeye")
    p.add_argument("--device", default="demo")
    p.add_argument("--arm-id", default="arm", help="this arm's id (letters, digits, _ . -)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pick-time", type=float, default=0.2)
    p.add_argument("--fail-rate", type=float, default=0.0)
    p.add_argument("--seconds", type=float, default=0, help="0 = until Ctrl-C")
    p.add_argument("--report", help="write the event log here as JSON")
    args = p.parse_args()
    arm = ArmSimulator(args.host, args.port, args.prefix, args.device, args.pick_time, args.fail_rate, args.seed,
                       args.arm_id).start()
    try:
        t_end = time.time() + args.seconds if args.seconds else None
        while t_end is None or time.time() < t_end:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    arm.stop()
    offered = {e["track_id"] for e in arm.log if e["kind"] == "target" and e["state"] == "available"}
    print(f"offered {len(offered)} targets, picked {len(arm.picked)}")
    if args.report:
        with open(args.report, "w") as f:
            json.dump(arm.log, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
