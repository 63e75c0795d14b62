"""Video frames in and out: numbered frame folders (checked for gaps and sizes), video files,
and GIF/MP4 writing.

GIF needs only Pillow; MP4 files (reading or writing) need the optional PyAV package (``av``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from PIL import Image

from dinossl.data.images import IMAGE_EXTENSIONS, to_rgb
from dinossl.errors import DataError
from dinossl.optional import require
from dinossl.eval.image_input import Size

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif")
_NUMBER = re.compile(r"(\d+)$")


def is_video_file(path: str | Path) -> bool:
    path = Path(path)
    return path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS


def image_files(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name (hidden files skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder")
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    if not files:
        raise DataError(f"no images in {folder} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return files


def frame_number(path: Path) -> int:
    """The number that ends a frame's file stem (``00042.jpg`` -> 42)."""
    match = _NUMBER.search(path.stem)
    if match is None:
        raise DataError(f"frame {path.name} has no frame number at the end of its name")
    return int(match.group(1))


def list_frames(folder: str | Path) -> list[Path]:
    """The frames of a frame folder in temporal order.

    Frames must be numbered (``00000.jpg``, ``frame_12.png``...) with consecutive numbers:
    a gap or a repeated number is refused, since it would silently change the time step.
    """
    files = image_files(folder)
    numbers = [frame_number(path) for path in files]
    order = sorted(range(len(files)), key=lambda i: numbers[i])
    files = [files[i] for i in order]
    numbers = [numbers[i] for i in order]
    for previous, current, path in zip(numbers, numbers[1:], files[1:]):
        if current == previous:
            raise DataError(f"frame folder {folder}: two frames are numbered {current} ({path.name})")
        if current != previous + 1:
            missing = f"{previous + 1}" if current == previous + 2 else f"{previous + 1}-{current - 1}"
            raise DataError(f"frame folder {folder} has a gap: frame number(s) {missing} missing before {path.name}")
    return files


def common_size(paths: Sequence[Path]) -> Size:
    """The (width, height) all frames share; DataError naming the first frame that differs."""
    size = None
    for path in paths:
        with Image.open(path) as image:
            if size is None:
                size, first = image.size, path
            elif image.size != size:
                raise DataError(f"frames differ in size: {first.name} is {size[0]}x{size[1]}, "
                                f"{path.name} is {image.size[0]}x{image.size[1]}")
    if size is None:
        raise DataError("no frames")
    return size


def _require_av():
    return require("av", "reading and writing MP4/AVI/MOV videos (a GIF or a folder of numbered frames needs nothing)")


def read_video(path: str | Path) -> list[Image.Image]:
    """All frames of a video file as PIL images (GIF by Pillow, RGB by the package's colour rule;
    others by PyAV)."""
    path = Path(path)
    if path.suffix.lower() == ".gif":
        frames = []
        with Image.open(path) as gif:
            for index in range(getattr(gif, "n_frames", 1)):
                gif.seek(index)
                frames.append(to_rgb(gif))
        return frames
    av = _require_av()
    try:
        with av.open(str(path)) as container:
            frames = [frame.to_image() for frame in container.decode(video=0)]
    except Exception as exc:  # PyAV raises its own error hierarchy
        raise DataError(f"{path}: cannot decode the video ({exc})") from exc
    if not frames:
        raise DataError(f"{path}: the video has no frames")
    return frames


def check_video_settings(fps: float, video_name: str) -> None:
    """DataError unless ``fps`` is positive and ``video_name`` a bare file name ending in .gif
    or .mp4 (what :func:`write_video` writes), before any picture is computed."""
    if fps <= 0:
        raise DataError(f"fps must be positive, got {fps}")
    if Path(video_name).suffix.lower() not in (".gif", ".mp4") or Path(video_name).name != video_name:
        raise DataError(f"video_name must be a file name ending in .gif or .mp4, got {video_name!r}")


def write_video(frames: Sequence[Image.Image], path: str | Path, fps: float = 10.0) -> Path:
    """Write RGB frames of one size as ``.gif`` (Pillow) or ``.mp4`` (PyAV, H.264)."""
    path = Path(path)
    if not frames:
        raise ValueError("no frames to write")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    suffix = path.suffix.lower()
    if suffix == ".gif":
        first, *rest = [frame.convert("RGB") for frame in frames]
        first.save(path, save_all=True, append_images=rest, duration=round(1000 / fps), loop=0)
        return path
    if suffix != ".mp4":
        raise DataError(f"video output must be .gif or .mp4, got {path.name}")
    av = _require_av()
    width, height = frames[0].size
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=round(fps))
        stream.width, stream.height = width - width % 2, height - height % 2  # H.264 needs even sides
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            picture = frame.convert("RGB").crop((0, 0, stream.width, stream.height))
            for packet in stream.encode(av.VideoFrame.from_image(picture)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
