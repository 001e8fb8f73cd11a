"""The typed configuration tree: pydantic models, YAML loading and error messages naming file and key path."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from daemon.paths import default_device_id, default_model_dir

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
SAMPLE_CLIP = PACKAGE_DIR / "assets" / "sample.mp4"
SAMPLE_3D = PACKAGE_DIR / "assets" / "sample-3d.db3"  # RealSense recording, made by bench/make_depth_recording.py
DEFAULT_MODEL_DIR = default_model_dir()  # the checkout's models/, or PREFIX/app/models on an installed copy


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# Luxonis OAK-D output sizes: the colour camera's 1080P mode scaled by its ISP (width, height → numerator,
# denominator); depth aligned to colour on the device needs a width divisible by 16, which all of these are.
OAKD_SIZES = {(640, 360): (1, 3), (960, 540): (1, 2), (1280, 720): (2, 3), (1920, 1080): (1, 1)}


def is_oakd(uri: str) -> bool:
    """Whether source.uri names a Luxonis OAK-D (`oakd`, or `oakd://<mxid-or-ip>`)."""
    uri = uri.strip()
    return uri == "oakd" or uri.startswith("oakd://")


class OakdConfig(Strict):
    """Luxonis OAK-D settings (daemon/oakd.py); other sources ignore them."""

    preset: Literal["default", "robotics", "high_detail"] = Field(
        "robotics", description="depthai's StereoDepth preset (robotics: no temporal filter, which would smear a "
                                "moving camera; high_detail: extended disparity for fruit nearer than ~35 cm)")
    usb2: bool = Field(False, description="cap the link at USB 2 (long or poor cables); a size and fps that need more "
                                          "than USB 2 carries are reported on errors")
    undistort: bool = Field(False, description="remap colour frames with the factory lens calibration on the host, "
                                               "so they match the depth the device aligned to an undistorted colour "
                                               "camera (wide-angle models)")


class SourceConfig(Strict):
    uri: str = "auto"
    width: int = Field(0, ge=0, description="requested capture width; 0 keeps the source's own")
    height: int = Field(0, ge=0)
    fps: float = Field(0.0, ge=0, description="capture rate cap; 0 = the source's native rate")
    realtime: bool = True
    loop: bool = True
    reconnect_initial_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)
    oakd: OakdConfig = OakdConfig()

    @model_validator(mode="after")
    def _oakd_size(self):
        if is_oakd(self.uri) and (self.width or self.height) and (self.width, self.height) not in OAKD_SIZES:
            sizes = ", ".join(f"{w}x{h}" for w, h in OAKD_SIZES)
            raise ValueError(f"an OAK-D gives {sizes} (or width and height 0: 640x360), not "
                             f"{self.width}x{self.height}")
        return self


class ModelConfig(Strict):
    path: str = str(DEFAULT_MODEL_DIR)
    precision: Literal["auto", "fp32", "fp16", "int8"] = "auto"
    imgsz: int = Field(0, ge=0, description="input-size variant of the model folder (sizes/<N>/); 0 = the size "
                       "the folder recommends (metadata default_input_size), else its own")
    alternatives: dict[str, str] = Field(default_factory=dict,
                                         description="named model paths the `model` MQTT command may switch to")
    allow_rejected: bool = Field(False, description="load an artifact the accuracy gate rejected when model.path "
                                                    "names it directly (logged loudly)")
    # installed bundles (cmd/model/install, daemon/lifecycle.py)
    trusted_keys: list[str] = Field(default_factory=list, description="Ed25519 public keys (base64 or files); when "
                                    "set, only bundles signed by one of them are installed")
    keep: int = Field(3, ge=1, description="installed model versions kept in state_dir/models")
    max_bundle_mb: int = Field(1024, ge=1, description="largest bundle a device downloads")
    max_latency_ms: float = Field(0, ge=0, description="a candidate slower than this per frame in its shadow run is "
                                                       "refused; 0 = no budget")
    probation_s: float = Field(600, ge=0, description="after a switch, roll back by itself on errors or a collapse "
                                                      "of ripe detections for this long")
    # a collapse, not a dip: the scene changes under a camera (on the sample clip one 10-s stretch finds 0.45x the
    # ripe fruit per frame of the whole clip), and the shadow run before the switch already compared the two models
    # on the same frames
    min_ripe_fraction: float = Field(0.25, ge=0, le=1, description="on probation, ripe detections per frame below "
                                                                   "this fraction of the previous model's roll back")


class RuntimeConfig(Strict):
    backend: Literal["auto", "measured", "openvino", "ncnn", "onnxruntime", "tensorrt"] = "auto"
    threads: int = Field(0, ge=0, description="inference threads; 0 = the runtime's default")
    inflight: int = Field(1, ge=1, le=8, description="inference requests in flight")
    device: str = "CPU"
    cache_dir: str = "~/.cache/ripeye"
    tensorrt_fp16: bool = True
    tensorrt_int8: bool = False


class DetectConfig(Strict):
    confidence: float = Field(0.25, ge=0, le=1)
    iou: float = Field(0.45, ge=0, le=1)
    classes: list[str] = Field(default_factory=list, description="only publish these classes; empty = all")
    max_detections: int = Field(300, ge=1)
    agnostic_nms: bool = Field(True, description="one box per fruit: suppress overlapping boxes of other classes")
    white_balance: Literal["none", "grey_world", "auto"] = Field(
        "auto", description="colour correction before the model: grey_world scales each channel so the frame averages "
                            "grey (for cameras without auto white balance under grow lights); auto does so only for "
                            "frames whose colour no daylight training photo has; none leaves frames as they are")


class MqttConfig(Strict):
    enabled: bool = True
    host: str = "localhost"
    port: int = Field(1883, ge=1, le=65535)
    topic_prefix: str = "ripeye"
    client_id: str = ""
    qos: int = Field(0, ge=0, le=2)
    keepalive: int = Field(30, ge=5)
    username: Optional[str] = None
    password_file: Optional[str] = None
    password_env: Optional[str] = None
    tls: bool = False
    tls_ca_certs: Optional[str] = None
    tls_client_cert: Optional[str] = None
    tls_client_key: Optional[str] = None
    tls_insecure: bool = False
    outbox_size: int = Field(1000, ge=1, description="messages kept while the broker is unreachable")
    reconnect_min_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(2.0, gt=0, description="back in touch within this long of the broker's return")

    @field_validator("topic_prefix")
    @classmethod
    def _no_wildcards(cls, v: str) -> str:
        if not v or any(c in v for c in "#+") or v.startswith("/") or v.endswith("/"):
            raise ValueError("must be non-empty, without MQTT wildcards or leading/trailing '/'")
        return v

    def password(self) -> Optional[str]:
        """Read the broker password from its file or environment variable (never stored in the config)."""
        if self.password_file:
            return Path(self.password_file).expanduser().read_text().strip()
        if self.password_env:
            return os.environ.get(self.password_env)
        return None


class StatsConfig(Strict):
    interval_s: float = Field(10.0, gt=0)


class TrackingConfig(Strict):
    enabled: bool = True
    activation_threshold: float = Field(0.25, ge=0, le=1, description="min confidence to start a track")
    low_confidence: float = Field(0.1, ge=0, le=1, description="detections down to this confidence keep tracks alive "
                                                               "(ByteTrack's second stage) without being published")
    match_threshold: float = Field(0.8, gt=0, le=1, description="ByteTrack matching threshold")
    lost_after_s: float = Field(1.0, gt=0, description="a track unseen this long ends")
    history: int = Field(30, ge=1, description="class observations kept per track")
    smoothing: float = Field(0.3, gt=0, le=1, description="EMA weight of a new observation in the ripeness score")
    scene_cut_threshold: float = Field(35, ge=0, description="mean grey-level change (0-255) between frames that "
                                                             "means the view jumped; tracks restart. 0 = off")


class TargetsConfig(Strict):
    enabled: bool = True
    classes: list[str] = Field(default_factory=lambda: ["ripe"])
    min_frames: int = Field(3, ge=1, description="frames a track must be a target class before it is offered")
    min_age_ms: float = Field(200, ge=0, description="... and for at least this long")
    min_confidence: float = Field(0.5, ge=0, le=1)
    min_score: float = Field(0.6, ge=0, le=1, description="smoothed ripeness score needed")
    valid_ms: float = Field(300, gt=0, description="how long an announced position may be trusted")
    reannounce_ms: float = Field(250, gt=0, description="re-announce a valid target this often")
    claim_timeout_s: float = Field(10, gt=0, description="a claimed target is offered again after this")
    picked_iou: float = Field(0.3, gt=0, le=1, description="new tracks overlapping a picked tomato's box this much "
                                                           "are that tomato again, never offered")
    picked_window_s: float = Field(30, ge=0, description="... for this long after the pick")
    qos: int = Field(1, ge=0, le=2)


class CalibrationConfig(Strict):
    """Pixel → arm-plane coordinates (mm): a homography, or ≥ 4 point pairs it is computed from; and, with a depth
    camera, camera-frame → arm 3D (mm): a rigid 4×4 transform, or ≥ 3 point pairs it is fitted from."""

    homography: Optional[list[list[float]]] = None
    points: list[dict[str, list[float]]] = Field(default_factory=list,
                                                 description="[{pixel: [u, v], arm: [x_mm, y_mm]}, ...]")

    @field_validator("homography")
    @classmethod
    def _three_by_three(cls, v):
        if v is not None and (len(v) != 3 or any(len(row) != 3 for row in v)):
            raise ValueError("must be a 3×3 matrix")
        return v

    @field_validator("points")
    @classmethod
    def _pairs(cls, v):
        if v and len(v) < 4:
            raise ValueError("need at least 4 point pairs")
        for i, p in enumerate(v):
            if set(p) != {"pixel", "arm"} or len(p["pixel"]) != 2 or len(p["arm"]) != 2:
                raise ValueError(f"point {i}: expected {{pixel: [u, v], arm: [x, y]}}")
        return v

    # ---- 3D (depth cameras): camera-frame mm → arm mm --------------------------------------------------------------
    camera_to_arm: Optional[list[list[float]]] = Field(
        None, description="4×4 row-major rigid transform (mm) from the depth camera's frame to the arm's")
    points_3d: list[dict[str, list[float]]] = Field(
        default_factory=list, description="[{camera: [x, y, z], arm: [X, Y, Z]}, ...] (mm), ≥ 3 non-collinear; "
                                          "a rigid transform is fitted from them at load")

    @field_validator("camera_to_arm")
    @classmethod
    def _rigid(cls, v):
        if v is not None:
            from daemon.depth import check_transform

            check_transform(v)
        return v

    @field_validator("points_3d")
    @classmethod
    def _pairs_3d(cls, v):
        if not v:
            return v
        for i, p in enumerate(v):
            if set(p) != {"camera", "arm"} or len(p["camera"]) != 3 or len(p["arm"]) != 3:
                raise ValueError(f"point {i}: expected {{camera: [x, y, z], arm: [x, y, z]}}")
        from daemon.depth import fit_rigid

        fit_rigid([p["camera"] for p in v], [p["arm"] for p in v])  # DegenerateCalibration is a ValueError
        return v

    @model_validator(mode="after")
    def _one_3d_source(self):
        if self.camera_to_arm is not None and self.points_3d:
            raise ValueError("set calibration.camera_to_arm or calibration.points_3d, not both")
        return self

    def camera_to_arm_matrix(self):
        """The camera→arm 4×4 (numpy) from camera_to_arm or fitted from points_3d; None when neither is set."""
        import numpy as np

        if self.camera_to_arm is not None:
            return np.asarray(self.camera_to_arm, dtype=np.float64)
        if self.points_3d:
            from daemon.depth import fit_rigid

            return fit_rigid([p["camera"] for p in self.points_3d], [p["arm"] for p in self.points_3d]).matrix
        return None


class HttpConfig(Strict):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    stream_fps: float = Field(10, gt=0, description="max frame rate of the MJPEG live view")
    jpeg_quality: int = Field(75, ge=10, le=100)
    idle_timeout_s: float = Field(30, gt=0, description="a connection silent (or not reading) this long is closed")
    header_timeout_s: float = Field(10, gt=0, description="a client must send its request line and headers within "
                                                          "this long, however slowly it trickles them")
    max_connections: int = Field(32, ge=1, description="connections served at once; more are answered 503")
    token_file: Optional[str] = Field(None, description="file holding the access token; when set, every endpoint "
                                                        "but /healthz needs it (Bearer, or basic auth password)")
    allow_unauthenticated: bool = Field(False, description="serve without a token beyond loopback (explicit)")

    @model_validator(mode="after")
    def _credential_beyond_loopback(self):
        if self.enabled and not self.token_file and not self.allow_unauthenticated and not is_loopback(self.host):
            raise ValueError(f"http.host {self.host!r} is reachable from other machines and the live view shows the "
                             "camera: set http.token_file (a file holding an access token) or, to serve it open "
                             "anyway, http.allow_unauthenticated: true")
        return self

    def token(self) -> Optional[str]:
        """The access token from token_file (never stored in the config); OSError naming the file if unusable."""
        if not self.token_file:
            return None
        path = Path(self.token_file).expanduser()
        try:
            token = path.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise OSError(f"http.token_file {path}: {getattr(exc, 'strerror', None) or exc}") from None
        if not token:
            raise OSError(f"http.token_file {path} is empty")
        return token


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost may resolve to anything
        return False


class CaptureConfig(Strict):
    """Field capture (daemon/fieldstore.py): frames worth labelling, kept on the device."""

    enabled: bool = False
    dir: str = Field("", description="where samples go; empty = <state_dir>/capture")
    max_mb: int = Field(2000, ge=1, description="the store's size bound: oldest samples evicted first")
    uncertain: tuple[float, float] = Field((0.25, 0.5), description="a detection with confidence in [low, high) is "
                                                                    "kept as uncertain")
    sample_per_hour: float = Field(6, ge=0, description="random frames kept apart as unbiased evaluation data")
    per_hour: dict[str, int] = Field(
        default_factory=lambda: {"failed": 120, "uncertain": 30, "class_change": 30, "lost_ripe": 30,
                                 "sample": 60},
        description="at most this many samples per trigger per hour (the operator's are never limited)")
    jpeg_quality: int = Field(90, ge=50, le=100)

    @field_validator("uncertain")
    @classmethod
    def _band(cls, v):
        if not 0 <= v[0] < v[1] <= 1:
            raise ValueError("must be [low, high] with 0 <= low < high <= 1")
        return v

    @field_validator("per_hour")
    @classmethod
    def _triggers(cls, v):
        from daemon.fieldstore import TRIGGERS

        unknown = set(v) - set(TRIGGERS)
        if unknown or any(n < 0 for n in v.values()):
            raise ValueError(f"keys must be among {', '.join(TRIGGERS)} with counts >= 0 (got {sorted(unknown)})")
        return v


class LogConfig(Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class Config(Strict):
    device_id: str = Field(default_factory=default_device_id)  # the hostname (-<instance> under ripeye@<instance>)
    groups: list[str] = Field(default_factory=list, description="fleet groups this device belongs to (e.g. a house "
                              "or a canary set), for `ripeye fleet rollout --canary GROUP`")
    state_dir: str = "~/.local/state/ripeye"
    source: SourceConfig = SourceConfig()
    model: ModelConfig = ModelConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    detect: DetectConfig = DetectConfig()
    mqtt: MqttConfig = MqttConfig()
    stats: StatsConfig = StatsConfig()
    tracking: TrackingConfig = TrackingConfig()
    targets: TargetsConfig = TargetsConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    http: HttpConfig = HttpConfig()
    capture: CaptureConfig = CaptureConfig()
    log: LogConfig = LogConfig()

    @field_validator("device_id")
    @classmethod
    def _device_id_is_topic_safe(cls, v: str) -> str:
        if not v or any(c in v for c in "#+/"):
            raise ValueError("must be non-empty and contain no '/', '+' or '#'")
        return v

    def redacted(self) -> dict:
        """The effective config as plain data, with secrets left out (credentials in any URI-valued key masked)."""
        from daemon.redact import MASK, redact_data

        data = redact_data(self.model_dump())
        for key in ("password_file", "password_env"):
            if data["mqtt"].get(key):
                data["mqtt"][key] = MASK
        if data["http"].get("token_file"):
            data["http"]["token_file"] = MASK
        return data


class ConfigError(Exception):
    """A config that cannot be used; `problems` holds (key path, message) pairs."""

    def __init__(self, file: str, problems: list[tuple[str, str]]):
        self.file = file
        self.problems = problems
        lines = [f"{file}: {key}: {msg}" if key else f"{file}: {msg}" for key, msg in problems]
        super().__init__("\n".join(lines))


def validate(data: dict, file: str = "<config>") -> Config:
    """Validate plain data into a Config, raising ConfigError with key paths."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(file, [("", f"top level must be a mapping, not {type(data).__name__}")])
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append((key, msg))
        raise ConfigError(file, problems) from None


