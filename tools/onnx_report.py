#!/usr/bin/env python3
"""Compares exported ONNX models (a float one and its int8 one, say) in
onnxruntime on the CPU: file size, top-1 on the data set's test split, batch-1
latency and throughput, as one Markdown table.

Usage: tools/onnx_report.py MODEL.onnx [MODEL.onnx ...] [--data-dir DIR]
       [--limit N] [--threads 2] [--iters 100] [--batch 256]
The data set and its normalization come from each model's Kestrel metadata;
the readers cover the official files: Fashion-MNIST / MNIST IDX (plain or .gz)
and CIFAR-10 / CIFAR-100 binary, and image folders (DIR/test/<class>/*, decoded
by Pillow, whose JPEG decoder may differ from Kestrel's stb_image by a pixel
level here and there). Needs onnxruntime and numpy.
"""
import argparse
import gzip
import json
import os
import sys

try:
    import numpy as np
    import onnxruntime as ort  # noqa: F401 (onnx_latency opens the sessions)
except ImportError as e:
    sys.exit(f"onnx_report: {e.name} is not installed (tools/setup.sh installs it)")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from onnx_latency import measure_speed, open_session  # noqa: E402

DEFAULT_DIRS = {"fashion-mnist": "/usr/share/datasets/fashion-mnist", "mnist": "/usr/share/datasets/mnist",
                "cifar10": "data/cifar10", "cifar100": "data/cifar100"}


def fail(msg):
    sys.exit(f"onnx_report: {msg}")


def find(d, names):
    for n in names:
        for sub in ("", "cifar-10-batches-bin", "cifar-100-binary"):
            p = os.path.join(d, sub, n)
            if os.path.isfile(p):
                return p
    fail(f"none of {', '.join(names)} in {d}")


def read_idx(path):
    raw = (gzip.open if path.endswith(".gz") else open)(path, "rb").read()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


def folder_test_split(d, classes, size):
    try:
        from PIL import Image
    except ImportError:
        fail("reading image folders needs Pillow (python3-pil)")
    root = os.path.join(d, "test")
    if not os.path.isdir(root):
        fail(f"no test/ folder in {d}")
    images, labels = [], []
    for label, name in enumerate(classes):
        folder = os.path.join(root, name)
        if not os.path.isdir(folder):
            fail(f"class folder {folder} not found (the model's classes: {', '.join(classes)})")
        for f in sorted(os.listdir(folder)):
            if f.lower().endswith((".jpg", ".jpeg", ".png", ".bmp")):
                img = Image.open(os.path.join(folder, f))
                img = img.convert("L" if size[2] == 1 else "RGB")
                if img.size != (size[1], size[0]):
                    fail(f"{os.path.join(folder, f)} is {img.size[0]}x{img.size[1]}, the model reads {size[1]}x{size[0]}")
                images.append(np.asarray(img).reshape(size[0], size[1], size[2]))
                labels.append(label)
    return np.stack(images), np.array(labels, np.int64)


def test_split(dataset, d, info):
    """Images [N, H, W, C] uint8 and labels [N] of the test split."""
    if dataset == "folder":
        return folder_test_split(d, info["classes"], (info["height"], info["width"], info["in_channels"]))
    if dataset in ("fashion-mnist", "mnist"):
        images = read_idx(find(d, ["t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte"]))
        labels = read_idx(find(d, ["t10k-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte"]))
        return images[..., None], labels.astype(np.int64)
    if dataset in ("cifar10", "cifar100"):
        skip = 1 if dataset == "cifar10" else 2  # CIFAR-100 rows: coarse label, fine label, pixels
        raw = np.fromfile(find(d, ["test_batch.bin"] if dataset == "cifar10" else ["test.bin"]), np.uint8)
        rows = raw.reshape(-1, skip + 3072)
        return rows[:, skip:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), rows[:, skip - 1].astype(np.int64)
    fail(f"no reader here for data set '{dataset}' (fashion-mnist, mnist, cifar10, cifar100, folder)")


def model_info(sess, path):
    meta = sess.get_modelmeta().custom_metadata_map
    if "kestrel.model_info" not in meta:
        fail(f"{path} has no kestrel.model_info metadata (export it with kestrel export)")
    return json.loads(meta["kestrel.model_info"])


def top1(sess, info, images, labels, batch):
    mean = np.array(info["mean"], np.float32)
    std = np.array(info["std"], np.float32)
    name = sess.get_inputs()[0].name
    correct = 0
    for i in range(0, len(images), batch):
        x = ((images[i:i + batch].astype(np.float32) / 255.0 - mean) / std).transpose(0, 3, 1, 2)
        (logits,) = sess.run(None, {name: np.ascontiguousarray(x)})
        correct += int((logits.argmax(1) == labels[i:i + batch]).sum())
    return correct / len(images)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--data-dir", help="the data set's folder (default: its standard place)")
    p.add_argument("--limit", type=int, default=0, help="use only the first N test images")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--batch", type=int, default=256)
    a = p.parse_args()
    rows = []
    for path in a.models:
        if not os.path.isfile(path):
            fail(f"model not found: {path}")
        sess = open_session(path, a.threads, "onnx_report")
        info = model_info(sess, path)
        if not a.batch or isinstance(sess.get_inputs()[0].shape[0], int):
            fail(f"{path} has a fixed batch size; export it with --batch 0")
        data_dir = a.data_dir or DEFAULT_DIRS.get(info["dataset"], "")
        if not data_dir:
            fail(f"{path} was trained on an image folder: name it with --data-dir")
        images, labels = test_split(info["dataset"], data_dir, info)
        if a.limit:
            images, labels = images[:a.limit], labels[:a.limit]
        acc = top1(sess, info, images, labels, a.batch)
        median, p95, per_sec = measure_speed(sess, a.iters, a.batch)
        kind = "int8" if info.get("quantized") else "float32"
        rows.append((path, info["model"], kind, os.path.getsize(path) / 1e6, 100 * acc, len(images),
                     median, p95, per_sec))
    print(f"onnxruntime {ort.__version__}, CPU, {a.threads} threads; throughput at batch {a.batch}\n")
    print("| file | model | weights | size (MB) | top-1 (%) | test images | latency median (ms) | p95 (ms) "
          "| throughput (img/s) |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.3f} | {r[4]:.2f} | {r[5]} | {r[6]:.3f} | {r[7]:.3f} | {r[8]:.0f} |")


if __name__ == "__main__":
    main()
