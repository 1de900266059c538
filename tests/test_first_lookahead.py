"""`--snac-first-lookahead-frames 0` through the real server on the tiny models: the same seeded speech as with
the default lookahead, the same length, and the same bytes from the first frame's held-back seam on; only the
first frame, decoded without right context, may differ."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from oai_server.codec.orpheus import SAMPLES_PER_FRAME
from oai_server.codec.snac_windows import SEAM_SAMPLES
from oai_server.engines.demo import DemoModels

from .helpers import LiveServer, quiet_settings, quiet_snac, start_server

SPEECH = {"model": "tts-1", "input": "Hello there, a seeded sentence.", "voice": "alloy", "seed": 3}


@pytest.fixture(scope="module")
def servers(
    demo_cache: Path, demo_models: DemoModels, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LiveServer, LiveServer]]:
    import torch

    torch.set_num_threads(1)  # float sums depend on how torch splits them over threads
    snac = quiet_snac(demo_models.snac_dir, tmp_path_factory.mktemp("snac-quiet"))
    default = start_server(quiet_settings(demo_cache, demo_models, snac))
    early = start_server(quiet_settings(demo_cache, demo_models, snac, snac_first_lookahead_frames=0))
    yield default, early
    default.stop()
    early.stop()


def pcm(server: LiveServer) -> bytes:
    response = httpx.post(f"{server.url}/v1/audio/speech", json={**SPEECH, "response_format": "pcm"}, timeout=120)
    assert response.status_code == 200, response.text
    return response.content


def test_only_the_first_frame_differs_from_the_default_lookahead(servers: tuple[LiveServer, LiveServer]) -> None:
    default, early = (pcm(server) for server in servers)
    assert len(early) == len(default) and len(default) % (2 * SAMPLES_PER_FRAME) == 0 and len(default) > 0
    seam = 2 * (SAMPLES_PER_FRAME - SEAM_SAMPLES)  # where the next window's decode takes over, in bytes
    assert early[seam:] == default[seam:]
    assert early[:seam] != default[:seam]  # decoded without right context: not the same samples
