"""Mesh and sound artifacts: a folder with the file, a preview image and meta.json.

    artifacts/<yyyy-mm-dd>/<project-slug>/<folder name>/{mesh.glb | sound.flac, image.png, meta.json}
    (a mesh's folder also holds turntable.mp4)

Like a clip (echo_os/artifacts/video.py, whose VideoFolder writes them), the id is the sha256 of the file
(the GLB or the FLAC); meta.json (AssetMeta) records the request, seed, the counts (vertices and faces, or
duration, sample rate and channels), whether it is a draft placeholder, and `content_sha256`: the hash of
what replay compares (a mesh's vertices and faces as little-endian float32/int32, a sound's 16-bit samples),
so the same seed gives the same hash whatever the encoder writes around it. The preview is named image.png
so Echo Memory embeds it (by prompt and by picture) and the gallery shows it: a turntable sheet of eight
views for a mesh, a waveform over a spectrogram for a sound. Previews are drawn with numpy and Pillow (no
OpenGL, no display), the same on every machine. A mesh also gets turntable.mp4: one turn in TURNTABLE_FRAMES
frames at TURNTABLE_FPS (3 s, looping), drawn like the sheet's views and written through the animatic's H.264
encoder (echo_os/artifacts/encode.py); meta.json records it as `turntable` with its frame count and rate.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from echo_os.artifacts.meta import PREVIEW_NAME, AssetMeta
from echo_os.artifacts.video import VideoFolder, output_folder_name, output_request

if TYPE_CHECKING:
    from PIL.Image import Image

    from echo_os.artifacts.store import Artifact, ArtifactStore
    from echo_os.render.results import RenderResult

MESH_NAME = "mesh.glb"
AUDIO_NAME = "sound.flac"
MESH_FORMATS = ("glb", "obj", "ply")  # --format: GLB always, OBJ/PLY beside it on request
TURNTABLE_VIEWS = 8
CELL = 160  # pixels per turntable view
WAVE_SIZE = (640, 320)
TURNTABLE_NAME = "turntable.mp4"
TURNTABLE_FRAMES = 36  # one turn, 10 degrees a frame
TURNTABLE_FPS = 12
TURNTABLE_SIZE = 256  # pixels a side (even, for yuv420p)


# -- content hashes ------------------------------------------------------------------------------------


def mesh_hash(mesh) -> str:
    """sha256 of a mesh's vertices (float32) and faces (int32), little-endian: what replay compares."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(mesh.vertices, dtype="<f4").tobytes())
    digest.update(np.ascontiguousarray(mesh.faces, dtype="<i4").tobytes())
    return digest.hexdigest()


def pcm16(samples: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] as the 16-bit integers the FLAC holds (clipped, rounded)."""
    return np.round(np.clip(np.asarray(samples, dtype=np.float64), -1.0, 1.0) * 32767).astype("<i2")


def samples_hash(samples: np.ndarray) -> str:
    """sha256 of a sound's 16-bit samples (frames x channels): what replay compares."""
    return hashlib.sha256(np.ascontiguousarray(pcm16(samples)).tobytes()).hexdigest()


def as_frames(samples: np.ndarray) -> np.ndarray:
    """Samples as (frames, channels)."""
    samples = np.asarray(samples, dtype=np.float32)
    return samples[:, None] if samples.ndim == 1 else samples


# -- previews -----------------------------------------------------------------------------------------


def _label(draw, text: str, xy: tuple[int, int], size: int = 14) -> None:
    from echo_os.fonts import drawing_font

    font = drawing_font(size, bold=True)
    box = draw.textbbox(xy, text, font=font)
    draw.rectangle((box[0] - 3, box[1] - 2, box[2] + 3, box[3] + 2), fill=(20, 20, 20))
    draw.text(xy, text, font=font, fill=(255, 210, 60))


def turntable_views(mesh, views: int = TURNTABLE_VIEWS, cell: int = CELL) -> list["Image"]:
    """`views` pictures of the mesh turning about its up (y) axis, drawn flat-shaded back to front."""
    return list(iter_turntable_views(mesh, views, cell))


