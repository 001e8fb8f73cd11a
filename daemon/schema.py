"""JSON Schemas of the MQTT payloads, for consumers and for the tests that check every message."""

BOX = {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4}

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
    },
}

DETECTIONS_MESSAGE = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "ripeye detections message",
    "type": "object",
    "required": ["schema", "frame_id", "captured_at", "published_at", "image", "model", "backend", "latency_ms",
                 "detections"],
    "properties": {
        "schema": {"const": 1},
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
