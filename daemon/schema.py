"""JSON Schemas of the MQTT payloads, for consumers and for the tests that check every message."""

BOX = {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4}
# mm; null when the depth camera had no valid depth in the box (never 0); absent for sources without depth
POINT_3D = {"type": ["array", "null"], "items": {"type": "number"}, "minItems": 3, "maxItems": 3}

DETECTION = {
    "type": "object",
    "required": ["class", "class_id", "confidence", "box"],
    "properties": {
        "class": {"type": "string"},
        "class_id": {"type": "integer", "minimum": 0},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "box": BOX,
        "box_norm": BOX,
        "center": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
        "track_id": {"type": "integer"},
        "xyz_mm": POINT_3D,
    },
}

DETECTIONS_MESSAGE = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "ripeye detections message",
    "type": "object",
    "required": ["schema", "frame_id", "captured_at", "published_at", "image", "model", "backend", "latency_ms",
                 "detections"],
    "properties": {
        "schema": {"const": 2},
        "frame_id": {"type": "integer", "minimum": 1},
        "captured_at": {"type": "number"},
        "published_at": {"type": "number"},
        "image": {"type": "object", "required": ["width", "height"],
                  "properties": {"width": {"type": "integer"}, "height": {"type": "integer"}}},
        "model": {"type": "object", "required": ["name", "version"]},
        "backend": {"enum": ["openvino", "onnxruntime", "tensorrt", "ncnn"]},
        "precision": {"enum": ["fp32", "fp16", "int8"]},
        "latency_ms": {"type": "object", "additionalProperties": {"type": "number", "minimum": 0},
                       "required": ["inference", "total"]},
        "detections": {"type": "array", "items": DETECTION},
    },
}

STATS_MESSAGE = {
    "type": "object",
    "required": ["fps", "latency_ms", "dropped_frames", "backend", "precision", "camera", "rss_mb"],
}

ERROR_MESSAGE = {
    "type": "object",
    "required": ["source", "message"],
    "properties": {"source": {"type": "string"}, "message": {"type": "string"}, "key": {"type": "string"}},
}

TARGET_MESSAGE = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "ripeye targets message",
    "type": "object",
    "required": ["schema", "state", "track_id", "class", "box", "center", "captured_at", "expires_at"],
    "properties": {
        "schema": {"const": 2},
        "state": {"enum": ["available", "lost"]},
        "track_id": {"type": "integer"},
        "class": {"type": "string"},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "ripeness": {"type": "number", "minimum": 0, "maximum": 1},
        "box": BOX,
        "center": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
        "arm_xy": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
        "xyz_mm": POINT_3D,
        "arm_xyz": POINT_3D,
        "frame_id": {"type": ["integer", "null"]},
        "captured_at": {"type": "number"},
        "expires_at": {"type": "number"},
    },
}