def iter_turntable_views(mesh, views: int = TURNTABLE_VIEWS, cell: int = CELL) -> Iterator["Image"]:
    """turntable_views, one picture at a time (the MP4 encodes each as it is drawn)."""
    from PIL import Image, ImageDraw

    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    centre = (vertices.max(0) + vertices.min(0)) / 2 if len(vertices) else np.zeros(3)
    radius = float(np.linalg.norm(vertices - centre, axis=1).max()) if len(vertices) else 1.0
    scale = 0.45 * cell / max(radius, 1e-9)
    light = np.array([0.4, 0.6, 0.7]) / np.linalg.norm([0.4, 0.6, 0.7])
    tilt = np.radians(20)
    pitch = np.array([[1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)], [0, np.sin(tilt), np.cos(tilt)]])
    for view in range(views):
        angle = 2 * np.pi * view / views
        yaw = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
        points = (vertices - centre) @ yaw.T @ pitch.T
        picture = Image.new("RGB", (cell, cell), (235, 235, 240))
        draw = ImageDraw.Draw(picture)
        if len(faces):
            tri = points[faces]
            normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
            lengths = np.linalg.norm(normals, axis=1, keepdims=True)
            normals = normals / np.where(lengths == 0, 1, lengths)
            shade = np.clip(np.abs(normals @ light), 0.15, 1.0)
            order = np.argsort(tri[:, :, 2].mean(1))  # far to near (the camera looks down -z)
            screen = np.stack([cell / 2 + tri[order, :, 0] * scale, cell / 2 - tri[order, :, 1] * scale], axis=2)
            greys = (60 + 170 * shade[order]).astype(int).tolist()
            for corners, grey in zip(screen.reshape(len(order), 6).tolist(), greys):  # plain lists: fast
                draw.polygon(corners, fill=(grey, grey, min(255, grey + 20)))
        yield picture


def write_turntable(mesh, path, label: str | None = None) -> dict[str, Any]:
    """The mesh's turntable as an H.264 MP4 (see the module docstring); `label` (a draft's PLACEHOLDER) on
    every frame. Returns what meta.json records of it."""
    from PIL import ImageDraw

    from echo_os.artifacts.encode import Mp4Writer

    with Mp4Writer(path, TURNTABLE_SIZE, TURNTABLE_SIZE, TURNTABLE_FPS) as writer:
        for picture in iter_turntable_views(mesh, TURNTABLE_FRAMES, TURNTABLE_SIZE):
            if label:
                _label(ImageDraw.Draw(picture), label, (6, 6))
            writer.write(picture)
    return {"turntable": path.name, "turntable_frames": TURNTABLE_FRAMES, "turntable_fps": TURNTABLE_FPS}


