"""The connection guards without the `websockets` package (as on the GPU benchmark machines, whose packages are
carried by hand): HTTP keeps the guarded httptools protocol, uvicorn picks the WebSocket protocol itself, and one
warning says the WebSocket (Realtime) protocol is unguarded. With `websockets`, both protocols are guarded."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
from fastapi import FastAPI

from oai_server.routes.connections import GuardedHttpToolsProtocol
from oai_server.routes.websocket_guard import GuardedWebSocketProtocol
from oai_server.runtime_limits import uvicorn_options
from oai_server.settings import Settings

WITHOUT_WEBSOCKETS = """
import json, logging, sys
sys.modules["websockets"] = None  # any `import websockets...` now raises ImportError
sys.modules["wsproto"] = None  # so that uvicorn's "auto" has no WebSocket protocol to pick, whatever is installed
records = []
handler = logging.Handler()
handler.emit = records.append
logging.getLogger("oai_server").addHandler(handler)
logging.getLogger("oai_server").setLevel(logging.INFO)

import uvicorn
from fastapi import FastAPI
from oai_server.runtime_limits import uvicorn_options
from oai_server.settings import Settings

app = FastAPI()
options = uvicorn_options(Settings(), app)
warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
http = options["http"]
try:  # after uvicorn_options, so that a failure shows what it chose
    from oai_server.routes.connections import GuardedHttpToolsProtocol
except ImportError:
    GuardedHttpToolsProtocol = None
config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", **options)
config.load()
print(json.dumps({
    "http_guarded": GuardedHttpToolsProtocol is not None and isinstance(http, type)
    and issubclass(http, GuardedHttpToolsProtocol),
    "http": repr(http),
    "ws": repr(options.get("ws")),
    "warnings": warnings,
    "loaded_http_guarded": config.http_protocol_class is http,
    "loaded_ws": repr(config.ws_protocol_class),
    "websockets_imported": any(name.startswith("websockets.") for name in sys.modules),
}))
"""


def test_http_keeps_its_guards_without_websockets() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT_WEBSOCKETS], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["http_guarded"], result  # not "h11": every HTTP guard is on
    assert result["loaded_http_guarded"], result
    assert result["ws"] == repr("auto"), result
    assert result["loaded_ws"] == "None", result  # neither websockets nor wsproto: uvicorn serves no WebSocket
    assert not result["websockets_imported"], result
    assert len(result["warnings"]) == 1, result
    warning = result["warnings"][0]
    assert "WebSocket (Realtime) protocol is unguarded" in warning and "websockets" in warning, warning
    assert "connection guards off" not in warning, warning


def test_both_protocols_are_guarded_with_websockets(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="oai_server"):
        options = uvicorn_options(Settings(), FastAPI())
    assert issubclass(options["http"], GuardedHttpToolsProtocol)
    assert issubclass(options["ws"], GuardedWebSocketProtocol)
    assert options["http"].limits is options["ws"].limits
    assert options["http"].events is options["ws"].events
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
