"""An event of a site's own tracking plan, sent from Python with the web IDE client's helper.

python custom_event.py SESSION_ID  (the SDK reads OTEL_EXPORTER_OTLP_ENDPOINT and the others,
as web_ide.py says)
"""

import sys

from web_ide import usage_event

if __name__ == "__main__":
    usage_event("debugger_step", {
        "session.id": sys.argv[1],
        "debugger.line": 42,
        "debugger.breakpoints": 3,
        "code.file.path": "main.bas",
        "debugger.hit_ratio": 0.5,
        "debugger.paused": False,
    })
