"""Student / teacher / plain views: pixels and text, checked directly."""

import numpy as np
import pytest
from PIL import Image

from mlx_opd.data import Sample
from mlx_opd.method.views import all_views, crop_box, plain_view, student_view, teacher_view
from mlx_opd.run.config import ANSWER_INSTRUCTION, AUTHORS_HINT, ViewConfig


def _sample(tmp_path, box=(20, 10, 60, 40), size=(100, 80), **kw):
    rng = np.random.default_rng(0)
    arr = (rng.random((size[1], size[0], 3)) * 100).astype("uint8")  # no pure red anywhere
    Image.fromarray(arr).save(tmp_path / "a.png")
    return Sample(image=tmp_path / "a.png", question="What colour is it?", box=box,
                  options=("red", "blue"), **kw), arr


def test_student_view_draws_box_outside_the_evidence(tmp_path):
    s, arr = _sample(tmp_path)
    v = np.asarray(student_view(s, ViewConfig(box_width=2)).image)
    x1, y1, x2, y2 = s.box
    assert (v[y1 - 1, x1 + 5] == [255, 0, 0]).all() and (v[y1 - 2, x1 + 5] == [255, 0, 0]).all()
    assert (v[y2, x1 + 5] == [255, 0, 0]).all() and (v[y1 + 5, x2] == [255, 0, 0]).all()
    np.testing.assert_array_equal(v[y1:y2, x1:x2], arr[y1:y2, x1:x2])  # evidence untouched
    assert (v[y1 - 3, x1 + 5] != [255, 0, 0]).any()
    off = np.asarray(student_view(s, ViewConfig(draw_box=False)).image)
    np.testing.assert_array_equal(off, arr)


def test_texts(tmp_path):
    s, _ = _sample(tmp_path)
    cfg = ViewConfig()
    st, te, pl = student_view(s, cfg).text, teacher_view(s, cfg).text, plain_view(s, cfg).text
    assert st == te  # teacher text = student text
    assert st == f"What colour is it?\n{AUTHORS_HINT}\nA. red\nB. blue\n{ANSWER_INSTRUCTION}"
    assert AUTHORS_HINT not in pl and pl.endswith(ANSWER_INSTRUCTION)
    assert student_view(s, ViewConfig(hint=None)).text == pl


def test_teacher_crop_zoom_margin_and_min_side(tmp_path):
    s, arr = _sample(tmp_path)
    t = teacher_view(s, ViewConfig(zoom=2.0)).image
    assert t.size == (80, 60)  # 40x30 box, x2
    t1 = np.asarray(teacher_view(s, ViewConfig(zoom=1.0)).image)
    np.testing.assert_array_equal(t1, arr[10:40, 20:60])  # exactly the evidence
    m = teacher_view(s, ViewConfig(zoom=1.0, crop_margin=0.25)).image
    assert m.size == (60, 46)  # 10 px and 7.5 px margins, rounded outwards: y 2..48
    edge = crop_box(Image.fromarray(arr), (90, 70, 100, 80), ViewConfig(crop_margin=1.0, zoom=1, min_crop_side=1))
    assert edge.size == (20, 20)  # clipped at the image border
    tiny = crop_box(Image.fromarray(arr), (5, 5, 7, 6), ViewConfig(zoom=2.0, min_crop_side=28))
    assert min(tiny.size) == 28 and tiny.size == (56, 28)


def test_precomputed_teacher_image_wins(tmp_path):
    Image.new("RGB", (33, 21), (9, 9, 9)).save(tmp_path / "t.png")
    s, _ = _sample(tmp_path, teacher_image=tmp_path / "t.png")
    assert teacher_view(s).image.size == (33, 21)
    assert set(all_views(s)) == {"plain", "student", "teacher"}


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_5"])
@pytest.mark.parametrize("box", [(100, 100, 700, 108), (500, 500, 504, 504), (5, 0, 13, 960)],
                         ids=["600x8", "4x4", "8x960"])
def test_elongated_and_tiny_crops_give_valid_teacher_views(family, box, loaded, tmp_path):
    """A 600 x 8 px box (aspect 75 before zoom), a 4 x 4 px box and a full-height sliver
    in a 1280 x 960 photo: the crop stays evidence-centred, its aspect ratio stays under
    the processors' limit of 200, and it encodes (with the pixel bounds, never squeezed
    to an explicit full-image size)."""
    from mlx_opd import models
    from mlx_opd.method.views import MAX_CROP_ASPECT
    from mlx_opd.run.config import PixelConfig

    s, _ = _sample(tmp_path, box=box, size=(1280, 960))
    v = teacher_view(s, ViewConfig())
    w, h = v.image.size
    assert max(w, h) / min(w, h) <= MAX_CROP_ASPECT and min(w, h) >= ViewConfig().min_crop_side
    L = loaded(family)
    pixels = PixelConfig(max_pixels=256 * 28 * 28, resized_height=448, resized_width=448)
    enc = models.encode(L, v.image, v.text, pixels.for_crop())
    assert models.image_token_count(L, enc) > 0
    aspect = enc.image_size[0] / enc.image_size[1]
    assert abs(aspect - w / h) / (w / h) < 0.5 or max(w, h) / min(w, h) < 2  # not squeezed
