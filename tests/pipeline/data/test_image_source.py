"""Image sources: every input format and mode lands as RGB under one policy; bad inputs are reported."""
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from pipeline.errors import UserInputError
from pipeline.data.image_source import encode_image, list_source
from pipeline.config import Shard
from pipeline.data.shard import shard


def _encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _decode(ext: str, data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


GRADIENT = np.stack(np.meshgrid(np.arange(32), np.arange(32)), -1).sum(-1).astype(np.uint8) * 4


@pytest.mark.parametrize("mode,fmt", [
    ("RGB", "PNG"), ("RGB", "WEBP"), ("RGB", "BMP"), ("L", "PNG"), ("L", "JPEG"), ("RGBA", "PNG"),
    ("P", "PNG"), ("CMYK", "JPEG"), ("I;16", "PNG"), ("LA", "PNG"),
])
def test_every_mode_becomes_rgb_png(mode, fmt):
    img = Image.fromarray(GRADIENT, "L").convert(mode) if mode != "I;16" else Image.fromarray(GRADIENT.astype(np.uint16) * 256)
    ext, data = encode_image(_encoded(img, fmt), "x")
    assert ext == "png"
    out = _decode(ext, data)
    assert out.mode == "RGB" and out.size == (32, 32)


def test_rgb_jpeg_is_kept_byte_for_byte():
    data = _encoded(Image.fromarray(np.dstack([GRADIENT] * 3), "RGB"), "JPEG", quality=90)
    assert encode_image(data, "x") == ("jpg", data)


def test_transparent_pixels_become_white():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    ext, data = encode_image(_encoded(rgba, "PNG"), "x")
    assert _decode(ext, data).getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_gray_is_rescaled_not_clipped():
    arr = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4000)
    ext, data = encode_image(_encoded(Image.fromarray(arr), "PNG"), "x")
    out = np.asarray(_decode(ext, data))
    assert out[..., 0].min() == 0 and out[..., 0].max() == 255


def _folder(root: Path, layout: dict[str, int]) -> None:
    for cls, n in layout.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray((GRADIENT + i * 10 + len(cls)).astype(np.uint8), "L").save(root / cls / f"{i}.png")


def test_imagefolder_with_bad_inputs(tmp_path):
    src = tmp_path / "src"
    _folder(src / "train", {"cat": 3, "dog": 2})
    _folder(src / "val", {"cat": 1, "dog": 1})
    (src / "train" / "empty").mkdir()
    (src / "train" / "cat" / "notes.txt").write_text("not an image")
    good = (src / "train" / "dog" / "0.png").read_bytes()
    (src / "train" / "dog" / "truncated.png").write_bytes(good[: len(good) // 2])
    (src / "train" / "dog" / "zero.jpg").write_bytes(b"")
    (src / "train" / "stray.png").write_bytes(good)

    index = shard("image", src, tmp_path / "out", Shard(max_samples_per_shard=2), progress=False)
    assert index["classes"] == ["cat", "dog", "empty"]
    assert index["splits"]["train"]["num_samples"] == 5
    assert index["splits"]["valid"]["num_samples"] == 2
    reasons = {s["path"]: s["reason"] for s in index["skipped"]}
    assert reasons["train/empty/"] == "empty class folder"
    assert "not an image" in reasons["train/cat/notes.txt"]
    assert "truncated" in reasons["train/dog/truncated.png"]
    assert "empty file" in reasons["train/dog/zero.jpg"]
    assert reasons["train/stray.png"] == "file outside a class folder"
    # 5 samples in shards of at most 2
    assert [s["num_samples"] for s in index["splits"]["train"]["shards"]] == [2, 2, 1]


def test_shards_read_back_with_tarfile_and_webdataset(tmp_path):
    src = tmp_path / "src"
    _folder(src, {"a": 3, "b": 4})
    out = tmp_path / "out"
    shard("image", src, out, Shard(max_samples_per_shard=3), progress=False)
    index = json.loads((out / "index.json").read_text())
    names = [s["name"] for s in index["splits"]["train"]["shards"]]
    labels = []
    for name in names:
        with tarfile.open(out / name) as tar:
            for m in tar.getmembers():
                assert m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "" and "." in m.name
                assert "." not in m.name.split(".", 1)[0]
    dataset = wds.WebDataset([str(out / n) for n in names], shardshuffle=False).decode("pil").to_tuple("png", "cls", "json")
    for img, cls, meta in dataset:
        assert img.mode == "RGB" and img.size == (32, 32)
        labels.append(int(cls))
        assert meta["source"].startswith(("a/", "b/"))
    assert sorted(labels) == [0, 0, 0, 1, 1, 1, 1]


def test_missing_source_and_no_classes_are_rejected(tmp_path):
    with pytest.raises(UserInputError, match="does not exist"):
        list_source(tmp_path / "nope")
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "flat" / "x.png")
    with pytest.raises(UserInputError, match="no class folders"):
        list_source(tmp_path / "flat")


def test_every_input_unusable_is_an_error_listing_reasons(tmp_path):
    (tmp_path / "src" / "cat").mkdir(parents=True)
    (tmp_path / "src" / "cat" / "a.png").write_bytes(b"garbage")
    with pytest.raises(UserInputError, match=r"(?s)every input was unusable.*a.png"):
        shard("image", tmp_path / "src", tmp_path / "out", Shard(), progress=False)
