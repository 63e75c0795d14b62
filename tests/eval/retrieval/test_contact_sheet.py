from PIL import Image

from dinossl.eval.retrieval.contact_sheet import contact_sheet

RED, BLUE = (220, 20, 20), (20, 20, 220)


def _cell_colours(sheet: Image.Image, column: int, thumb: int, gap: int = 6, line: int = 14) -> dict[str, tuple]:
    """Pixels of a cell of the first row: its centre and points 3 px inside each edge."""
    left, top = gap + column * (thumb + gap), gap + line
    inner = {"centre": (left + thumb // 2, top + thumb // 2), "left": (left + 3, top + thumb // 2),
             "right": (left + thumb - 4, top + thumb // 2), "top": (left + thumb // 2, top + 3),
             "bottom": (left + thumb // 2, top + thumb - 4)}
    return {name: sheet.getpixel(xy) for name, xy in inner.items()}


def test_small_images_fill_their_cell_and_large_ones_keep_their_aspect(tmp_path):
    """A 32-px image (CIFAR-10 size) is enlarged to the 128-px cell, not drawn at 32 px in its
    middle; a 300 x 150 image is shrunk to 128 x 64, centred."""
    small, wide = tmp_path / "small.png", tmp_path / "wide.png"
    Image.new("RGB", (32, 32), RED).save(small)
    Image.new("RGB", (300, 150), BLUE).save(wide)
    sheet = contact_sheet([[small, wide]], ["group 1"], thumb=128)
    assert set(_cell_colours(sheet, 0, 128).values()) == {RED}
    wide_cell = _cell_colours(sheet, 1, 128)
    assert wide_cell["left"] == wide_cell["right"] == wide_cell["centre"] == BLUE
    assert wide_cell["top"] == wide_cell["bottom"] == (255, 255, 255)  # 64 px tall, centred
