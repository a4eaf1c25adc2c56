"""tools/onnx_report.py and tools/torch_weights.py: their error paths, and
onnx_report's input resizing and --limit against the kestrel binary's own.

usage: check_python_tools.py KESTREL_BINARY SCRATCH_DIR

On small data sets it writes itself under SCRATCH_DIR/check_python_tools (a Fashion-MNIST-shaped
IDX set of 28x28 images, an image folder of PNGs of mixed sizes), it trains
tiny models with the binary and exports them to ONNX, then holds onnx_report
against `kestrel eval` (top-1, the --limit subset) and `kestrel predict`
(per-image probabilities, which only agree when the resizing does). Prints
each check; exits 1 if any failed (keeping its files), else removes them. Parts whose dependencies are missing
(onnxruntime, Pillow, torch, an ONNX-capable build) are skipped, and say so.
"""
import gzip
import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np

here = os.path.dirname(os.path.abspath(__file__))
tools = os.path.normpath(os.path.join(here, "..", "..", "tools"))
onnx_report_py = os.path.join(tools, "onnx_report.py")
torch_weights_py = os.path.join(tools, "torch_weights.py")

failures = []
skipped = []  # parts that could not run here: exit 77, which the gtest reports as a skip


def have(module):
    return importlib.util.find_spec(module) is not None


def skip(what):
    print(f"skipped: {what}")
    skipped.append(what)


def check(ok, what, detail=""):
    """Prints the check, and on failure `detail`: what was seen."""
    print(f"{'ok' if ok else 'FAIL'}: {what}" + (f": {detail}" if detail and not ok else ""))
    if not ok:
        failures.append(what)
    return ok


def run(args, cwd=None):
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONDONTWRITEBYTECODE="1")  # no __pycache__ in tools/
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def kestrel(*args):
    return run([binary, *args])


def must(r, what):
    """A setup step that has to work: stop here if it did not."""
    if r.returncode != 0:
        print(f"FAIL: {what}: exit {r.returncode}: {r.stderr.strip()[-2000:]}")
        sys.exit(1)
    return r


def expect_one_line_error(tool, args, needle, what, cwd=None):
    """A refused command: non-zero exit, exactly one line on stderr, '<tool>: error: ...' naming `needle`."""
    r = run([sys.executable, tool, *args], cwd=cwd)
    lines = r.stderr.splitlines()
    prefix = os.path.splitext(os.path.basename(tool))[0]
    ok = (r.returncode != 0 and len(lines) == 1 and lines[0].startswith(prefix) and ": error: " in lines[0]
          and needle in lines[0])
    return check(ok, what, f"exit {r.returncode}, stderr {r.stderr.strip()[-600:]!r}, expected {needle!r}")


# ------------------------------------------------------------------ synthetic data


