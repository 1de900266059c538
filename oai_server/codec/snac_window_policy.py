"""The window settings of the server (`WindowPolicy`: C, L, K, the ramp, fill, stretch, crop) and the shapes they
decode: every stream's, the CUDA graphs' (`decode_shapes`). What the windows are and why is `snac_windows`'s
docstring; one stream's windows are its `WindowPlanner`'s."""

from __future__ import annotations

import copy
from dataclasses import dataclass

from .orpheus import SAMPLES_PER_FRAME
from .snac_windows import SEAM_SAMPLES, Ramp, WindowPlanner, WindowShape, cropped_decode, decode_shape


def crops_decodes(setting: str, device: str) -> bool:
    """Whether a `WindowPolicy` crops its decodes (`crop`) for the `--snac-crop-decodes` value `setting` (auto, on,
    off) with SNAC decoding on `device`: auto crops on the CPU, where it was measured."""
    if setting != "auto":
        return setting == "on"
    return device == "cpu"


def fills_windows(setting: str, device: str, cuda_graphs: bool = True) -> bool:
    """Whether a `WindowPolicy` fills its windows (`fill`) for the `--snac-fill-windows` value `setting` (auto, on,
    off) with SNAC decoding on `device`: auto fills where SNAC replays CUDA graphs, the replays filling saves."""
    if setting != "auto":
        return setting == "on"
    return cuda_graphs and device.startswith("cuda")


