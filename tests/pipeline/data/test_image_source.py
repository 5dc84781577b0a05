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


def test_hidden_and_system_folders_are_never_classes(tmp_path):
    src = tmp_path / "src"
    _folder(src, {"cat": 2, "dog": 2, ".ipynb_checkpoints": 1, "__MACOSX": 1})
    good = (src / "cat" / "0.png").read_bytes()
    (src / "cat" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (src / "dog" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (src / "dog" / "._0.png").write_bytes(b"\0\5\26\7 AppleDouble")  # macOS resource fork beside the image
    (src / "dog" / ".cache").mkdir()
    (src / "dog" / ".cache" / "x.png").write_bytes(good)
    (src / "desktop.ini").write_text("[.ShellClassInfo]")
    index = shard("image", src, tmp_path / "out", Shard(), progress=False)
    assert index["classes"] == ["cat", "dog"]
    assert index["splits"]["train"]["num_samples"] == 4 and index["skipped"] == []
    ignored = {s["path"]: s["reason"] for s in index["ignored"]}
    assert set(ignored) == {".ipynb_checkpoints/", "__MACOSX/", "cat/.DS_Store", "dog/Thumbs.db", "dog/._0.png",
                            "dog/.cache/", "desktop.ini"}
    assert "hidden" in ignored[".ipynb_checkpoints/"] and "operating-system or tool" in ignored["__MACOSX/"]


@pytest.mark.parametrize("names,splits", [
    (("train", "validation", "test"), {"train": 4, "valid": 2, "test": 2}),
    (("Training", "Testing"), {"train": 4, "test": 2}),
    (("TRAIN", "Val", "dev-clean"), {"train": 4, "valid": 4}),  # a plain spelling and a subset of one split merge
])
def test_usual_split_folder_spellings(tmp_path, names, splits):
    src = tmp_path / "src"
    for name, count in zip(names, (2, 1, 1)):
        _folder(src / name, {"cat": count, "dog": count})
    (src / "extra").mkdir()
    (src / "README.txt").write_text("downloaded from ...")
    index = shard("image", src, tmp_path / "out", Shard(), progress=False)
    assert index["classes"] == ["cat", "dog"]
    assert {k: v["num_samples"] for k, v in index["splits"].items()} == splits
    assert sum(splits.values()) == 2 * sum((2, 1, 1)[: len(names)])  # every image accounted for
    assert sorted(index["split_sources"]["train"]) == [names[0]]
    ignored = {s["path"]: s["reason"] for s in index["ignored"]}
    assert set(ignored) == {"extra/", "README.txt"} and "not a split folder" in ignored["extra/"]


def test_two_spellings_of_one_split_are_an_error(tmp_path):
    _folder(tmp_path / "src" / "val", {"cat": 1})
    _folder(tmp_path / "src" / "validation", {"cat": 1})
    with pytest.raises(UserInputError, match="both val and validation mean split 'valid'; keep one"):
        list_source(tmp_path / "src")


def test_an_exception_while_decoding_one_image_is_a_counted_skip(tmp_path, monkeypatch):
    import warnings

    from PIL import ImageOps

    src = tmp_path / "src"
    _folder(src, {"ok": 2})
    (src / "bomb").mkdir()
    Image.new("L", (64, 64)).save(src / "bomb" / "big.png")  # 4096 pixels: over twice the limit, an error
    Image.new("L", (40, 40)).save(src / "bomb" / "medium.png")  # 1600 pixels: over the limit, a warning
    Image.new("L", (33, 31)).save(src / "bomb" / "odd.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)
    transpose = ImageOps.exif_transpose

    def broken_exif(img, **kw):  # Pillow has raised TypeError/KeyError on malformed EXIF
        if img.size == (33, 31):
            raise TypeError("'NoneType' object is not subscriptable")
        return transpose(img, **kw)

    monkeypatch.setattr(ImageOps, "exif_transpose", broken_exif)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as under `python -W error`
        index = shard("image", src, tmp_path / "out", Shard(), progress=False)
    assert index["splits"]["train"]["num_samples"] == 2
    reasons = {s["path"]: s["reason"] for s in index["skipped"]}
    assert "decompression-bomb" in reasons["bomb/big.png"]
    assert "DecompressionBombWarning" in reasons["bomb/medium.png"]
    assert reasons["bomb/odd.png"].startswith("cannot decode: TypeError")


def _png_16bit_rgb() -> bytes:
    import struct
    import zlib

    raw = b"".join(b"\0" + struct.pack(">HHH", 60000, 1000, 30000) * 4 for _ in range(4))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 4, 4, 16, 2, 0, 0, 0)  # 4x4, 16 bits per channel, truecolour
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_lossy_image_conversions_are_recorded(tmp_path):
    src = tmp_path / "src" / "c"
    src.mkdir(parents=True)
    Image.new("RGBA", (4, 4), (255, 0, 0, 128)).save(src / "alpha.png")
    Image.new("RGBA", (4, 4), (255, 0, 0, 255)).save(src / "opaque.png")  # alpha present but nothing lost
    Image.fromarray(np.arange(16, dtype=np.uint16).reshape(4, 4) * 4000).save(src / "gray16.png")
    (src / "rgb16.png").write_bytes(_png_16bit_rgb())
    Image.new("CMYK", (4, 4), (0, 255, 0, 0)).save(src / "cmyk.jpg")
    frames = [Image.new("RGB", (4, 4), (80 * i, 0, 0)) for i in range(3)]
    frames[0].save(src / "anim.gif", save_all=True, append_images=frames[1:])
    Image.new("RGB", (4, 4), (1, 2, 3)).save(src / "plain.png")
    index = shard("image", tmp_path / "src", tmp_path / "out", Shard(), progress=False)
    assert index["num_samples"] == 7 and index["skipped"] == []
    done = {c["path"]: c["changes"] for c in index["conversions"]}
    assert done == {
        "c/alpha.png": ["transparency composited onto white"],
        "c/gray16.png": ["I;16 grayscale scaled to 8 bits (0..60000 -> 0..255)"],
        "c/rgb16.png": ["16 bits per channel reduced to 8 (Pillow keeps the high byte)"],
        "c/cmyk.jpg": ["CMYK converted to RGB"],
        "c/anim.gif": ["first of 3 frames kept"],
    }
