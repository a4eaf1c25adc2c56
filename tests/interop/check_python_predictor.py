"""tools/python/kestrel.py against what test_capi measured through the C API.

usage: check_python_predictor.py LIBRARY CHECKPOINT IMAGE CLASSES EXPECTED_PROBS
CLASSES: comma-separated names; EXPECTED_PROBS: comma-separated floats (the
image's probabilities from kestrel_predictor_probabilities_file).
"""
import ctypes
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "..", "tools", "python"))

library, checkpoint, image, classes, expected = sys.argv[1:6]
os.environ["KESTREL_LIB"] = library
import kestrel  # noqa: E402

expected = [ctypes.c_float(float(v)).value for v in expected.split(",")]  # the C side's float32s
with kestrel.Predictor(checkpoint) as p:
    assert p.classes == classes.split(","), p.classes
    assert p.model == "cifar10_200k", p.model
    assert p.input_shape == (32, 32, 3), p.input_shape
    got = p.probabilities(image)
    assert got == expected, (got, expected)  # the same floats, printed with full precision
    top = p.predict(image, top_k=2)
    best = max(range(len(expected)), key=lambda i: expected[i])
    assert len(top) == 2 and top[0].index == best and top[0].name == p.classes[best], top
    assert top[0].probability >= top[1].probability, top
    try:
        p.probabilities(image + ".missing.png")
        raise AssertionError("a missing image was accepted")
    except kestrel.KestrelError as e:
        assert "missing.png" in str(e), str(e)
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
try:
    kestrel.Predictor(checkpoint + ".missing")
    raise AssertionError("a missing checkpoint was accepted")
except kestrel.KestrelError as e:
    assert ".missing" in str(e), str(e)
print("python predictor: ok")