@dataclass(frozen=True)
class WindowPolicy:
    """The window settings (see the module docstring): context C, lookahead L, frames per decode K, and the
    samples of each chunk's end its stream's next window decodes again (`SeamStitcher`)."""

    context_frames: int = 2
    lookahead_frames: int = 1
    frames_per_decode: int = 4
    seam_samples: int = SEAM_SAMPLES
    first_lookahead_frames: int | None = None
    """Lookahead of a stream's first frame alone (None: `lookahead_frames`)."""
    ramp: Ramp = "gentle"
    """How chunks grow to K: "gentle" 1, 1, 2, 2, 3, 3, 3, 4; "step" 1, 1, 2, 3, 4; "double" 1, 1, 2, 4 (see the
    module docstring)."""
    hurry_lead_ms: int = 0
    """While a stream's audio sent is less than this far ahead of a listener who plays it on arrival, its frames go
    as soon as they can be decoded (`WindowPlanner.add`'s `hurry`); 0: never, chunks follow the ramp alone."""
    grow_lead: float = 1.0
    """A stream's ramp takes its last step, to K-frame chunks, only once a listener who plays its audio on arrival
    holds at least this many times a K-frame chunk's audio (0: the ramp alone); see the module docstring."""
    fill: bool = False
    """Every window as long as the steady one (C + K + L frames) where the stream has the frames before it: a chunk
    shorter than K (the ramp's, a stream's last) takes more left context, so past a stream's first three windows
    all decode as one length, one batch (see the module docstring)."""
    stretch_frames: int = 0
    """Frames of a stretched chunk (K2 > K; 0: off): a stream whose listener holds `grow_lead` times K2 frames' audio
    sends K2-frame chunks instead of K, C + K2 + L frames decoded for K2 emitted (see the module docstring). Needs
    `grow_lead` > 0: without a listener's lead no chunk stretches."""
    crop: bool = False
    """Windows past a stream's start decode only from their context's end on (`snac_crop`): the same samples, less
    SNAC work."""

    def planner(self) -> WindowPlanner:
        """A planner for one stream."""
        return WindowPlanner(
            self.context_frames,
            self.lookahead_frames,
            self.frames_per_decode,
            self.seam_samples,
            self.first_lookahead_frames,
            self.ramp,
            self.grow_lead,
            self.fill,
            self.stretch_frames,
            self.crop,
        )

    @property
    def stream_shapes(self) -> tuple[WindowShape, ...]:
        """The window shapes a stream uses before its end, in order: the ramp's, the steady one, then the stretched
        one (`stretched_shape`) where chunks stretch."""
        planner = self.planner()
        shapes: list[WindowShape] = []
        while self.steady_shape not in shapes:
            for window in planner.add([(0,)]):
                if window.shape not in shapes:
                    shapes.append(window.shape)
        if self.stretched_shape is not None:
            shapes.append(self.stretched_shape)
        return tuple(shapes)

    @property
    def longest_window(self) -> int:
        """Frames of the longest window a stream decodes: the stretched one's, else the steady one's."""
        return max(self.steady_shape[0], self.stretched_shape[0] if self.stretched_shape is not None else 0)

    @property
    def finish_shapes(self) -> tuple[WindowShape, ...]:
        """The shapes of a stream's last windows (`WindowPlanner.finish`: no lookahead left), for every length past
        C + L frames: with the defaults (C + k, C, k, 240) for k = 1..4.

        Past the ramp they repeat with the length modulo K, so the lengths up to K + L past the first steady window
        cover them all. Streams of C + L frames or fewer (with the defaults, 255 ms of audio at most) end in
        windows of their own that stay eager: one of a single frame would cost the compiled decoder
        (`--snac-fusion decoder`) a specialisation more, ~20 s of warm-up."""
        planner = self.planner()
        shapes: list[WindowShape] = []
        length, steady_at = 0, None
        while steady_at is None or length < steady_at + self.frames_per_decode + self.lookahead_frames:
            length += 1
            windows = planner.add([(0,)])
            if steady_at is None and any(window.shape == self.steady_shape for window in windows):
                steady_at = length
            if length <= self.context_frames + self.lookahead_frames:
                continue
            for window in copy.deepcopy(planner).finish():
                if window.shape not in shapes:
                    shapes.append(window.shape)
        return tuple(shapes)

    @property
    def graph_shapes(self) -> tuple[WindowShape, ...]:
        """The shapes worth a CUDA graph: `stream_shapes`, every stream's last windows (`finish_shapes`: without
        them every stream's end was decoded eagerly, a few hundred kernel launches holding the GIL of the engine's
        process: with 22 streams ending a second on an H200 its SNAC thread spent 44 % of its time there, session
        28), and with `hurry_lead_ms` the shorter chunks of a hurried stream past its start (C + k + L frames for
        k < K)."""
        shapes = list(self.stream_shapes)
        extra = list(self.finish_shapes)
        if self.hurry_lead_ms > 0:
            decoded, context, steady, lead = self.steady_shape
            lookahead = decoded - context - steady
            extra += [
                (decoded, decoded - count - lookahead, count, lead)
                if self.fill
                else (decoded - steady + count, context, count, lead)
                for count in range(1, steady)
            ]
        for shape in extra:
            if shape not in shapes:
                shapes.append(shape)
        return tuple(shapes)

    @property
    def decode_shapes(self) -> tuple[WindowShape, ...]:
        """The decodes of `graph_shapes` (`decode_of`), each once: what the server captures as CUDA graphs."""
        return tuple(dict.fromkeys(self.decode_of(shape) for shape in self.graph_shapes))

    def decode_of(self, shape: WindowShape) -> WindowShape:
        """The decode a window of `shape` is cut from: its frames' whole one, or the cropped one with `crop`."""
        if not self.crop:
            return decode_shape(shape)
        context, chunk, lookahead = self.context_frames, self.frames_per_decode, self.lookahead_frames
        return cropped_decode(shape, context, chunk, lookahead, self.seam_samples) or decode_shape(shape)

    @property
    def stretched_shape(self) -> WindowShape | None:
        """The shape of a stretched chunk's window (`stretch_frames`), None when chunks never stretch."""
        if self.stretch_frames <= self.frames_per_decode or self.grow_lead <= 0:
            return None
        return self._running_shape(self.stretch_frames)

    @property
    def steady_shape(self) -> WindowShape:
        """The shape of every window once a stream is past its first few frames."""
        return self._running_shape(self.frames_per_decode)

    def _running_shape(self, count: int) -> WindowShape:
        """The window of a chunk of `count` frames past a stream's start: C frames of context, the chunk, L of
        lookahead, and the seam it decodes again."""
        decoded = self.context_frames + count + self.lookahead_frames
        lead = min(self.seam_samples, self.context_frames * SAMPLES_PER_FRAME)
        return (decoded, self.context_frames, count, lead)
