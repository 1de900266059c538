"""`POST /v1/audio/transcriptions` and `POST /v1/audio/translations` (multipart uploads).

https://platform.openai.com/docs/api-reference/audio/createTranscription. The form is read here
(the file up to 25 MB: `UPLOAD_ROUTES` get their own body limit), validated into the protocol
types, and handed to `serving.transcription`; the answer is rendered by `render_transcription`
through the same lifecycle as every generating route (`responses.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from ..codec.audio_input import MAX_UPLOAD_BYTES
from ..errors import invalid
from ..protocol.transcription import RESPONSE_FORMATS, TranscriptionForm, TranslationForm, form_fields
from .deps import services
from .docs import TRANSCRIPT_EVENT, TRANSCRIPTION, binary, multipart, sse, streamed
from .render_transcription import MEDIA_TYPES, transcription_failure, transcription_response, transcription_sse
from .responses import stream_response, whole_response

if TYPE_CHECKING:
    from ..serving.services import Services

router = APIRouter()

F = TypeVar("F", TranscriptionForm, TranslationForm)

FORM_OVERHEAD_BYTES = 1024 * 1024
"""Room for the multipart framing and the text fields beside a file of the maximum size."""
UPLOAD_ROUTES = {
    "/v1/audio/transcriptions": MAX_UPLOAD_BYTES + FORM_OVERHEAD_BYTES,
    "/v1/audio/translations": MAX_UPLOAD_BYTES + FORM_OVERHEAD_BYTES,
}
"""Body limits of the upload routes (the file itself is refused past 25 MB with a 400 naming it)."""

_COMMON: dict[str, Any] = {
    "file": {"type": "string", "format": "binary", "description": "Audio: wav, mp3, flac, ogg/opus, webm, m4a, mp4."},
    "model": {"type": "string"},
    "prompt": {"type": "string"},
    "response_format": {"type": "string", "enum": list(RESPONSE_FORMATS)},
    "temperature": {"type": "number", "minimum": 0, "maximum": 1},
    "max_tokens": {"type": "integer", "minimum": 1, "maximum": 448, "description": "Not OpenAI's: tokens per piece."},
}
TRANSCRIPTION_FORM = multipart(
    {
        **_COMMON,
        "language": {"type": "string"},
        "timestamp_granularities[]": {"type": "array", "items": {"type": "string", "enum": ["segment"]}},
        "chunking_strategy": {"type": "string", "enum": ["auto"]},
        "stream": {"type": "boolean"},
    },
    ["file", "model"],
)
TRANSLATION_FORM = multipart(_COMMON, ["file", "model"])
_BODIES = {"application/json": {"schema": TRANSCRIPTION}, **binary(*MEDIA_TYPES.values())}
TRANSCRIPTION_RESPONSES = streamed(
    "The transcript in `response_format`, or `transcript.text.delta` ... `transcript.text.done` events with "
    "`stream=true`.",
    {**_BODIES, **sse(TRANSCRIPT_EVENT)},
)
TRANSLATION_RESPONSES = streamed("The English translation in `response_format`.", _BODIES)


async def read_upload(request: Request, model: type[F]) -> tuple[F, bytes]:
    """The form's fields validated as ``model`` and the uploaded file's bytes (400s naming the field)."""
    async with request.form(max_files=1, max_fields=64) as form:
        try:
            fields = model.model_validate(form_fields(form.multi_items()))
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None
        upload = form.get("file")
        if upload is None:
            raise invalid("Missing required parameter: 'file'.", "file", "missing_required_parameter")
        if not isinstance(upload, UploadFile):
            raise invalid("'file' must be an uploaded file (multipart), not a text field.", "file", "invalid_type")
        data = await upload.read(MAX_UPLOAD_BYTES + 1)
    return fields, data


@router.post(
    "/v1/audio/transcriptions",
    response_model=None,
    responses=TRANSCRIPTION_RESPONSES,
    openapi_extra=TRANSCRIPTION_FORM,
)
async def create_transcription(request: Request, svc: Services = Depends(services)) -> Response:
    """Transcribe an audio file, whole or as `transcript.text.*` SSE events."""
    form, data = await read_upload(request, TranscriptionForm)
    job = await svc.transcription.prepare_form(form, data)
    if form.stream:
        return await stream_response(
            svc,
            svc.transcription.stream(job),
            transcription_sse,
            media_type="text/event-stream",
            on_failure=transcription_failure,
        )
    done = await whole_response(svc, request, lambda: svc.transcription.transcribe(job))
    return transcription_response(done, form.response_format, "transcribe")


@router.post(
    "/v1/audio/translations", response_model=None, responses=TRANSLATION_RESPONSES, openapi_extra=TRANSLATION_FORM
)
async def create_translation(request: Request, svc: Services = Depends(services)) -> Response:
    """Translate speech in any language into English text (when the model can: see `translation_refusal`)."""
    form, data = await read_upload(request, TranslationForm)
    job = await svc.transcription.prepare_form(form, data)
    done = await whole_response(svc, request, lambda: svc.transcription.transcribe(job))
    return transcription_response(done, form.response_format, "translate")
