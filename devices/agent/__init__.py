"""EdgeFleet device agent: no Django, no project imports; runs on the device."""

import os

# onnxruntime looks up a vendor telemetry host unless this is set before it loads
# (docs/reliability.md N1); the agent package is always imported before any ORT import.
os.environ["ORT_DISABLE_TELEMETRY"] = "1"

__version__ = "0.1.0"
