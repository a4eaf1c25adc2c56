#!/usr/bin/env python3
"""Compares exported ONNX models (a float one and its int8 one, say) in
onnxruntime on the CPU: file size, top-1 on the data set's test split, batch-1
latency and throughput, as one Markdown table.

Usage: tools/onnx_report.py MODEL.onnx [MODEL.onnx ...] [--data-dir DIR]
       [--limit N] [--threads 2] [--iters 100] [--batch 256]
The data set, input size and normalization come from each model's Kestrel
metadata; the data folder from --data-dir, else the training run's config.json
beside the model, else the data set's standard place, as `kestrel eval` picks
it. The readers cover the official files: Fashion-MNIST / MNIST IDX (plain or
.gz) and CIFAR-10 / CIFAR-100 binary, and image folders (DIR/test/<class>/*,
decoded by Pillow, whose JPEG decoder may differ from Kestrel's stb_image by a
pixel level here and there). Images go through `kestrel eval`'s steps: channel
conversion, resizing to the model's input (center-cropped when the metadata
has a crop_fraction below 1), normalization. --limit N takes the images
`kestrel eval --limit N` takes. Needs onnxruntime and numpy.
"""
import argparse
import gzip
import json
import math
import os
import sys

try:
    import numpy as np
    import onnxruntime as ort  # noqa: F401 (onnx_latency opens the sessions)
except ImportError as e:
    sys.exit(f"onnx_report: error: {e.name} is not installed (tools/setup.sh installs it)")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from onnx_latency import measure_speed, open_session  # noqa: E402

# Kestrel's default_data_dir (tools/lib/datasets.cpp); CIFAR is where tools/get_data.sh puts it.
DEFAULT_DIRS = {"fashion-mnist": "/usr/share/datasets/fashion-mnist", "mnist": "/usr/share/datasets/mnist",
                "cifar10": "datasets", "cifar100": "datasets"}
CLASS_COUNTS = {"fashion-mnist": 10, "mnist": 10, "cifar10": 10, "cifar100": 100}
# Kestrel's image-folder reader (data/readers.cpp image_extensions).
FOLDER_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tga", ".ppm", ".pgm", ".pnm")


def fail(msg, status=1):
    print(f"onnx_report: error: {msg}", file=sys.stderr)
    sys.exit(status)


def first_line(e):
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# ------------------------------------------------------------------ test splits


def find(d, names):
    for n in names:
        for sub in ("", "cifar-10-batches-bin", "cifar-100-binary"):
            p = os.path.join(d, sub, n)
            if os.path.isfile(p):
                return p
    fail(f"none of {', '.join(names)} in {d}")


def read_idx(path):
    try:
        raw = (gzip.open if path.endswith(".gz") else open)(path, "rb").read()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        fail(f"IDX: {path}: cannot read: {first_line(e)}")
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] == 0:
        fail(f"IDX: {path}: not an IDX file of unsigned bytes")
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    if len(raw) != 4 + 4 * dims + math.prod(shape):
        fail(f"IDX: {path}: {len(raw)} bytes, but its header promises {shape} values (truncated?)")
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


def folder_test_split(d, classes):
    """The test/ (or val/) images of an image folder as (paths, labels), listed
    as Kestrel lists them: class folders by name, then files by name."""
    root = os.path.join(d, "test")
    if not os.path.isdir(root):
        root = os.path.join(d, "val")
    if not os.path.isdir(root):
        fail(f"no test/ or val/ folder in {d} (an image folder is DIR/test/<class>/<image>;"
             " a folder kestrel split by --test-split is not read here)")
    if not classes:
        fail("the model's metadata names no classes, so its image folders cannot be matched")
    folders = sorted((f for f in os.listdir(root) if os.path.isdir(os.path.join(root, f))), key=os.fsencode)
    unknown = [f for f in folders if f not in classes]
    if unknown:
        fail(f"{root} has class folders the model does not have: {', '.join(unknown[:5])}"
             f" (the model's classes: {', '.join(classes[:20])}{', ...' if len(classes) > 20 else ''})")
    missing = [c for c in classes if c not in folders]
    if missing:
        fail(f"class folder {os.path.join(root, missing[0])} not found"
             f" (the model's classes: {', '.join(classes[:20])}{', ...' if len(classes) > 20 else ''})")
    paths, labels = [], []
    for name in folders:
        folder = os.path.join(root, name)
        files = sorted((f for f in os.listdir(folder) if f.lower().endswith(FOLDER_IMAGE_EXTENSIONS)
                        and os.path.isfile(os.path.join(folder, f))), key=os.fsencode)
        if not files:
            fail(f"image folder: {folder}: class folder has no images "
                 f"({', '.join(e[1:] for e in FOLDER_IMAGE_EXTENSIONS)})")
        paths += [os.path.join(folder, f) for f in files]
        labels += [classes.index(name)] * len(files)
    return paths, np.array(labels, np.int64)


