"""Kestrel's predictor in Python, through libkestrel.so (tools/capi/kestrel.h).

No PyTorch is needed; numpy is optional (for arrays of pixels).

    import sys; sys.path.insert(0, "tools/python")
    import kestrel
    p = kestrel.Predictor("runs/fmnist/best.safetensors")      # loads once
    for c in p.predict("boot.png", top_k=3):                   # a path, or uint8 pixels [H, W(, C)]
        print(f"{c.name:12} {c.probability:.3f}")
    probs = p.probabilities(batch)                             # numpy uint8 [N, H, W, C] -> [N, classes]

The library is found through $KESTREL_LIB, else build/tools/libkestrel.so
beside this checkout, else the loader's search path. Run as a script it
prints the top classes of each image: python3 tools/python/kestrel.py CKPT IMAGE...
"""
import ctypes
import os
from collections import namedtuple

Prediction = namedtuple("Prediction", "index name probability")


class KestrelError(RuntimeError):
    """A failure reported by the library, with its one-line reason."""


def _library_path():
    if os.environ.get("KESTREL_LIB"):
        return os.environ["KESTREL_LIB"]
    here = os.path.dirname(os.path.abspath(__file__))
    built = os.path.join(here, "..", "..", "build", "tools", "libkestrel.so")
    return built if os.path.exists(built) else "libkestrel.so"


def _load():
    lib = ctypes.CDLL(_library_path())
    c_float_p, c_int_p = ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_int)
    signatures = {
        "kestrel_last_error": (ctypes.c_char_p, []),
        "kestrel_predictor_open": (ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p]),
        "kestrel_predictor_close": (None, [ctypes.c_void_p]),
        "kestrel_predictor_model": (ctypes.c_char_p, [ctypes.c_void_p]),
        "kestrel_predictor_num_classes": (ctypes.c_int, [ctypes.c_void_p]),
        "kestrel_predictor_class_name": (ctypes.c_char_p, [ctypes.c_void_p, ctypes.c_int]),
        "kestrel_predictor_input_shape": (None, [ctypes.c_void_p, c_int_p, c_int_p, c_int_p]),
        "kestrel_predictor_probabilities_u8": (
            ctypes.c_int,
            [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, c_float_p]),
        "kestrel_predictor_probabilities_file": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p, c_float_p]),
    }
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


_lib = None


def _api():
    global _lib
    if _lib is None:
        _lib = _load()
    return _lib


def _check(rc):
    if rc != 0:
        raise KestrelError(_api().kestrel_last_error().decode())


class Predictor:
    """A checkpoint loaded once; device "cpu", "cuda", "cuda:N" or "auto"."""

    def __init__(self, checkpoint, device="cpu"):
        api = _api()
        self._handle = api.kestrel_predictor_open(os.fsencode(checkpoint), device.encode())
        if not self._handle:
            raise KestrelError(api.kestrel_last_error().decode())
        self.model = api.kestrel_predictor_model(self._handle).decode()
        count = api.kestrel_predictor_num_classes(self._handle)
        self.classes = [api.kestrel_predictor_class_name(self._handle, i).decode() for i in range(count)]
        h, w, c = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        api.kestrel_predictor_input_shape(self._handle, ctypes.byref(h), ctypes.byref(w), ctypes.byref(c))
        self.input_shape = (h.value, w.value, c.value)  # what images are resized to, and channels

    def close(self):
        if getattr(self, "_handle", None):
            _api().kestrel_predictor_close(self._handle)
            self._handle = None

    def __del__(self):
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def probabilities(self, images):
        """Softmax probabilities: a path gives [classes] (a list); uint8 pixels
        [H, W], [H, W, C] or [N, H, W, C] (numpy) give [classes] or [N, classes]."""
        n = len(self.classes)
        if isinstance(images, (str, bytes, os.PathLike)):
            out = (ctypes.c_float * n)()
            _check(_api().kestrel_predictor_probabilities_file(self._handle, os.fsencode(images), out))
            return list(out)
        import numpy as np
        pixels = np.ascontiguousarray(images, dtype=np.uint8)
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        single = pixels.ndim == 3
        if single:
            pixels = pixels[None]
        if pixels.ndim != 4:
            raise ValueError(f"images must be [H, W], [H, W, C] or [N, H, W, C] uint8, got shape {images.shape}")
        out = np.empty((pixels.shape[0], n), dtype=np.float32)
        _check(_api().kestrel_predictor_probabilities_u8(
            self._handle, pixels.ctypes.data, pixels.shape[0], pixels.shape[1], pixels.shape[2], pixels.shape[3],
            out.ctypes.data_as(ctypes.POINTER(ctypes.c_float))))
        return out[0] if single else out

    def predict(self, image, top_k=5):
        """The top_k most probable classes of one image, most probable first."""
        probs = [float(p) for p in self.probabilities(image)]
        order = sorted(range(len(probs)), key=lambda i: (-probs[i], i))[:top_k]
        return [Prediction(i, self.classes[i], probs[i]) for i in order]


def main(argv):
    if len(argv) < 3:
        print("usage: kestrel.py CHECKPOINT IMAGE... (top 5 classes of each image)")
        return 2
    try:
        with Predictor(argv[1]) as p:
            for path in argv[2:]:
                print(path)
                for rank, c in enumerate(p.predict(path), 1):
                    print(f"  {rank}  {c.name:16} {100 * c.probability:6.2f}%")
    except KestrelError as e:
        print(f"kestrel: error: {e}")
        return 1
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main(sys.argv))
