"""tools/python/kestrel.py against what test_capi measured through the C API.

usage: check_python_predictor.py LIBRARY CHECKPOINT IMAGE CLASSES EXPECTED_PROBS
CLASSES: comma-separated names; EXPECTED_PROBS: comma-separated floats (the
image's probabilities from kestrel_predictor_probabilities_file).
Also checks how the wrapper refuses bad input, and its command-line mode.
"""
import ctypes
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

here = os.path.dirname(os.path.abspath(__file__))
script = os.path.join(here, "..", "..", "tools", "python", "kestrel.py")
sys.path.insert(0, os.path.dirname(script))
sys.dont_write_bytecode = True  # no __pycache__ left in the source tree
if not __debug__:  # python -O or PYTHONOPTIMIZE strips the asserts below: nothing would be checked
    sys.exit("check_python_predictor.py: its checks are asserts; run it without -O / PYTHONOPTIMIZE")

library, checkpoint, image, classes, expected = sys.argv[1:6]
os.environ["KESTREL_LIB"] = library
import kestrel  # noqa: E402


def checkpoint_info(path):
    """The checkpoint's kestrel.model_info, read from the safetensors header directly."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return json.loads(json.loads(f.read(length))["__metadata__"]["kestrel.model_info"])


def expect_error(kind, needle, fn, *args, **kwargs):
    """fn(*args) raises `kind` with `needle` in its one-line message."""
    try:
        fn(*args, **kwargs)
    except kind as e:
        assert needle in str(e) and "\n" not in str(e), f"{kind.__name__} says {str(e)!r}, expected {needle!r}"
        return
    raise AssertionError(f"no {kind.__name__} ({needle!r}) from {fn.__name__}{args}")


def run_cli(*args):
    return subprocess.run([sys.executable, script, *args], capture_output=True, text=True,
                          env=dict(os.environ, KESTREL_LIB=library))


def expect_cli_error(needle, *args):
    """A failing command line: one 'kestrel: error:' line on stderr, nothing on stdout, non-zero exit."""
    r = run_cli(*args)
    lines = r.stderr.splitlines()
    assert r.returncode != 0, f"exit 0 for {args}"
    assert len(lines) == 1 and lines[0].startswith("kestrel: error:") and needle in lines[0], (args, r.stderr)
    assert r.stdout == "", (args, r.stdout)


expected = [ctypes.c_float(float(v)).value for v in expected.split(",")]  # the C side's float32s
best = max(range(len(expected)), key=lambda i: expected[i])
info = checkpoint_info(checkpoint)
with kestrel.Predictor(checkpoint) as p:
    assert p.classes == classes.split(","), p.classes
    assert p.model == info["model"], (p.model, info["model"])
    assert p.input_shape == (info["height"], info["width"], info["in_channels"]), p.input_shape
    got = p.probabilities(image)
    assert got == expected, (got, expected)  # the same floats, printed with full precision
    top = p.predict(image, top_k=2)
    assert len(top) == 2 and top[0].index == best and top[0].name == p.classes[best], top
    assert top[0].probability >= top[1].probability, top
    assert len(p.predict(image, top_k=len(expected) + 5)) == len(expected), "top_k is capped at the class count"
    expect_error(ValueError, "top_k must be at least 1, got -1", p.predict, image, top_k=-1)
    expect_error(ValueError, "top_k must be at least 1, got 0", p.predict, image, top_k=0)
    expect_error(TypeError, "top_k must be an int", p.predict, image, top_k=2.5)
    expect_error(kestrel.KestrelError, "missing.png", p.probabilities, image + ".missing.png")
    expect_error(TypeError, "got NoneType", p.probabilities, None)
    print("python predictor: file probabilities match the C API; top_k checked (capped, < 1 and non-int refused)")
    try:
        import numpy as np
    except ImportError:
        np = None
    if np is not None:  # pixels in memory: one image and a batch of two
        batch = np.random.default_rng(0).integers(0, 256, size=(2, 20, 24, 3), dtype=np.uint8)
        pair = p.probabilities(batch)
        assert pair.shape == (2, len(expected)), pair.shape
        one = p.probabilities(batch[1])
        # Equal up to float rounding: at batch 1 the classifier is a matrix-vector product.
        assert np.allclose(one, pair[1], rtol=1e-5, atol=1e-7), (one, pair[1])
        # Not uint8: refused, never cast (0-1 floats would become all-zero pixels).
        expect_error(ValueError, "uint8", p.probabilities, batch.astype(np.float32) / 255)
        expect_error(ValueError, "got a float64 array", p.probabilities, batch[0].astype(np.float64))
        expect_error(ValueError, "got a int64 array", p.probabilities, batch.astype(np.int64))
        expect_error(ValueError, "uint8", p.predict, batch[0].astype(np.float32))
        # Lists: integers 0-255 are pixels; the shape is checked and named.
        assert np.array_equal(p.probabilities(batch[1].tolist()), one), "a list of ints is those pixels"
        expect_error(ValueError, "shape (1, 2, 20, 24, 3)", p.probabilities, batch[None].tolist())
        expect_error(ValueError, "shape (7,)", p.probabilities, [1, 2, 3, 4, 5, 6, 7])
        expect_error(ValueError, "integers 0-255", p.probabilities, [[0.5, 0.25], [0.0, 1.0]])
        expect_error(ValueError, "integers 0-255", p.probabilities, [[0, 256], [0, 1]])
        expect_error(ValueError, "unequal lengths", p.probabilities, [[0, 1], [2]])
        expect_error(ValueError, "shape (2, 20, 24)", p.probabilities, batch[:, :, :, 0])
        expect_error(ValueError, "predict takes one image", p.predict, batch)
        grey = p.probabilities(batch[0, :, :, 0])  # [H, W] is one grey image
        assert grey.shape == (len(expected),), grey.shape
        assert p.probabilities(batch[:0]).shape == (0, len(expected)), "an empty batch gives no rows"
        assert len(p.predict(image, top_k=np.int64(2))) == 2, "numpy's integers are ints"
        print("python predictor: pixels checked (batch = singles; float, int64, 5-D, ragged and list input refused)")
    handle = p
assert handle.closed
expect_error(ValueError, "predictor is closed", handle.probabilities, image)
expect_error(ValueError, "predictor is closed", handle.predict, image)
handle.close()  # twice is harmless

with kestrel.Predictor(checkpoint, device=None) as p:  # None is the C API's NULL: the CPU
    assert p.probabilities(image) == expected
expect_error(kestrel.KestrelError, ".missing", kestrel.Predictor, checkpoint + ".missing")
expect_error(kestrel.KestrelError, "tpu", kestrel.Predictor, checkpoint, device="tpu")
expect_error(TypeError, "device must be a string", kestrel.Predictor, checkpoint, device=0)
print("python predictor: device=None is the CPU; closed predictor, missing checkpoint and bad device refused")

# The command line: a folder is every image below it, sorted, like `kestrel predict`.
scratch = tempfile.mkdtemp(prefix="kestrel_py_predictor_")
try:
    folder = os.path.join(scratch, "images")
    os.makedirs(os.path.join(folder, "sub"))
    for name in ("b.png", "a.png", os.path.join("sub", "c.PNG")):
        shutil.copyfile(image, os.path.join(folder, name))
    with open(os.path.join(folder, "notes.txt"), "w") as f:
        f.write("not an image\n")
    r = run_cli(checkpoint, folder, image, "--top-k", "2")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    listed = [line for line in r.stdout.splitlines() if not line.startswith(" ")]
    want = [os.path.join(folder, n) for n in ("a.png", "b.png", os.path.join("sub", "c.PNG"))] + [image]
    assert listed == want, listed
    ranks = [line.split() for line in r.stdout.splitlines() if line.startswith(" ")]
    assert len(ranks) == 2 * len(want), r.stdout
    assert all(rank[0] == "1" and rank[1] == classes.split(",")[best].split()[0] for rank in ranks[::2]), r.stdout
    r = run_cli(checkpoint, folder, "--top-k", "3", "--format", "json")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    doc = json.loads(r.stdout)
    assert doc["checkpoint"] == checkpoint and doc["model"] == info["model"], doc
    assert [p["image"] for p in doc["predictions"]] == want[:3], doc["predictions"]
    for p in doc["predictions"]:
        assert [c["class_index"] for c in p["top_k"]][0] == best and len(p["top_k"]) == 3, p
        assert abs(p["top_k"][0]["probability"] - expected[best]) < 1e-6, p
    print("python predictor: --format json lists what the table does, as kestrel predict's JSON")
    with kestrel.Predictor(checkpoint) as p:
        try:
            p.predict(folder)
            raise AssertionError("predict() of a folder did not refuse")
        except kestrel.KestrelError as e:
            assert "is a folder; predict one file at a time" in str(e), e
    with_bad = os.path.join(scratch, "with_bad")
    os.makedirs(with_bad)
    shutil.copyfile(image, os.path.join(with_bad, "a.png"))
    with open(os.path.join(with_bad, "b.png"), "wb") as f:
        f.write(b"not a png")
    r = run_cli(checkpoint, with_bad)  # a.png answered first, then the stop
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "b.png" in r.stderr, r.stderr
    r = run_cli(checkpoint, with_bad, "--skip-bad", "--format", "json")
    assert r.returncode == 0, r.stderr
    assert [p["image"] for p in json.loads(r.stdout)["predictions"]] == [os.path.join(with_bad, "a.png")], r.stdout
    assert "b.png" in r.stderr and "(skipped)" in r.stderr, r.stderr
    print("python predictor: a folder refused by predict(); --skip-bad goes past an unreadable image")
    read_end, write_end = os.pipe()
    os.close(read_end)  # a reader already gone, as `| head` once it has its lines
    piped = subprocess.run([sys.executable, script, checkpoint, folder], stdout=write_end, stderr=subprocess.PIPE,
                           text=True, env=dict(os.environ, KESTREL_LIB=library))
    os.close(write_end)
    assert piped.returncode == 141 and piped.stderr == "", (piped.returncode, piped.stderr)
    print("python predictor: a closed pipe ends it quietly (exit 141, as SIGPIPE)")
    os.makedirs(os.path.join(scratch, "empty"))
    expect_cli_error("no images in it", checkpoint, os.path.join(scratch, "empty"))
    expect_cli_error("no such file or folder", checkpoint, os.path.join(scratch, "none.png"))
    expect_cli_error(".missing", checkpoint + ".missing", image)
    expect_cli_error("--top-k must be at least 1", checkpoint, image, "--top-k", "0")
    expect_cli_error("tpu", checkpoint, image, "--device", "tpu")
    expect_cli_error("arguments are required", checkpoint)
    print("python predictor: command line checked (a folder sorted, non-images skipped; errors one line on stderr)")
finally:
    shutil.rmtree(scratch)
print("python predictor: ok")
