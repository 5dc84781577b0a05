"""Image sources: an ImageFolder tree, or MNIST-format IDX files (how the embedded Fashion-MNIST is kept).

Conversion policy (one rule for every input, recorded in index.json):
  * The file is decoded with Pillow and fully loaded, so truncated files fail here, not during training.
  * EXIF orientation is applied.
  * Transparency (RGBA, LA, palette with a transparent colour) is composited onto a white background.
  * The result is 8-bit RGB (grayscale is replicated to three channels; CMYK and other colour spaces are
    converted by Pillow).
  * An RGB baseline/progressive JPEG whose orientation needs no change is stored byte-for-byte as `.jpg`
    (re-encoding would lose quality); everything else is stored as lossless `.png`.
  * What was lost on the way is recorded per file in index.json `conversions`: transparency composited away,
    16-bit or float depth reduced (grayscale is scaled from its min..max to 0..255, never clipped), colour
    spaces other than RGB/gray converted, all but the first frame of an animation or multi-page file dropped.
  * A file Pillow refuses (corrupt, truncated, over its decompression-bomb pixel limit) is skipped, not fatal.
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
from pipeline.data.source import Item, Listing, Skip, group_splits, ignore_unused, read_text, relative, visible_children, walk_files

POLICY = (
    "decoded with Pillow, EXIF-transposed, alpha composited onto white, converted to 8-bit RGB (16-bit/float "
    "grayscale scaled min..max to 0..255, never clipped); RGB JPEGs kept byte-for-byte as .jpg, everything else "
    "stored as lossless .png; lossy steps listed per file in `conversions`"
)
IDX_SPLITS = {"train": "train", "t10k": "test"}  # MNIST/Fashion-MNIST file prefixes


def encode_image(data: bytes, name: str, conversions: list[str] | None = None) -> tuple[str, bytes]:
    """Apply the conversion policy to one encoded image; returns (extension, bytes). What was changed lossily
    (alpha dropped, colour space or depth reduced, frames dropped) is appended to `conversions`."""
    notes = conversions if conversions is not None else []
    if not data:
        raise BadSample("empty file (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
        rawmode = _rawmode(img)
        img.load()
    except Image.DecompressionBombError as e:
        raise BadSample(f"over Pillow's decompression-bomb limit ({e})") from None
    except UnidentifiedImageError:
        raise BadSample("not an image Pillow can decode") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadSample(f"corrupt or truncated image: {e}") from None
    if img.format == "JPEG" and img.mode == "RGB" and img.getexif().get(0x0112, 1) == 1:
        return "jpg", data
    frames = getattr(img, "n_frames", 1)
    if frames > 1:
        notes.append(f"first of {frames} frames kept")
    return "png", _png_bytes(_to_rgb(ImageOps.exif_transpose(img), rawmode, notes))


def _rawmode(img: Image.Image) -> str:
    """How the file stores its pixels (e.g. `RGB;16B`), which `img.mode` does not say once Pillow reduced it."""
    if not img.tile:
        return img.mode
    args = img.tile[0][3]
    return str(args[0] if isinstance(args, tuple) and args else args)


def _to_rgb(img: Image.Image, rawmode: str, notes: list[str]) -> Image.Image:
    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        if rgba.getchannel("A").getextrema() != (255, 255):
            notes.append("transparency composited onto white")
        if ";16" in rawmode:
            notes.append("16 bits per channel reduced to 8 (Pillow keeps the high byte)")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / float grayscale: scale to the full 8-bit range instead of clipping at 255
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        notes.append(f"{img.mode} grayscale scaled to 8 bits ({lo:g}..{hi:g} -> 0..255)")
        arr = np.zeros_like(arr) if hi == lo else (arr - lo) * (255.0 / (hi - lo))
        img = Image.fromarray(arr.round().astype(np.uint8))
    elif ";16" in rawmode:
        notes.append("16 bits per channel reduced to 8 (Pillow keeps the high byte)")
    elif img.mode not in ("1", "L", "RGB"):
        notes.append(f"{img.mode} converted to RGB")
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
    listing = Listing(splits={}, info={"layout": "imagefolder", "policy": POLICY})
    children = visible_children(root, root, listing)
    groups = group_splits([c for c in children if c.is_dir()], root, listing)
    if groups:
        ignore_unused(children, {p for paths in groups.values() for p in paths}, root, listing,
                      "not a split folder; beside train/valid/test folders, class folders belong inside them")
    split_roots = {split: [(p, visible_children(p, root, listing)) for p in paths] for split, paths in groups.items()}
    split_roots = split_roots or {"train": [(root, children)]}
    class_names = sorted({d.name for roots in split_roots.values() for _, entries in roots for d in entries if d.is_dir()})
    if not class_names:
        raise UserInputError(
            f"{root}: no class folders found; an ImageFolder tree is root/<class>/<image> "
            "(optionally under train/, valid/ or val/ or validation/, test/)"
        )
    class_index = {name: i for i, name in enumerate(class_names)}
    for split, roots in sorted(split_roots.items()):
        items: list[Item] = []
        for _, entries in roots:
            for entry in entries:
                if not entry.is_dir():
                    listing.skipped.append(Skip(relative(entry, root), "file outside a class folder"))
                    continue
                files = walk_files(entry, root, listing)
                if not files:
                    listing.skipped.append(Skip(relative(entry, root) + "/", "empty class folder"))
                    continue
                items += [_file_item(path, root, class_index[entry.name]) for path in files]
        listing.splits[split] = items
    listing.classes = class_names
    return listing


def _file_item(path: Path, root: Path, label: int) -> Item:
    rel = relative(path, root)

    def load(conversions: list[str]) -> dict[str, bytes]:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise BadSample(f"unreadable: {e.strerror}") from None
        ext, encoded = encode_image(data, rel, conversions)
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
    used = {classes_file}
    for prefix, split in IDX_SPLITS.items():
        images_path = _idx_file(root, f"{prefix}-images-idx3-ubyte")
        labels_path = _idx_file(root, f"{prefix}-labels-idx1-ubyte")
        if images_path is None:
            continue
        if labels_path is None:
            raise UserInputError(f"{images_path}: no matching {prefix}-labels-idx1-ubyte[.gz] next to it")
        used |= {images_path, labels_path}
        images, labels = read_idx(images_path), read_idx(labels_path)
        if len(images) != len(labels):
            raise UserInputError(f"{images_path}: {len(images)} images but {len(labels)} labels")
        name = images_path.name
        listing.splits[split] = [_idx_item(images[i], int(labels[i]), f"{name}#{i}") for i in range(len(images))]
    ignore_unused(visible_children(root, root, listing), used, root, listing,
                  "not an IDX file of the train/t10k splits, nor classes.json")
    n_classes = 1 + max(int(item.meta["label"]) for items in listing.splits.values() for item in items)
    listing.classes = (
        json.loads(read_text(classes_file, root)) if classes_file.exists() else [str(i) for i in range(n_classes)]
    )
    return listing


def _idx_item(pixels: np.ndarray, label: int, source: str) -> Item:
    def load(conversions: list[str]) -> dict[str, bytes]:
        png = _png_bytes(Image.fromarray(pixels).convert("RGB"))
        return {"png": png, "cls": str(label).encode(), "json": json.dumps({"source": source}).encode()}

    return Item(source, load, {"label": label})
