"""Reading and writing videos as uint8 RGB frames (H, W, 3): a video file through PyAV (`pip install av`),
or a folder of image files (sorted by name) through Pillow. Frames are yielded one at a time so long
videos never sit in memory whole."""

from __future__ import annotations

import os
from typing import Iterable, Iterator, Optional, Tuple

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _av():
    try:
        import av
    except ImportError as exc:
        raise RuntimeError("reading or writing video files needs PyAV: pip install av "
                           "(or pass a folder of PNG/JPEG frames)") from exc
    return av


def probe(path: str) -> Tuple[Optional[int], float]:
    """(frame count or None when the container does not say, frames per second; 16 for a folder)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"input {path!r} does not exist")
    if os.path.isdir(path):
        return len(_image_files(path)), 16.0
    av = _av()
    with av.open(path) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate) if stream.average_rate else 16.0
        return (stream.frames or None), fps


def _image_files(folder: str):
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise ValueError(f"input folder {folder!r} holds no {'/'.join(IMAGE_EXTENSIONS)} files")
    return [os.path.join(folder, n) for n in names]


def read_frames(path: str) -> Iterator[np.ndarray]:
    """The frames of a video file or an image folder, each (H, W, 3) uint8 RGB."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"input {path!r} does not exist")
    if os.path.isdir(path):
        from PIL import Image

        for file in _image_files(path):
            with Image.open(file) as im:
                yield np.asarray(im.convert("RGB"))
        return
    av = _av()
    with av.open(path) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


def write_frames(path: str, frames: Iterable[np.ndarray], fps: float = 16.0) -> int:
    """Frames to a video file (H.264 in .mp4/.mkv/.mov, yuv420p: even sizes) or, for a path with no
    video extension, a folder of numbered PNGs. Returns the number of frames written."""
    count = 0
    if not path.lower().endswith((".mp4", ".mkv", ".mov", ".avi", ".webm")):
        from PIL import Image

        os.makedirs(path, exist_ok=True)
        for count, frame in enumerate(frames, 1):
            Image.fromarray(frame).save(os.path.join(path, f"{count - 1:06d}.png"))
        return count
    av = _av()
    from fractions import Fraction

    with av.open(path, "w") as container:
        stream = None
        for frame in frames:
            if stream is None:
                stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
                stream.height, stream.width = frame.shape[:2]
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": "12"}  # near-lossless: the round trip's own error is what we show
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
            count += 1
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)
    return count
