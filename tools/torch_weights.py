#!/usr/bin/env python3
"""Writes a torchvision (or timm) model's weights as a Kestrel checkpoint:
the zoo's models use the same tensor names and layouts, and the metadata
records the model, its input size and normalization, and the ImageNet class
names. So `kestrel predict`, `eval`, `export` and `cam` take it as it is,
and `kestrel train --initial-checkpoint` fine-tunes from it.

    tools/torch_weights.py efficientnet_b0 effb0_imagenet.safetensors
    kestrel predict -c effb0_imagenet.safetensors photo.jpg --top-k 5
    kestrel train -m efficientnet_b0 --dataset cifar100 --image-size 224 \\
        --initial-checkpoint effb0_imagenet.safetensors --lr 0.01 --epochs 10

Needs torch and torchvision (timm for ghostnet_100), and the internet the
first time (torch caches the download). --random writes the architecture's
seeded random initialization instead, without downloading (for tests).
An existing output file is kept unless --overwrite is given.
"""
import argparse
import json
import os
import struct
import sys

# Kestrel zoo name -> (library, its model name)
SOURCES = {name: ("torchvision", name) for name in [
    "resnet18", "resnet50", "resnet152", "densenet121", "densenet201", "mobilenet_v2",
    "mobilenet_v3_small", "mobilenet_v3_large"] + [f"efficientnet_b{i}" for i in range(8)]}
SOURCES["ghostnet_100"] = ("timm", "ghostnet_100")

DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64",
          "int64": "I64", "int32": "I32", "uint8": "U8", "int8": "I8"}


def build(name, pretrained):
    library, source_name = SOURCES[name]
    if library == "timm":
        import timm
        return timm.create_model(source_name, pretrained=pretrained)
    import torchvision
    return getattr(torchvision.models, source_name)(weights="DEFAULT" if pretrained else None)


def model_info(name, model):
    """Kestrel's kestrel.model_info metadata (tools/lib/checkpoint.h, ModelInfo)."""
    library, source_name = SOURCES[name]
    if library == "timm":
        cfg = model.pretrained_cfg
        size, mean, std = cfg["input_size"][1], list(cfg["mean"]), list(cfg["std"])
        crop_fraction = float(cfg.get("crop_pct", 0.875))
        try:
            from timm.data import ImageNetInfo
            classes = [ImageNetInfo().index_to_description(i) for i in range(model.num_classes)]
        except ImportError:  # older timm: no label table
            classes = [str(i) for i in range(model.num_classes)]
    else:
        import torchvision
        weights = torchvision.models.get_model_weights(source_name).DEFAULT
        transforms = weights.transforms()  # describes the preprocessing; downloads nothing
        size, mean, std = transforms.crop_size[0], list(transforms.mean), list(transforms.std)
        crop_fraction = size / transforms.resize_size[0]  # e.g. a 224 crop of 256
        classes = list(weights.meta["categories"])
    return {"model": name, "num_classes": len(classes), "in_channels": 3, "height": size, "width": size,
            "cifar_stem": False, "width_mult": 1.0, "depth_mult": 1.0, "dataset": "imagenet",
            "classes": classes, "mean": mean, "std": std, "crop_fraction": crop_fraction}


def fail(msg, status=1):
    print(f"torch_weights.py: error: {msg}", file=sys.stderr)
    sys.exit(status)


def save_safetensors(path, state, metadata):
    """The safetensors layout: 8-byte header length, JSON header, raw data."""
    import torch
    header, blobs, offset = {"__metadata__": metadata}, [], 0
    for name, t in state.items():
        t = t.detach().cpu().contiguous()
        dtype = DTYPES.get(str(t.dtype).replace("torch.", ""))
        if dtype is None:
            fail(f"{name} has dtype {t.dtype}, which safetensors files here do not hold")
        data = t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    # Written beside the target, then renamed: a failed write leaves no half file under its name.
    part = path + ".part"
    try:
        with open(part, "wb") as f:
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            for b in blobs:
                f.write(b)
        os.replace(part, path)
    except OSError as e:
        if os.path.exists(part):
            os.remove(part)
        fail(f"cannot write {path}: {e.strerror or e}")


def check_out_path(path, overwrite):
    """Refuses a path that cannot or should not be written, before anything is downloaded."""
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        fail(f"folder {parent} does not exist (for {path})")
    if os.path.isdir(path):
        fail(f"{path} is a folder; give a file name such as {os.path.join(path, 'model.safetensors')}")
    if os.path.exists(path) and not overwrite:
        fail(f"{path} exists; pass --overwrite to replace it")


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        fail(f"{message} (see --help)", 2)


def main():
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="Kestrel zoo name: " + ", ".join(sorted(SOURCES)))
    p.add_argument("out", help="safetensors file to write")
    p.add_argument("--random", action="store_true", help="seeded random weights, no download (tests)")
    p.add_argument("--seed", type=int, default=0, help="seed for --random")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    a = p.parse_args()
    if a.model not in SOURCES:
        fail(f"no torchvision or timm weights for '{a.model}'; one of: " + ", ".join(sorted(SOURCES)))
    if a.seed < 0:
        fail(f"--seed must be 0 or more, got {a.seed}", 2)
    check_out_path(a.out, a.overwrite)
    try:
        import torch
        torch.manual_seed(a.seed)
        model = build(a.model, not a.random)
    except ImportError as e:
        fail(f"{e.name} is not installed (pip install torch torchvision timm)")
    except Exception as e:  # a download that fails: no network, a moved URL
        fail(f"could not get {a.model}'s weights: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    library, source_name = SOURCES[a.model]
    save_safetensors(a.out, model.state_dict(),
                     {"kestrel.model_info": json.dumps(model_info(a.model, model)),
                      "source": f"{library}.{source_name}", "pretrained": str(not a.random).lower()})
    print(f"{a.out}: {len(model.state_dict())} tensors of {library} {source_name}"
          f" ({'pretrained' if not a.random else 'random, seed %d' % a.seed})")


if __name__ == "__main__":
    main()