def read_yaml(path: Path) -> dict:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(str(path), [("", f"cannot read: {exc.strerror or exc}")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), [("", f"not UTF-8 text (byte {exc.start})")]) from None
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(str(path), [("", f"invalid YAML{where}: {getattr(exc, 'problem', exc)}")]) from None


def load(path: Optional[str | Path]) -> Config:
    """Load and validate a YAML config file; None gives the built-in defaults."""
    if path is None:
        return Config()
    return validate(read_yaml(Path(path)), str(path))


# Keys the `set` command may change at run time (all applied without restarting any stage).
HOT_SETTABLE = {"detect", "stats", "log", "mqtt.qos", "targets", "capture"}


def check_hot_patch(patch: dict) -> None:
    """Raise ConfigError naming the first key a `set` patch may not touch."""
    for section, value in patch.items():
        if section in HOT_SETTABLE:
            continue
        if isinstance(value, dict):
            for key in value:
                if f"{section}.{key}" not in HOT_SETTABLE:
                    raise ConfigError("set", [(f"{section}.{key}", "not settable at run time (edit the config file)")])
        else:
            raise ConfigError("set", [(section, "not settable at run time (edit the config file)")])


def overrides_file(cfg: Config) -> Path:
    return Path(cfg.state_dir).expanduser() / "overrides.yaml"


