"""MP4 files through PyAV (FFmpeg's libraries, libx264 inside PyAV's wheels; no system ffmpeg needed).

    with Mp4Writer(path, width, height, fps) as writer:
        writer.write(rgb_uint8_array)          # (height, width, 3)
    frames = read_frames(path)                 # list of (height, width, 3) uint8 arrays

H.264 in yuv420p with the moov atom at the front (+faststart), so browsers play it and can start before
the whole file has arrived. CRF 18 is close to visually lossless for stills that move slowly; the
`veryfast` preset encoded 1024x576 about 1.6x faster than `medium` here, for a larger file.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from echo_os.errors import OptionError, UsageError

if TYPE_CHECKING:
    from av.audio.stream import AudioStream

CODEC: Final = "libx264"  # Final: the literal name picks PyAV's VideoStream overload of add_stream
PIX_FMT = "yuv420p"
DEFAULT_CRF = 18
DEFAULT_PRESET = "veryfast"  # an animatic is a preview: encode speed over file size


# The work one video may take (red-team finding: 8192x8192 at 120 fps was accepted and the worker passed
# 5.5 GB within a minute). The limits are H.264 level 5.2's, the largest most players decode: a frame of
# at most 36,864 macroblocks (9,437,184 pixels: 4096x2304, or 3840x2160) and 2,073,600 macroblocks a
# second (530,841,600 pixels: 3840x2160 at 60 fps); an hour at most; and at most as many pixels in all as
# an hour of 1920x1080 at 24 fps, so one job cannot hold a worker for days.
MAX_FRAME_PIXELS = 36_864 * 256
MAX_PIXEL_RATE = 2_073_600 * 256
MAX_VIDEO_SECONDS = 3600
MAX_VIDEO_PIXELS = 1920 * 1080 * 24 * 3600
# Memory while encoding, in RGB frames of the output size: peak RSS of Mp4Writer (libx264 veryfast, its
# lookahead and frame threads) measured 29-41 frames at 2048x2048 and 1024x1024 on 2 cores; more cores,
# more frame threads, so the estimate takes the high end. At MAX_FRAME_PIXELS it is about 1.1 GB.
ENCODER_FRAMES_IN_MEMORY = 40
MAX_ENCODER_BYTES = 2 * 1024**3


def encoder_bytes(width: int, height: int) -> int:
    """About how much memory encoding frames of this size takes (ENCODER_FRAMES_IN_MEMORY)."""
    return width * height * 3 * ENCODER_FRAMES_IN_MEMORY


def check_video_size(width: int, height: int, what: str = "--size") -> None:
    """yuv420p halves the colour planes: both sides must be even; and a frame within MAX_FRAME_PIXELS
    (so within MAX_ENCODER_BYTES of encoder memory)."""
    if width < 16 or height < 16 or width > 8192 or height > 8192 or width % 2 or height % 2:
        raise UsageError(f"{what} {width}x{height}: an H.264 video needs even sides between 16 and 8192 "
                         "(for example 1024x576).")
    if width * height > MAX_FRAME_PIXELS or encoder_bytes(width, height) > MAX_ENCODER_BYTES:
        raise UsageError(f"{what} {width}x{height} is {width * height:,} pixels a frame; a video frame is at most "
                         f"{MAX_FRAME_PIXELS:,} (e.g. 3840x2160 or 4096x2304), and this one would need about "
                         f"{encoder_bytes(width, height) / 1024**3:.1f} GB to encode (the limit is "
                         f"{MAX_ENCODER_BYTES // 1024**3} GB).")


def check_video_work(width: int, height: int, fps: int, frames: int) -> None:
    """A video's size, frame rate and length within the limits above; an OptionError naming `size`,
    `fps` or `duration` (the story's durations), with the limit, before anything is encoded."""
    try:
        check_video_size(width, height)
    except UsageError as error:
        raise OptionError(str(error), "size") from None
    if width * height * fps > MAX_PIXEL_RATE:
        best = max(1, MAX_PIXEL_RATE // (width * height))
        raise OptionError(f"--fps {fps} at {width}x{height} is {width * height * fps:,} pixels a second; a video "
                          f"takes at most {MAX_PIXEL_RATE:,} (here at most {best} fps; or a smaller --size).", "fps")
    seconds = frames / fps
    if seconds > MAX_VIDEO_SECONDS:
        raise OptionError(f"the story lasts {seconds:,.0f} s; a video is at most {MAX_VIDEO_SECONDS} s "
                          "(shorten the scenes' duration in story.csv).", "duration")
    if width * height * frames > MAX_VIDEO_PIXELS:
        raise OptionError(f"{frames:,} frames of {width}x{height} are {width * height * frames:,} pixels to encode; "
                          f"a video is at most {MAX_VIDEO_PIXELS:,} (an hour of 1920x1080 at 24 fps): lower "
                          "--fps or --size, or shorten the scenes.", "fps")


AUDIO_CODEC: Final = "aac"  # FFmpeg's native AAC encoder (in PyAV's wheels)
AUDIO_FRAME = 1024  # samples per AAC frame


class Mp4Writer:
    """`audio`: (mono float32 samples in [-1, 1], sample rate) muxed as an AAC stream beside the video; it is
    encoded when the writer closes (the mp4 muxer interleaves the packets)."""

    def __init__(self, path: Path, width: int, height: int, fps: int, *, crf: int = DEFAULT_CRF,
                 preset: str = DEFAULT_PRESET, audio: "tuple[Any, int] | None" = None):
        import av

        check_video_size(width, height)
        self.path = Path(path)
        self.width, self.height = width, height
        self.container = av.open(str(self.path), mode="w", format="mp4", options={"movflags": "+faststart"})
        self.stream = self.container.add_stream(CODEC, rate=Fraction(fps))
        self.stream.width, self.stream.height = width, height
        self.stream.pix_fmt = PIX_FMT
        self.stream.options = {"crf": str(crf), "preset": preset}
        self.frames = 0
        self.closed = False
        self.audio = audio
        self.audio_stream: AudioStream | None = None
        if audio is not None:
            self.audio_stream = self.container.add_stream(AUDIO_CODEC, rate=int(audio[1]), layout="mono")

    def write(self, rgb: Any) -> None:
        """One frame: a (height, width, 3) uint8 array, or a PIL image of the output size."""
        import av
        import numpy as np

        array = np.asarray(rgb, dtype=np.uint8)
        if array.shape != (self.height, self.width, 3):
            raise ValueError(f"frame is {array.shape}, expected {(self.height, self.width, 3)}")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        if self.closed:
            return
        try:
            for packet in self.stream.encode():  # flush the encoder's delayed frames
                self.container.mux(packet)
            if self.audio_stream is not None:
                self._encode_audio()
        finally:
            self.container.close()
            self.closed = True

    def _encode_audio(self) -> None:
        import av
        import numpy as np

        stream, audio = self.audio_stream, self.audio
        if stream is None or audio is None:
            return
        samples, rate = audio
        samples = np.ascontiguousarray(np.asarray(samples, dtype=np.float32).reshape(-1))
        for offset in range(0, len(samples), AUDIO_FRAME):
            frame = av.AudioFrame.from_ndarray(samples[None, offset:offset + AUDIO_FRAME], format="fltp",
                                               layout="mono")
            frame.sample_rate, frame.pts = int(rate), offset
            for packet in stream.encode(frame):
                self.container.mux(packet)
        for packet in stream.encode():
            self.container.mux(packet)

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_frames(path: Path) -> list:
    """Every frame of the first video stream as (height, width, 3) uint8 RGB arrays."""
    import av

    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def probe(path: Path) -> dict:
    """What a player sees: codec, pixel format, size, frame rate, frame count (decoded, not guessed)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(video=0))
        return {"codec": stream.codec_context.name, "pix_fmt": stream.codec_context.pix_fmt,
                "width": stream.codec_context.width, "height": stream.codec_context.height,
                "fps": float(stream.average_rate or stream.base_rate or 0), "frames": frames}


def audio_duration(path: Path) -> tuple[float, int]:
    """(seconds, sample rate) of the first audio stream, from its decoded samples."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(audio=0))
        return samples / stream.codec_context.sample_rate, stream.codec_context.sample_rate