def decode(path):
    """uint8 [H, W, 3]: Kestrel decodes folder images to RGB (grey copied, alpha dropped)."""
    try:
        from PIL import Image
    except ImportError:
        fail("reading image folders needs Pillow (python3-pil)")
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as e:  # Pillow's errors for unreadable files
        fail(f"image: {path}: cannot decode: {first_line(e)}")


def test_split(dataset, d, info):
    """The test split: (images, labels), images a uint8 array [N, H, W, C] or a list of image paths."""
    if not os.path.isdir(d):
        fail(f"data directory not found: {d}"
             + (" (run tools/get_data.sh to download CIFAR)" if dataset.startswith("cifar") else ""))
    if dataset in ("fashion-mnist", "mnist"):
        images = read_idx(find(d, ["t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte"]))
        labels = read_idx(find(d, ["t10k-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte"]))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            fail(f"{d}: the IDX files hold images {list(images.shape)} and labels {list(labels.shape)}")
        return images[..., None], labels.astype(np.int64)
    if dataset in ("cifar10", "cifar100"):
        skip = 1 if dataset == "cifar10" else 2  # CIFAR-100 rows: coarse label, fine label, pixels
        path = find(d, ["test_batch.bin"] if dataset == "cifar10" else ["test.bin"])
        raw = np.fromfile(path, np.uint8)
        if raw.size == 0 or raw.size % (skip + 3072):
            fail(f"CIFAR: {path}: {raw.size} bytes is not a whole number of {skip + 3072}-byte records")
        rows = raw.reshape(-1, skip + 3072)
        return rows[:, skip:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), rows[:, skip - 1].astype(np.int64)
    return folder_test_split(d, info["classes"])  # "folder", or weights' data set read as one