def png_bytes(pixels):
    """A PNG of uint8 [H, W] (grey), [H, W, 3] (RGB) or [H, W, 4] (RGBA), no filtering."""
    pixels = np.ascontiguousarray(pixels, np.uint8)
    h, w = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    colour_type = {1: 0, 3: 2, 4: 6}[channels]
    rows = b"".join(b"\x00" + pixels[y].tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour_type, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def write_png(path, pixels):
    with open(path, "wb") as f:
        f.write(png_bytes(pixels))


def write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with (gzip.open if path.endswith(".gz") else open)(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def idx_data_set(root, rng):
    """Fashion-MNIST's files and shapes (28x28 grey, 10 classes): class k is a bright band at rows 2k..2k+7."""
    os.makedirs(root, exist_ok=True)
    for split, n in (("train", 400), ("t10k", 120)):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        images = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
        for i, k in enumerate(labels):
            images[i, 2 * k:2 * k + 8] += 180
        write_idx(os.path.join(root, f"{split}-images-idx3-ubyte.gz"), images)
        write_idx(os.path.join(root, f"{split}-labels-idx1-ubyte.gz"), labels)
    return images, labels  # the test split


def folder_data_set(root, rng):
    """train/ and test/ with classes a (red), b (green), c (blue); images of several sizes, some grey or RGBA."""
    sizes = [(20, 20), (26, 22), (40, 36), (13, 17), (64, 48)]
    for split, per_class in (("train", 40), ("test", 7)):
        for k, name in enumerate("abc"):
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            for i in range(per_class):
                h, w = sizes[(i + k) % len(sizes)]
                px = rng.integers(0, 90, size=(h, w, 3)).astype(np.uint8)
                px[..., k] += 150
                px[h // 3:h // 2, :, :] = 255 - px[h // 3:h // 2, :, :]  # a stripe, so resizing matters
                if split == "test" and i == 5:
                    px = px[..., k]  # grey: the class's channel alone
                elif split == "test" and i == 6:
                    px = np.concatenate([px, np.full((h, w, 1), 200, np.uint8)], axis=2)
                write_png(os.path.join(root, split, name, f"{i:02d}.png"), px)


# ------------------------------------------------------------------ file surgery


def rewrite_checkpoint_info(src, dst, **changes):
    """A copy of a safetensors checkpoint whose kestrel.model_info has `changes` applied."""
    with open(src, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        data = f.read()
    info = json.loads(header["__metadata__"]["kestrel.model_info"])
    info.update(changes)
    header["__metadata__"]["kestrel.model_info"] = json.dumps(info)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(dst, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)


def strip_onnx_metadata(src, dst):
    """A copy of an ONNX file without its metadata_props (ModelProto field 14)."""
    raw = open(src, "rb").read()
    out, i = bytearray(), 0

    def varint(j):
        value, shift = 0, 0
        while True:
            b = raw[j]
            value |= (b & 0x7F) << shift
            j += 1
            shift += 7
            if not b & 0x80:
                return value, j

    while i < len(raw):
        start = i
        key, i = varint(i)
        wire = key & 7
        if wire == 0:
            _, i = varint(i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:  # 2: length-delimited
            length, i = varint(i)
            i += length
        if key >> 3 != 14:
            out += raw[start:i]
    open(dst, "wb").write(bytes(out))


# ------------------------------------------------------------------ reading results


def report_rows(stdout):
    """onnx_report's table rows: {file: (top-1 % as printed, test images)}."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 9 and cells[0] not in ("file", "---"):
            rows[cells[0]] = (cells[4], int(cells[5]))
    return rows


def onnx_top1(model, *args):
    r = run([sys.executable, onnx_report_py, model, "--iters", "2", "--batch", "16", *args])
    if r.returncode != 0:
        return None, r.stderr.strip()
    return report_rows(r.stdout).get(model), r.stdout


def kestrel_eval(checkpoint, out, *args):
    r = kestrel("eval", "-c", checkpoint, "--latency-iters", "0", "--no-progress", "--device", "cpu",
                "--workers", "1", "--out", out, *args)
    if r.returncode != 0:
        return None
    with open(os.path.join(out, "report.json")) as f:
        return json.load(f)


def same_top1(what, onnx_model, onnx_args, checkpoint, eval_out, eval_args):
    """onnx_report and kestrel eval report the same top-1 over the same number of images; returns eval's report."""
    got, out = onnx_top1(onnx_model, *onnx_args)
    want = kestrel_eval(checkpoint, eval_out, *eval_args)
    want_row = want and (f"{100 * want['top1']:.2f}", want["images"])
    seen = f"top-1 {got[0]}% of {got[1]} images" if got == want_row else f"onnx_report {got}, kestrel eval {want_row}"
    check(got is not None and got == want_row, f"{what} ({seen})", out[-300:] if got is None else "")
    return want


def kestrel_probabilities(checkpoint, images, classes):
    """`kestrel predict`'s probabilities of every class, image by image: [N, classes]."""
    r = must(kestrel("predict", "-c", checkpoint, "--format", "json", "--top-k", str(classes), "--device", "cpu",
                     *images), "kestrel predict")
    out = np.zeros((len(images), classes))
    for i, p in enumerate(json.loads(r.stdout)["predictions"]):
        for c in p["top_k"]:
            out[i, c["class_index"]] = c["probability"]
    return out


def onnx_probabilities(session, onnx_report, info, images):
    """The ONNX model's softmax on onnx_report's model inputs (uint8 [N, H, W, C] arrays, or image paths)."""
    x = onnx_report.batch_inputs(images, info)
    logits = session.run(None, {session.get_inputs()[0].name: x})[0].astype(np.float64)
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def nearest(x, h, w):
    """A nearest-pixel resize of [N, H, W, C]: the negative control of the 28 -> 32 check."""
    return x[:, np.arange(h) * x.shape[1] // h][:, :, np.arange(w) * x.shape[2] // w]


PROBABILITY_TOLERANCE = 1e-4  # ONNX Runtime's and Kestrel's float rounding differ


def same_probabilities(what, onnx_report, onnx_model, inputs, checkpoint, files, classes, control):
    """onnx_report's inputs give the ONNX model kestrel predict's probabilities, and `control`
    (onnx_report's function name, a wrong replacement, its name) would not: the check can tell."""
    session = onnx_report.open_session(onnx_model, 1)
    info = onnx_report.model_info(session, onnx_model)
    want = kestrel_probabilities(checkpoint, files, classes)
    diff = np.abs(onnx_probabilities(session, onnx_report, info, inputs) - want).max()
    name, wrong, wrong_name = control
    right = getattr(onnx_report, name)
    setattr(onnx_report, name, wrong)
    try:
        control_diff = np.abs(onnx_probabilities(session, onnx_report, info, inputs) - want).max()
    finally:
        setattr(onnx_report, name, right)
    check(diff < PROBABILITY_TOLERANCE and control_diff > 10 * PROBABILITY_TOLERANCE,
          f"{what} (max difference {diff:.1e}; {wrong_name} would give {control_diff:.1e})")


# ------------------------------------------------------------------ the checks


def check_onnx_report(scratch):
    if not have("onnxruntime"):
        skip("onnx_report checks (no onnxruntime)")
        return
    sys.path.insert(0, tools)
    sys.dont_write_bytecode = True  # no __pycache__ left in the source tree
    import onnx_report

    rng = np.random.default_rng(7)
    idx_dir, folder_dir = os.path.join(scratch, "idx"), os.path.join(scratch, "folder")
    idx_images, _ = idx_data_set(idx_dir, rng)
    folder_data_set(folder_dir, rng)

    # A model trained at 32x32 on 28x28 images: onnx_report has to resize them as kestrel eval does.
    fm = os.path.join(scratch, "fm32")
    must(kestrel("train", "--model", "cifar10_200k", "--dataset", "fashion-mnist", "--data-dir", idx_dir,
                 "--image-size", "32", "--epochs", "3", "--batch-size", "32", "--lr", "0.02", "--workers", "1",
                 "--out", fm, "--no-progress", "--device", "cpu", "--overwrite"),
         "kestrel train (IDX, --image-size 32)")
    r = kestrel("export", "-c", f"{fm}/best.safetensors", "--overwrite")
    if r.returncode != 0 and "no ONNX support" in r.stderr:
        skip("onnx_report checks (this kestrel build cannot export ONNX)")
        return
    must(r, "kestrel export")
    fm_onnx = f"{fm}/best.onnx"

    for flags, needle in ((["--iters", "0"], "--iters must be at least 1, got 0"),
                          (["--limit", "-5"], "--limit must be at least 0, got -5"),
                          (["--batch", "0"], "--batch must be at least 1, got 0"),
                          (["--threads", "0"], "--threads must be at least 1, got 0"),
                          (["--limit", "many"], "invalid int value: 'many'")):
        expect_one_line_error(onnx_report_py, [fm_onnx, *flags], needle, f"onnx_report {' '.join(flags)} is refused")
    not_onnx = os.path.join(scratch, "not_a_model.onnx")
    with open(not_onnx, "w") as f:
        f.write("not a protobuf\n")
    bare = os.path.join(scratch, "no_metadata.onnx")
    strip_onnx_metadata(fm_onnx, bare)
    truncated = os.path.join(scratch, "truncated_idx")
    os.makedirs(truncated, exist_ok=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copyfile(os.path.join(idx_dir, name), os.path.join(truncated, name))
    with gzip.open(os.path.join(truncated, "t10k-images-idx3-ubyte.gz"), "wb") as f:
        f.write(gzip.open(os.path.join(idx_dir, "t10k-images-idx3-ubyte.gz")).read()[:5000])
    for args, needle, what in (
            ([os.path.join(scratch, "absent.onnx")], "model not found", "a missing model"),
            ([scratch], "is not a file", "a folder given as the model"),
            ([not_onnx], "cannot load", "a file that is not ONNX"),
            ([bare], "no kestrel.model_info metadata", "an ONNX file without Kestrel's metadata"),
            ([fm_onnx, "--data-dir", os.path.join(scratch, "nowhere")], "data directory not found",
             "a missing data dir"),
            ([fm_onnx, "--data-dir", folder_dir], "none of t10k-images-idx3-ubyte", "a data dir without IDX files"),
            ([fm_onnx, "--data-dir", truncated], "truncated", "a truncated IDX file")):
        expect_one_line_error(onnx_report_py, args, needle, f"onnx_report names {what}")

    # IDX: resized 28 -> 32, and --limit takes the first N, as kestrel eval's does.
    for limit in ("50", "0"):
        same_top1(f"onnx_report on 28x28 images for a 32x32 model, --limit {limit}: kestrel eval's top-1", fm_onnx,
                  ["--data-dir", idx_dir, "--limit", limit], f"{fm}/best.safetensors", os.path.join(scratch, "eval_fm"),
                  ["--data-dir", idx_dir, "--limit", limit])
    pngs = []
    for i in range(6):
        pngs.append(os.path.join(scratch, f"idx_{i}.png"))
        write_png(pngs[-1], idx_images[i])
    same_probabilities("onnx_report's 28 -> 32 resize gives kestrel predict's probabilities", onnx_report, fm_onnx,
                       idx_images[:6, :, :, None], f"{fm}/best.safetensors", pngs, 10,
                       ("resize_for_model", nearest, "a nearest-pixel resize"))

    if not have("PIL"):
        skip("image-folder checks (onnx_report decodes image folders with Pillow)")
        return
    # An image folder of mixed sizes for a 16x16 model (box-averaged, bilinear, grown; grey and RGBA files).
    cf = os.path.join(scratch, "folder16")
    must(kestrel("train", "--model", "cifar10_200k", "--dataset", "folder", "--data-dir", folder_dir,
                 "--image-size", "16", "--epochs", "4", "--batch-size", "16", "--lr", "0.02", "--workers", "1",
                 "--out", cf, "--no-progress", "--device", "cpu", "--overwrite"),
         "kestrel train (image folder, --image-size 16)")
    must(kestrel("export", "-c", f"{cf}/best.safetensors", "--overwrite"), "kestrel export")
    cf_onnx = f"{cf}/best.onnx"
    test_files, labels = onnx_report.folder_test_split(folder_dir, ["a", "b", "c"])
    same_probabilities(f"onnx_report's resizing of {len(test_files)} folder images of 5 sizes gives kestrel predict's "
                       "probabilities", onnx_report, cf_onnx, test_files, f"{cf}/best.safetensors", test_files, 3,
                       ("resize_for_model", onnx_report.resize_bilinear, "bilinear without the block averaging"))
    for limit in ("8", "5", "0"):
        # No --data-dir: both read it from the run's config.json.
        want = same_top1(f"onnx_report on an image folder, --limit {limit}: kestrel eval's top-1", cf_onnx,
                         ["--limit", limit], f"{cf}/best.safetensors", os.path.join(scratch, "eval_cf"),
                         ["--limit", limit])
        _, chosen = onnx_report.limited(test_files, labels, int(limit), True)
        support = [c["support"] for c in want["per_class"]] if want else None
        check(support == np.bincount(chosen, minlength=3).tolist(),
              f"--limit {limit} spreads over the classes as kestrel eval's does",
              f"per class: onnx_report {np.bincount(chosen, minlength=3).tolist()}, kestrel eval {support}")

    # Weights' metadata (tools/torch_weights.py): an ImageNet-like data set, a center crop.
    crop = os.path.join(scratch, "crop")
    os.makedirs(crop, exist_ok=True)
    rewrite_checkpoint_info(f"{cf}/best.safetensors", f"{crop}/model.safetensors", dataset="imagenet",
                            crop_fraction=0.75)
    must(kestrel("export", "-c", f"{crop}/model.safetensors", "--overwrite"), "kestrel export (center crop)")
    crop_onnx = f"{crop}/model.onnx"
    same_probabilities("onnx_report's resize and center crop (crop_fraction 0.75) gives kestrel predict's "
                       "probabilities", onnx_report, crop_onnx, test_files, f"{crop}/model.safetensors", test_files, 3,
                       ("resize_and_center_crop", lambda x, h, w, _: onnx_report.resize_for_model(x, h, w),
                        "no crop"))
    same_top1("onnx_report on a center-cropped model: kestrel eval's top-1", crop_onnx, ["--data-dir", folder_dir],
              f"{crop}/model.safetensors", os.path.join(scratch, "eval_crop"), ["--dataset", "folder", "--data-dir",
                                                                                 folder_dir])
    expect_one_line_error(onnx_report_py, [crop_onnx], "no local data set to evaluate on: give --data-dir",
                          "onnx_report on ImageNet weights without --data-dir says what to give")

    lone = os.path.join(scratch, "lone")
    os.makedirs(lone, exist_ok=True)
    shutil.copyfile(cf_onnx, f"{lone}/model.onnx")  # no config.json beside it
    cifar = os.path.join(scratch, "cifar")
    os.makedirs(cifar, exist_ok=True)
    rewrite_checkpoint_info(f"{cf}/best.safetensors", f"{cifar}/model.safetensors", dataset="cifar10")
    must(kestrel("export", "-c", f"{cifar}/model.safetensors", "--overwrite"), "kestrel export (cifar10)")
    no_test = os.path.join(scratch, "no_test")
    shutil.copytree(os.path.join(folder_dir, "train"), os.path.join(no_test, "train"), dirs_exist_ok=True)
    short = os.path.join(scratch, "short")
    shutil.copytree(folder_dir, short, dirs_exist_ok=True)
    shutil.rmtree(os.path.join(short, "test", "c"))
    extra = os.path.join(scratch, "extra")
    shutil.copytree(folder_dir, extra, dirs_exist_ok=True)
    os.makedirs(os.path.join(extra, "test", "d"), exist_ok=True)
    corrupt = os.path.join(scratch, "corrupt")
    shutil.copytree(folder_dir, corrupt, dirs_exist_ok=True)
    with open(os.path.join(corrupt, "test", "b", "03.png"), "wb") as f:
        f.write(png_bytes(np.zeros((8, 8), np.uint8))[:40])
    for args, needle, what, cwd in (
            ([f"{lone}/model.onnx"], "trained on an image folder", "a folder model without --data-dir", None),
            # tools/get_data.sh's default: ./datasets, as kestrel eval looks for CIFAR.
            ([f"{cifar}/model.onnx"], "data directory not found: datasets (run tools/get_data.sh",
             "CIFAR's default place", scratch),
            ([cf_onnx, "--data-dir", no_test], "no test/ or val/ folder", "a folder without test/", None),
            ([cf_onnx, "--data-dir", short], os.path.join("test", "c") + " not found", "a missing class folder", None),
            ([cf_onnx, "--data-dir", extra], "class folders the model does not have: d", "an extra class folder", None),
            ([cf_onnx, "--data-dir", corrupt], "03.png: cannot decode", "a corrupt image", None)):
        expect_one_line_error(onnx_report_py, args, needle, f"onnx_report names {what}", cwd)


def check_torch_weights(scratch):
    expect_one_line_error(torch_weights_py, ["resnet18", "/nonexistent/x.safetensors", "--random"],
                          "folder /nonexistent does not exist", "torch_weights.py names a missing output folder")
    expect_one_line_error(torch_weights_py, ["resnet18", scratch, "--random"], "is a folder",
                          "torch_weights.py refuses a folder as its output")
    expect_one_line_error(torch_weights_py, ["resnet19", os.path.join(scratch, "r.safetensors"), "--random"],
                          "no torchvision or timm weights for 'resnet19'", "torch_weights.py names an unknown model")
    expect_one_line_error(torch_weights_py, ["resnet18", os.path.join(scratch, "r.safetensors"), "--seed", "-1"],
                          "--seed must be 0 or more", "torch_weights.py refuses a negative seed")
    existing = os.path.join(scratch, "existing.safetensors")
    with open(existing, "w") as f:
        f.write("keep me")
    expect_one_line_error(torch_weights_py, ["mobilenet_v3_small", existing, "--random"],
                          "exists; pass --overwrite", "torch_weights.py refuses to replace a file")
    with open(existing, "rb") as f:
        check(f.read() == b"keep me", "the refused file is untouched")
    if not (have("torch") and have("torchvision")):
        skip("torch_weights.py writing checks (no torch/torchvision)")
        return
    fresh = os.path.join(scratch, "fresh.safetensors")
    if os.path.exists(fresh):
        os.remove(fresh)
    r = run([sys.executable, torch_weights_py, "mobilenet_v3_small", fresh, "--random", "--seed", "3"])
    check(r.returncode == 0 and os.path.getsize(fresh) > 1_000_000, "torch_weights.py writes a fresh path",
          r.stderr.strip())
    r = run([sys.executable, torch_weights_py, "mobilenet_v3_small", existing, "--random", "--overwrite"])
    with open(existing, "rb") as a, open(fresh, "rb") as b:
        same_layout = a.read(8) == b.read(8)  # the same header length: the same tensors and metadata size
    check(r.returncode == 0 and same_layout and not os.path.exists(existing + ".part"),
          "torch_weights.py --overwrite replaces the file (no .part left behind)", r.stderr.strip())


if len(sys.argv) != 3:
    sys.exit("usage: check_python_tools.py KESTREL_BINARY SCRATCH_DIR")
binary = os.path.abspath(sys.argv[1])
if not os.access(binary, os.X_OK):
    sys.exit(f"check_python_tools.py: {binary} is not an executable")
work = os.path.join(os.path.abspath(sys.argv[2]), "check_python_tools")  # ours alone to empty
shutil.rmtree(work, ignore_errors=True)
for part, checks in (("weights", check_torch_weights), ("onnx_report", check_onnx_report)):
    os.makedirs(os.path.join(work, part))
    checks(os.path.join(work, part))
if failures:
    print(f"python tools: FAILED ({len(failures)}): {'; '.join(failures)} (files kept in {work})")
    sys.exit(1)
shutil.rmtree(work)
if skipped:
    print(f"python tools: ok, but skipped: {'; '.join(skipped)}")
    sys.exit(77)
print("python tools: ok")
