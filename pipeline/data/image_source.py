"""Image sources: an ImageFolder tree, or MNIST-format IDX files (how the embedded Fashion-MNIST is kept).

Conversion policy (one rule for every input, recorded in index.json):
  * The file is decoded with Pillow and fully loaded, so truncated files fail here, not during training.
  * EXIF orientation is applied.
  * Transparency (RGBA, LA, palette with a transparent colour) is composited onto a white background.
  * The result is 8-bit RGB (grayscale is replicated to three channels; CMYK, 16-bit and float modes are
    converted by Pillow).
  * An RGB baseline/progressive JPEG whose orientation needs no change is stored byte-for-byte as `.jpg`
    (re-encoding would lose quality); everything else is stored as lossless `.png`.
Readers therefore always get RGB with `Image.open(f).convert("RGB")` being a no-op.
"""
from __future__ import annotations

import gzip
import io
import json
import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.errors import BadSample, UserInputError
from pipeline.data.source import Item, Listing, Skip, relative, split_subdirs

POLICY = (
    "decoded with Pillow, EXIF-transposed, alpha composited onto white, converted to 8-bit RGB; "
    "RGB JPEGs kept byte-for-byte as .jpg, everything else stored as lossless .png"
)
IDX_SPLITS = {"train": "train", "t10k": "test"}  # MNIST/Fashion-MNIST file prefixes


def encode_image(data: bytes, name: str) -> tuple[str, bytes]:
    """Apply the conversion policy to one encoded image; returns (extension, bytes)."""
    if not data:
        raise BadSample("empty file (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except UnidentifiedImageError:
        raise BadSample("not an image Pillow can decode") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadSample(f"corrupt or truncated image: {e}") from None
    if img.format == "JPEG" and img.mode == "RGB" and img.getexif().get(0x0112, 1) == 1:
        return "jpg", data
    return "png", _png_bytes(_to_rgb(ImageOps.exif_transpose(img)))


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / float grayscale: scale to the full 8-bit range instead of clipping at 255
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = np.zeros_like(arr) if hi == lo else (arr - lo) * (255.0 / (hi - lo))
        img = Image.fromarray(arr.round().astype(np.uint8))
    return img.convert("RGB")


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def list_source(root: Path) -> Listing:
    """An IDX folder (train-images-idx3-ubyte[.gz] ...) or an ImageFolder tree, with optional split folders."""
    if not root.exists():
        raise UserInputError(f"{root}: image source does not exist; pass an ImageFolder root (root/<class>/<image>)")
    if not root.is_dir():
        raise UserInputError(f"{root}: image source must be a folder (ImageFolder root or IDX folder)")
    if any(root.glob("*-images-idx3-ubyte*")):
        return _list_idx(root)
    splits = split_subdirs(root) or {"train": root}
    listing = Listing(splits={}, info={"layout": "imagefolder", "policy": POLICY})
    class_names = sorted({d.name for split_root in splits.values() for d in split_root.iterdir() if d.is_dir()})
    if not class_names:
        raise UserInputError(
            f"{root}: no class folders found; an ImageFolder tree is root/<class>/<image> "
            "(optionally under train/, val/ or valid/, test/)"
        )
    class_index = {name: i for i, name in enumerate(class_names)}
    for split, split_root in sorted(splits.items()):
        items: list[Item] = []
        for entry in sorted(split_root.iterdir()):
            if entry.is_file():
                listing.skipped.append(Skip(relative(entry, root), "file outside a class folder"))
                continue
            files = sorted(p for p in entry.rglob("*") if p.is_file())
            if not files:
                listing.skipped.append(Skip(relative(entry, root) + "/", "empty class folder"))
                continue
            label = class_index[entry.name]
            items += [_file_item(path, root, label) for path in files]
        listing.splits[split] = items
    listing.classes = class_names
    return listing


def _file_item(path: Path, root: Path, label: int) -> Item:
    rel = relative(path, root)

    def load() -> dict[str, bytes]:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise BadSample(f"unreadable: {e.strerror}") from None
        ext, encoded = encode_image(data, rel)
        return {ext: encoded, "cls": str(label).encode(), "json": json.dumps({"source": rel}).encode()}

    return Item(rel, load, {"label": label})


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): big-endian header, then the array (uint8 for MNIST formats)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype_code != 0x08:
            raise ValueError("not an unsigned-byte IDX file")
        shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
        array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
        return array.reshape(shape)
    except (OSError, ValueError, struct.error, EOFError) as e:
        raise UserInputError(f"{path}: cannot read IDX file ({e}); re-copy it or run `prepare` again") from None


def _idx_file(root: Path, stem: str) -> Path | None:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.exists():
            return candidate
    return None


def _list_idx(root: Path) -> Listing:
    classes_file = root / "classes.json"
    listing = Listing(splits={}, info={"layout": "idx", "policy": POLICY})
    for prefix, split in IDX_SPLITS.items():
        images_path = _idx_file(root, f"{prefix}-images-idx3-ubyte")
        labels_path = _idx_file(root, f"{prefix}-labels-idx1-ubyte")
        if images_path is None:
            continue
        if labels_path is None:
            raise UserInputError(f"{images_path}: no matching {prefix}-labels-idx1-ubyte[.gz] next to it")
        images, labels = read_idx(images_path), read_idx(labels_path)
        if len(images) != len(labels):
            raise UserInputError(f"{images_path}: {len(images)} images but {len(labels)} labels")
        name = images_path.name
        listing.splits[split] = [_idx_item(images[i], int(labels[i]), f"{name}#{i}") for i in range(len(images))]
    n_classes = 1 + max(int(item.meta["label"]) for items in listing.splits.values() for item in items)
    listing.classes = (
        json.loads(classes_file.read_text(encoding="utf-8")) if classes_file.exists() else [str(i) for i in range(n_classes)]
    )
    return listing


def _idx_item(pixels: np.ndarray, label: int, source: str) -> Item:
    def load() -> dict[str, bytes]:
        png = _png_bytes(Image.fromarray(pixels).convert("RGB"))
        return {"png": png, "cls": str(label).encode(), "json": json.dumps({"source": source}).encode()}

    return Item(source, load, {"label": label})