def turntable_sheet(mesh, label: str | None = None) -> "Image":
    """The turntable as one sheet (4 views a row), with `label` (a draft's PLACEHOLDER) in the corner."""
    from PIL import Image, ImageDraw

    views = turntable_views(mesh)
    columns = 4
    rows = (len(views) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * CELL, rows * CELL), (235, 235, 240))
    for i, view in enumerate(views):
        sheet.paste(view, ((i % columns) * CELL, (i // columns) * CELL))
    if label:
        _label(ImageDraw.Draw(sheet), label, (6, 6))
    return sheet


def audio_preview(samples: np.ndarray, sample_rate: int, label: str | None = None) -> "Image":
    """A waveform (top third) over a log-magnitude spectrogram (the rest), with `label` in the corner."""
    from PIL import Image, ImageDraw

    width, height = WAVE_SIZE
    mono = as_frames(samples).mean(1)
    picture = Image.new("RGB", (width, height), (250, 250, 252))
    draw = ImageDraw.Draw(picture)
    wave_h = height // 3
    if len(mono):
        columns = np.array_split(mono, width)
        peak = max(float(np.abs(mono).max()), 1e-6)
        middle = wave_h / 2
        for x, column in enumerate(columns):
            if len(column):
                low, high = float(column.min()) / peak, float(column.max()) / peak
                draw.line((x, middle - high * (middle - 4), x, middle - low * (middle - 4)), fill=(40, 90, 160))
    # spectrogram: 512-sample Hann windows, log magnitude, low frequencies at the bottom
    window = 512
    hop = max(1, (len(mono) - window) // width) if len(mono) > window else 1
    if len(mono) >= window:
        starts = np.arange(0, len(mono) - window + 1, hop)[:width]
        frames = np.stack([mono[s:s + window] for s in starts]) * np.hanning(window)
        magnitude = 20 * np.log10(np.abs(np.fft.rfft(frames, axis=1)) + 1e-6)
        top = magnitude.max()
        level = np.clip((magnitude - (top - 80)) / 80, 0, 1)  # the top 80 dB
        spectrum = (255 * level.T[::-1]).astype(np.uint8)
        image = Image.fromarray(spectrum, "L").resize((width, height - wave_h))
        picture.paste(Image.merge("RGB", (image, image.point(lambda v: v // 2), image.point(lambda v: 255 - v))),
                      (0, wave_h))
    seconds = len(mono) / sample_rate if sample_rate else 0.0
    _label(draw, f"{label + ' · ' if label else ''}{seconds:.1f} s · {sample_rate} Hz", (6, 6), size=13)
    return picture


# -- writing ------------------------------------------------------------------------------------------


def write_glb(mesh, path, extras: dict[str, Any]) -> None:
    """The mesh as GLB with trimesh; `extras` (the prompt, placeholder flag) go into the glTF scene's extras."""
    import trimesh

    scene = trimesh.Scene(mesh)
    scene.metadata.update(extras)
    path.write_bytes(scene.export(file_type="glb"))


def write_flac(samples: np.ndarray, sample_rate: int, path) -> None:
    import soundfile

    soundfile.write(str(path), pcm16(as_frames(samples)), sample_rate, format="FLAC", subtype="PCM_16")


def save_asset(store: "ArtifactStore", result: "RenderResult", index: int) -> "Artifact":
    """Save output `index` of a mesh or audio engine's result as an asset artifact (see the module docstring)."""
    from echo_os.artifacts.meta import EngineRecord, collect_versions
    from echo_os.artifacts.store import _model_record
    from echo_os.render.requests import image_request_key

    started = time.perf_counter()
    rendered = result.images[index]
    asset = rendered.asset
    if asset is None:
        raise ValueError(f"output {index} of the result is not a mesh or a sound")
    request, parent_id = output_request(result, index)
    story = request.story
    name = output_folder_name(request, asset.kind, fallback=asset.kind)
    runtime, model = result.runtime, result.runtime.model
    fields: dict[str, Any] = {}
    with _AssetFolder(store, request.project, name) as folder:
        if asset.kind == "mesh":
            file_name = MESH_NAME
            write_glb(asset.data, folder.path / file_name,
                      {"prompt": request.prompt, "seed": rendered.seed, "engine": runtime.engine,
                       "placeholder": asset.placeholder})
            formats = asset.settings.get("formats", ())
            for extra in formats:
                if extra != "glb":
                    asset.data.export(folder.path / f"mesh.{extra}", file_type=extra)
            fields.update(vertices=int(len(asset.data.vertices)), faces=int(len(asset.data.faces)),
                          content_sha256=mesh_hash(asset.data))
            fields.update(write_turntable(asset.data, folder.path / TURNTABLE_NAME,
                                          "PLACEHOLDER" if asset.placeholder else None))
        else:
            file_name = AUDIO_NAME
            frames = as_frames(asset.data)
            write_flac(frames, asset.sample_rate, folder.path / file_name)
            fields.update(duration_s=round(len(frames) / asset.sample_rate, 4), sample_rate=asset.sample_rate,
                          channels=int(frames.shape[1]), content_sha256=samples_hash(frames))
        rendered.image.save(folder.path / PREVIEW_NAME)
        fields["device"] = runtime.device  # an extra field (AssetMeta allows them), as an image's meta.json records it
        meta = AssetMeta(
            kind="mesh" if asset.kind == "mesh" else "audio", created="", project=request.project,
            prompt=request.prompt, seed=rendered.seed,
            width=rendered.image.width, height=rendered.image.height, file=file_name, placeholder=asset.placeholder,
            engine=EngineRecord(name=runtime.engine, reason=runtime.reason),
            model=_model_record(model),
            parent_id=parent_id, sources=[parent_id] if parent_id else [], story=story, settings=asset.settings,
            request=request, versions=collect_versions(), request_key=image_request_key(request),
            timings={**result.timings.as_dict(), "save_s": round(time.perf_counter() - started, 4)},
            **fields)
        return folder.commit(meta)


class _AssetFolder(VideoFolder):
    """VideoFolder's atomic write, with the mesh or sound file as the content the id hashes."""

    def content_file(self, meta):
        return self.path / meta.file
