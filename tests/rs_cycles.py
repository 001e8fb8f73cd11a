"""Child process of test_realsense: open a small recording, read one frameset, close; N times (argv[1])."""

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import depth_recording  # noqa: E402
from daemon.capture import make_source  # noqa: E402
from daemon.config import SourceConfig  # noqa: E402

cycles, path = int(sys.argv[1]), Path(sys.argv[2])
frames = [(np.full((48, 64, 3), 10 * i, np.uint8), np.full((48, 64), 500 + i, np.uint16)) for i in range(6)]
depth_recording.write_recording(path, frames, depth_recording.Camera(64, 48, 50, 50, 32, 24))
for _ in range(cycles):
    source = make_source(SourceConfig(uri=str(path)))
    source.open()
    source.read()  # mid-recording: the playback is still playing when it is stopped
    source.close()
print("cycles done", cycles)