def load_with_overrides(path: Optional[str | Path], set_aside: Optional[list[str]] = None) -> Config:
    """The YAML file plus persisted `set` overrides from the state dir (the user's YAML is never rewritten).

    With `set_aside` (a list, at daemon start) an overrides file that does not parse or validate is the daemon's own
    state gone bad (a power cut mid-write on an older version, a disk error): it is moved to
    `overrides.yaml.bad-<time>`, the reason appended to the list, and the user's config alone is used; without it,
    the ConfigError is raised as before.
    """
    base = load(path)
    file = overrides_file(base)
    if set_aside is not None:
        from daemon.durable import remove_leftovers

        remove_leftovers(file)
    if not file.is_file():
        return base
    try:
        patch = read_yaml(file)
        if not isinstance(patch, dict):  # empty is fine: every override was removed
            raise ConfigError(str(file), [("", f"top level must be a mapping, not {patch!r:.40}")])
        return validate(merge_patch(base.model_dump(), patch), f"{path} + {file}")
    except ConfigError as exc:
        if set_aside is None:
            raise
        from daemon.durable import set_aside as move_aside

        moved = move_aside(file)
        set_aside.append(f"persisted overrides unusable, moved to {moved}; running on {path or 'the defaults'} "
                         f"alone: {exc}")
        return base


def merge_patch(target: dict, patch: dict) -> dict:
    """RFC 7386 JSON merge-patch: dicts merge recursively, null deletes, anything else replaces."""
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_patch(out[key], value)
        else:
            out[key] = value
    return out
