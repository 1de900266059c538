"""`/v1/realtime` (WebSocket): the OpenAI Realtime API, GA protocol.

`?model=` names the session's model (any name is accepted and echoed); `?intent=transcription`
opens a transcription session. Keys are checked by the middleware (`Authorization: Bearer`, or
the browser's `openai-insecure-api-key.<key>` subprotocol); the `OpenAI-Beta` header is ignored.
A full server (too many sessions, admission at capacity, draining) refuses the handshake with
the error envelope (`reject_websocket`). The subprotocol `realtime` is accepted when offered.
Everything else happens in `RealtimeConnection` and the transport-neutral `RealtimeSession`.
"""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

from ..errors import APIError
from .errors import reject_websocket
from .realtime_connection import RealtimeConnection

router = APIRouter()

SUBPROTOCOL = "realtime"


async def refuse(websocket: WebSocket, error: APIError) -> None:
    """Refuse the handshake with the error's status and envelope (or a 1008 close)."""
    await reject_websocket(websocket.scope, websocket.receive, websocket.send, error)


@router.websocket("/v1/realtime")
async def realtime(websocket: WebSocket, model: str | None = None, intent: str | None = None) -> None:
    """A Realtime session over WebSocket (speech-to-speech, or transcription with `?intent=transcription`)."""
    services = getattr(websocket.app.state, "services", None)
    if services is None:
        await refuse(
            websocket,
            APIError(
                503, "The models are still loading.", type="server_error", code="loading", headers={"retry-after": "5"}
            ),
        )
        return
    try:
        lease = await services.realtime.admit()
    except APIError as exc:
        await refuse(websocket, exc)
        return
    try:
        offered = websocket.scope.get("subprotocols") or []
        await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
        connection = RealtimeConnection(websocket, services.settings)
        kind = "transcription" if intent == "transcription" else "realtime"
        await connection.serve(services.realtime.session(connection, kind=kind, model=model))
    finally:
        lease.release()