def limited(images, labels, limit, grouped_by_class):
    """The images `kestrel eval --limit` takes (tools/lib/datasets.cpp open_dataset): the
    first N of the shuffled official files; N evenly spaced ones of a class-by-class folder."""
    n = len(labels)
    if limit == 0 or limit >= n:
        return images, labels
    idx = [i * n // limit for i in range(limit)] if grouped_by_class else list(range(limit))
    if isinstance(images, list):
        return [images[i] for i in idx], labels[idx]
    return images[idx], labels[idx]


# ------------------------------------------------------------------ Kestrel's input steps


def resize_bilinear(x, out_h, out_w):
    """data::resize_bilinear on [N, H, W, C] float32 (half-pixel centres, edges clamped)."""
    def taps(n_in, n_out):
        f = np.maximum(0.0, (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5)
        i0 = np.minimum(n_in - 1, f.astype(np.int64))
        return i0, np.minimum(n_in - 1, i0 + 1), (f - i0).astype(np.float32)

    y0, y1, wy = taps(x.shape[1], out_h)
    x0, x1, wx = taps(x.shape[2], out_w)
    wy, wx = wy[None, :, None, None], wx[None, None, :, None]
    r0, r1 = x[:, y0], x[:, y1]
    top = r0[:, :, x0] * (1 - wx) + r0[:, :, x1] * wx
    bot = r1[:, :, x0] * (1 - wx) + r1[:, :, x1] * wx
    return top * (1 - wy) + bot * wy


def resize_for_model(x, h, w):
    """data::resize_image: shrinking by 2x or more box-averages f x f blocks first."""
    n, H, W, c = x.shape
    if (H, W) == (h, w):
        return x
    f = min(H // h, W // w)
    if f < 2:
        return resize_bilinear(x, h, w)
    sh, sw = H // f, W // f  # the remainder rows and columns are dropped
    small = x[:, :sh * f, :sw * f].reshape(n, sh, f, sw, f, c).sum(axis=(2, 4), dtype=np.float32)
    small *= np.float32(1.0 / (f * f))
    return small if (sh, sw) == (h, w) else resize_bilinear(small, h, w)


def resize_and_center_crop(x, h, w, crop_fraction):
    """data::resize_center_crop: scaled to cover h x w over crop_fraction, then the centre."""
    H, W = x.shape[1:3]
    sh, sw = math.floor(h / crop_fraction), math.floor(w / crop_fraction)  # timm's scale_size
    if h == w:  # torchvision's Resize(int): the shorter side to it, the longer truncated
        if W <= H:
            sh = sw * H // W
        else:
            sw = sh * W // H
    sh, sw = max(h, sh), max(w, sw)
    scaled = resize_for_model(x, sh, sw)
    top, left = int(round((sh - h) / 2.0)), int(round((sw - w) / 2.0))  # torchvision's CenterCrop
    return scaled[:, top:top + h, left:left + w]


def model_inputs(images, info):
    """uint8 [N, H, W, C] -> the model's NCHW float32 input, through tools::model_input_transform's steps."""
    c, h, w = info["in_channels"], info["height"], info["width"]
    x = images.astype(np.float32) * np.float32(1.0 / 255.0)
    if x.shape[3] != c:  # tools::convert_channels
        if c == 1:
            x = 0.299 * x[..., 0:1] + 0.587 * x[..., 1:2] + 0.114 * x[..., 2:3] if x.shape[3] >= 3 else x[..., 0:1]
        else:
            x = np.repeat(x[..., 0:1], 3, axis=3) if x.shape[3] < 3 else x[..., :3]
    crop = info.get("crop_fraction", 1.0)
    if crop < 1.0:
        x = resize_and_center_crop(x, h, w, crop)
    else:
        x = resize_for_model(x, h, w)
    x = (x - info["mean"]) / info["std"]
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)


def batch_inputs(images, info):
    if isinstance(images, list):  # image files, of any sizes: one by one
        return np.concatenate([model_inputs(decode(p)[None], info) for p in images])
    return model_inputs(images, info)


# ------------------------------------------------------------------ the report


def model_info(sess, path):
    meta = sess.get_modelmeta().custom_metadata_map
    if "kestrel.model_info" not in meta:
        fail(f"{path} has no kestrel.model_info metadata (export it with kestrel export)")
    try:
        info = json.loads(meta["kestrel.model_info"])
        for key in ("model", "num_classes", "in_channels", "height", "width"):
            if key not in info:
                raise ValueError(f"no '{key}'")
        c = info["in_channels"]
        info["mean"] = np.array(info.get("mean") or [0.0] * c, np.float32)
        info["std"] = np.array(info.get("std") or [1.0] * c, np.float32)
        if len(info["mean"]) != c or len(info["std"]) != c:
            raise ValueError(f"{len(info['mean'])} means and {len(info['std'])} stds for a {c}-channel model")
        if not 0.0 < info.get("crop_fraction", 1.0) <= 1.0:
            raise ValueError(f"crop_fraction {info['crop_fraction']} is not in (0, 1]")
    except (ValueError, TypeError) as e:  # json.JSONDecodeError is a ValueError
        fail(f"{path}: malformed kestrel.model_info metadata ({first_line(e)})")
    info.setdefault("dataset", "")
    info.setdefault("classes", [])
    return info


def data_dir_for(path, info, given):
    """--data-dir, else the training run's (config.json beside the model, as kestrel eval reads
    beside a checkpoint), else the data set's standard place."""
    if given:
        return given
    try:
        with open(os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")) as f:
            cfg = json.load(f)
        if isinstance(cfg, dict) and cfg.get("dataset") == info["dataset"] and cfg.get("data_dir"):
            return cfg["data_dir"]
    except (OSError, ValueError):
        pass  # no readable run config: the standard place
    if info["dataset"] in DEFAULT_DIRS:
        return DEFAULT_DIRS[info["dataset"]]
    if info["dataset"] == "folder":
        fail(f"{path} was trained on an image folder and no config.json beside it names it: give it with "
             "--data-dir (DIR/test/<class>/ images)")
    fail(f"{path} comes from '{info['dataset'] or 'an unrecorded data set'}' weights, with no local data set to "
         "evaluate on: give --data-dir DIR with DIR/test/<class>/ image folders named as its classes")


def run(sess, path, x):
    try:
        return sess.run(None, {sess.get_inputs()[0].name: x})[0]
    except Exception as e:  # onnxruntime raises its own types; one line either way
        fail(f"{path}: onnxruntime failed: {first_line(e)}")


def top1(sess, path, info, images, labels, batch):
    correct = 0
    for i in range(0, len(labels), batch):
        logits = run(sess, path, batch_inputs(images[i:i + batch], info))
        correct += int((logits.argmax(1) == labels[i:i + batch]).sum())
    return correct / len(labels)


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        fail(f"{message} (see --help)", 2)


def main():
    p = OneLineParser(prog="onnx_report.py", description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("models", nargs="+")
    p.add_argument("--data-dir", help="the data set's folder (default: the run's config.json, else its standard place)")
    p.add_argument("--limit", type=int, default=0, help="use only N test images, those kestrel eval --limit N uses "
                   "(0: all)")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime's intra-op threads (as Kestrel's OpenMP ones)")
    p.add_argument("--iters", type=int, default=100, help="timed batch-1 runs")
    p.add_argument("--batch", type=int, default=256, help="batch size of the top-1 pass and the throughput run")
    a = p.parse_args()
    for flag, value, least in (("--limit", a.limit, 0), ("--threads", a.threads, 1), ("--iters", a.iters, 1),
                               ("--batch", a.batch, 1)):
        if value < least:
            fail(f"{flag} must be at least {least}, got {value}", 2)
    rows, sources = [], []
    for path in a.models:
        if not os.path.exists(path):
            fail(f"model not found: {path}")
        if not os.path.isfile(path):
            fail(f"{path} is not a file")
        sess = open_session(path, a.threads, "onnx_report: error")
        info = model_info(sess, path)
        shape = sess.get_inputs()[0].shape
        want = [info["in_channels"], info["height"], info["width"]]
        if len(shape) != 4 or [d if isinstance(d, int) else None for d in shape[1:]] != want:
            fail(f"{path} takes input {shape}, but its metadata describes [batch, {', '.join(map(str, want))}]")
        if isinstance(shape[0], int):
            fail(f"{path} has a fixed batch size of {shape[0]}; export it with --batch 0 (a free batch dim)")
        data_dir = data_dir_for(path, info, a.data_dir)
        images, labels = test_split(info["dataset"], data_dir, info)
        expected = CLASS_COUNTS.get(info["dataset"])
        if expected is not None and expected != info["num_classes"]:
            fail(f"{info['dataset']} has {expected} classes but {path} has {info['num_classes']} outputs")
        images, labels = limited(images, labels, a.limit, info["dataset"] not in CLASS_COUNTS)
        acc = top1(sess, path, info, images, labels, a.batch)
        median, p95, per_sec = measure_speed(sess, a.iters, a.batch)
        kind = "int8" if info.get("quantized") else "float32"
        rows.append((path, info["model"], kind, os.path.getsize(path) / 1e6, 100 * acc, len(labels),
                     median, p95, per_sec))
        sources.append(f"{path}: {info['dataset'] or 'image folder'} test split in {data_dir}")
    print(f"onnxruntime {ort.__version__}, CPU, {a.threads} threads; throughput at batch {a.batch}")
    print("\n".join(sources) + "\n")
    print("| file | model | weights | size (MB) | top-1 (%) | test images | latency median (ms) | p95 (ms) "
          "| throughput (img/s) |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.3f} | {r[4]:.2f} | {r[5]} | {r[6]:.3f} | {r[7]:.3f} | {r[8]:.0f} |")


if __name__ == "__main__":
    main()
