"""A contact sheet: one row of thumbnails per group of images, with a caption above each row."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from dinossl.data.images import UnreadableImage, to_rgb
from dinossl.errors import DataError
from dinossl.eval.image_input import open_image

BACKGROUND = (255, 255, 255)
PLACEHOLDER = (200, 200, 200)
TEXT = (0, 0, 0)


def _thumbnail(path: Path, size: int) -> Image.Image:
    """The image scaled, aspect kept, until its longer side is ``size`` pixels: small images
    (e.g. 32-px CIFAR) are enlarged to fill the cell, large ones shrunk (a grey square when the
    file cannot be read)."""
    try:
        image = to_rgb(open_image(path))
    except (DataError, UnreadableImage):
        return Image.new("RGB", (size, size), PLACEHOLDER)
    scale = size / max(image.size)
    shape = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image if shape == image.size else image.resize(shape, Image.Resampling.BICUBIC, reducing_gap=3.0)


def _fit(text: str, width: int, font) -> str:
    """``text`` shortened from the left (keeping the file name's end) to fit ``width`` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength("..." + text) > width:
        text = text[1:]
    return "..." + text


def contact_sheet(rows: Sequence[Sequence[Path]], captions: Sequence[str], thumb: int = 128,
                  per_row: int = 8, gap: int = 6, names: Sequence[Sequence[str]] | None = None) -> Image.Image:
    """RGB image with one captioned row per entry of ``rows``: at most ``per_row`` thumbnails of
    at most ``thumb`` pixels, each over its name (``names``, default the file names); a row with
    more images says how many are not shown."""
    if len(rows) != len(captions) or (names is not None and len(names) != len(rows)):
        raise ValueError("one caption (and one list of names) per row")
    font = ImageFont.load_default()
    line = 14
    row_height = line + thumb + line + gap
    columns = max([1, *(min(per_row, len(paths)) for paths in rows)])
    width = max(gap + columns * (thumb + gap), 320)
    sheet = Image.new("RGB", (width, gap + max(1, len(rows)) * row_height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    if not rows:
        draw.text((gap, gap), "no groups above the threshold", fill=TEXT, font=font)
    for r, (paths, caption) in enumerate(zip(rows, captions)):
        top = gap + r * row_height
        hidden = len(paths) - per_row
        draw.text((gap, top), caption + (f" (+{hidden} not shown)" if hidden > 0 else ""), fill=TEXT, font=font)
        labels = names[r] if names is not None else [Path(p).name for p in paths]
        for c, (path, label) in enumerate(zip(paths[:per_row], labels)):
            image = _thumbnail(Path(path), thumb)
            left = gap + c * (thumb + gap)
            sheet.paste(image, (left + (thumb - image.width) // 2, top + line + (thumb - image.height) // 2))
            draw.text((left, top + line + thumb + 1), _fit(str(label), thumb, font), fill=TEXT, font=font)
    return sheet
