"""ripeye: real-time tomato-ripeness detection daemon publishing over MQTT."""

__version__ = "0.1.0"
