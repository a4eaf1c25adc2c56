"""Kestrel's predictor in Python, through libkestrel.so (tools/capi/kestrel.h).

No PyTorch is needed; numpy is optional (for arrays of pixels).

    import sys; sys.path.insert(0, "tools/python")
    import kestrel
    p = kestrel.Predictor("runs/fmnist/best.safetensors")      # loads once
    for c in p.predict("boot.png", top_k=3):                   # a path, or uint8 pixels [H, W(, C)]
        print(f"{c.name:12} {c.probability:.3f}")
    probs = p.probabilities(batch)                             # numpy uint8 [N, H, W, C] -> [N, classes]

Pixels are uint8 values 0-255, as decoded from an image file: a float array
is refused rather than guessed at (is it 0-1 or 0-255?). A nested list of
integers 0-255 is taken as such an array.

The library is found through $KESTREL_LIB, else build/tools/libkestrel.so
beside this checkout, else the loader's search path. Run as a script it
prints the top classes of each image, a folder standing for every image
below it (sorted, as `kestrel predict` lists it):
    python3 tools/python/kestrel.py CHECKPOINT IMAGE_OR_FOLDER... [--top-k 5] [--device cpu]
"""
import ctypes
import numbers
import os
from collections import namedtuple

Prediction = namedtuple("Prediction", "index name probability")

# data::image_extensions (data/readers.cpp): what training and `kestrel predict` take from a folder.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tga", ".ppm", ".pgm", ".pnm")

_SHAPES = "[H, W] grey, [H, W, C] or a batch [N, H, W, C] of uint8 pixels 0-255 (C: 1, 3 or 4)"


class KestrelError(RuntimeError):
    """A failure reported by the library, with its one-line reason."""


def _library_path():
    if os.environ.get("KESTREL_LIB"):
        return os.environ["KESTREL_LIB"]
    here = os.path.dirname(os.path.abspath(__file__))
    built = os.path.join(here, "..", "..", "build", "tools", "libkestrel.so")
    return built if os.path.exists(built) else "libkestrel.so"


def _load():
    path = _library_path()
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        raise KestrelError(f"cannot load {path}: {e} (build it, or set KESTREL_LIB)") from None
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
        try:
            fn = getattr(lib, name)
        except AttributeError:
            raise KestrelError(f"{path} does not export {name} (an older build? rebuild it)") from None
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


def _is_path(x):
    return isinstance(x, (str, bytes, os.PathLike))


def _is_within(path, folder):
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def list_images(path):
    """An image file as itself; a folder as every image file below it, sorted
    by path (data::list_image_files, what `kestrel predict` does with a folder)."""
    if not os.path.exists(path):
        raise KestrelError(f"image: {path}: no such file or folder")
    if not os.path.isdir(path):
        return [path]
    files = []
    for root, dirs, names in os.walk(path, followlinks=True):
        # Symlinked folders are followed, except one leading back up the tree (it would never end).
        here = os.path.realpath(root)
        dirs[:] = [d for d in dirs if not _is_within(here, os.path.realpath(os.path.join(root, d)))]
        files += [os.path.join(root, f) for f in names
                  if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(root, f))]
    if not files:
        raise KestrelError(f"image folder: {path}: no images in it ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)})")
    # Byte order, as std::sort of std::string orders them.
    return sorted(files, key=os.fsencode)


def _pixels(images):
    """(uint8 array [N, H, W, C], whether it was one image) or a ValueError/TypeError naming what is wrong."""
    is_list = isinstance(images, (list, tuple))
    if not is_list and not hasattr(images, "__array_interface__") and not hasattr(images, "__array__"):
        raise TypeError(f"images must be an image file's path or {_SHAPES}, got {type(images).__name__}")
    try:
        import numpy as np
    except ImportError:
        raise TypeError("images as pixels need numpy (or pass an image file's path)") from None
    if is_list:
        try:
            pixels = np.asarray(images)
        except ValueError:  # ragged nesting
            raise ValueError(f"images: a nested list of unequal lengths is not an image; expected {_SHAPES}") from None
        # A list has no dtype to go by: integers 0-255 are pixels, anything else is refused.
        if pixels.size and (pixels.dtype.kind not in "iu" or pixels.min() < 0 or pixels.max() > 255):
            raise ValueError(f"images: a list must hold integers 0-255, got {pixels.dtype} values: {_SHAPES}")
        pixels = pixels.astype(np.uint8)
    else:  # a numpy array, or anything numpy reads as one (a Pillow image)
        pixels = np.asarray(images)
        if pixels.dtype != np.uint8:
            raise ValueError(f"images must be uint8 pixels 0-255, got a {pixels.dtype} array: {_SHAPES} "
                             "(convert it yourself, e.g. (x * 255).round().astype(np.uint8) for floats in [0, 1])")
    shape = tuple(pixels.shape)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim not in (3, 4):
        raise ValueError(f"images of shape {shape}: expected {_SHAPES}")
    single = pixels.ndim == 3
    if single:
        pixels = pixels[None]
    if pixels.shape[3] not in (1, 3, 4):
        raise ValueError(f"images of shape {shape}: the last axis is the channels and must be 1, 3 or 4 "
                         "(a batch of grey images is [N, H, W, 1])")
    if pixels.shape[1] == 0 or pixels.shape[2] == 0:
        raise ValueError(f"images of shape {shape}: an image needs at least one row and column")
    return np.ascontiguousarray(pixels), single


class Predictor:
    """A checkpoint loaded once; device "cpu" (also None), "cuda", "cuda:N" or "auto"."""

    def __init__(self, checkpoint, device="cpu"):
        if not _is_path(checkpoint):
            raise TypeError(f"checkpoint must be a path, got {type(checkpoint).__name__}")
        if device is not None and not isinstance(device, str):
            raise TypeError(f"device must be a string such as 'cpu' or 'cuda' (or None), got {type(device).__name__}")
        api = _api()
        # None is the C API's NULL, which it reads as "cpu".
        self._handle = api.kestrel_predictor_open(os.fsencode(checkpoint), None if device is None else device.encode())
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

    @property
    def closed(self):
        return not getattr(self, "_handle", None)

    def _live_handle(self):
        # The C API would only say "a pointer argument is NULL".
        if self.closed:
            raise ValueError("predictor is closed")
        return self._handle

    def __del__(self):
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def probabilities(self, images):
        """Softmax probabilities: a path gives [classes] (a list); uint8 pixels
        [H, W], [H, W, C] or [N, H, W, C] (numpy) give [classes] or [N, classes]."""
        handle = self._live_handle()
        if _is_path(images):
            if os.path.isdir(images):
                raise KestrelError(f"image: {os.fsdecode(images)} is a folder; predict one file at a time "
                                   "(list_images(folder) gives a folder's, sorted)")
            out = (ctypes.c_float * len(self.classes))()
            _check(_api().kestrel_predictor_probabilities_file(handle, os.fsencode(images), out))
            return list(out)
        return self._probabilities_of_pixels(*_pixels(images))

    def _probabilities_of_pixels(self, pixels, single):
        import numpy as np
        handle = self._live_handle()
        out = np.empty((pixels.shape[0], len(self.classes)), dtype=np.float32)
        if pixels.shape[0]:  # the C API refuses an empty batch; its answer is the empty array
            _check(_api().kestrel_predictor_probabilities_u8(
                handle, pixels.ctypes.data, pixels.shape[0], pixels.shape[1], pixels.shape[2], pixels.shape[3],
                out.ctypes.data_as(ctypes.POINTER(ctypes.c_float))))
        return out[0] if single else out

    def predict(self, image, top_k=5):
        """The top_k (at least 1) most probable classes of one image, most probable first."""
        if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral):  # numpy's ints too
            raise TypeError(f"top_k must be an int, got {type(top_k).__name__}")
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        if _is_path(image):
            probs = self.probabilities(image)
        else:
            self._live_handle()
            pixels, single = _pixels(image)
            if not single:
                raise ValueError(f"predict takes one image, got a batch of shape {tuple(pixels.shape)}; "
                                 "use probabilities() for a batch")
            probs = self._probabilities_of_pixels(pixels, single)
        probs = [float(p) for p in probs]
        order = sorted(range(len(probs)), key=lambda i: (-probs[i], i))[:top_k]
        return [Prediction(i, self.classes[i], probs[i]) for i in order]

def main(argv):
    import argparse
    import sys

    class OneLineParser(argparse.ArgumentParser):
        def error(self, message):
            self.exit(2, f"kestrel: error: {message} (see --help)\n")

    parser = OneLineParser(prog="kestrel.py", description="Top classes of images, through libkestrel.so.")
    parser.add_argument("checkpoint", help="model checkpoint (.safetensors from kestrel train)")
    parser.add_argument("images", nargs="+", help="image files or folders (every image below a folder, sorted)")
    parser.add_argument("--top-k", "-k", type=int, default=5, help="classes to show per image (default 5)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="warn about an unreadable image and go on (default: stop, naming it)")
    parser.add_argument("--format", choices=("table", "json"), default="table",
                        help="table, or json as `kestrel predict --format json` prints it (default table)")
    a = parser.parse_args(argv[1:])
    try:
        if a.top_k < 1:
            raise ValueError(f"--top-k must be at least 1, got {a.top_k}")
        paths = [f for path in a.images for f in list_images(path)]  # all checked before the model loads
        with Predictor(a.checkpoint, a.device) as p:
            predictions = []
            for path in paths:
                try:
                    top = p.predict(path, a.top_k)
                except KestrelError as e:
                    if not a.skip_bad or not os.path.exists(path):
                        raise
                    print(f"warning: {e} (skipped)", file=sys.stderr)
                    continue
                if a.format == "json":
                    predictions.append({"image": path, "top_k": [
                        {"class_index": c.index, "class_name": c.name, "probability": c.probability} for c in top]})
                    continue
                print(path)
                for rank, c in enumerate(top, 1):
                    print(f"  {rank}  {c.name:16} {100 * c.probability:6.2f}%")
            if a.format == "json":
                import json
                print(json.dumps({"checkpoint": a.checkpoint, "model": p.model, "predictions": predictions}, indent=2))
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
    except BrokenPipeError:  # `| head`: the reader has all it wants; end quietly, as the kestrel command does
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the exit's flush does not fail again
        return 141  # what a shell reports for a process ended by SIGPIPE
    except (KestrelError, ValueError, TypeError, OSError) as e:
        print(f"kestrel: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main(sys.argv))
