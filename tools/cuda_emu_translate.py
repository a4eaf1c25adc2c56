#!/usr/bin/env python3
"""Rewrites a .cu file into C++ that the CPU kernel emulator (tests/emu) runs.

Two rewrites, nothing else changes, so the emulator runs the shipped kernels:
  kernel<T, V><<<grid, block, smem, stream>>>(args)
      -> ::kestrel::emu::launch(kernel<T, V>, "kernel<T, V>", grid, block, smem, stream)(args)
  extern __shared__ float smem[];
      -> float* smem = reinterpret_cast<float*>(::kestrel::emu::dynamic_shared());

usage: cuda_emu_translate.py IN.cu OUT.cpp
"""
import re
import sys

IDENT = re.compile(r"[A-Za-z0-9_:]")
EXTERN_SHARED = re.compile(r"extern\s+__shared__\s+(?:__align__\(\s*\d+\s*\)\s+)?([A-Za-z_][\w:]*)\s+(\w+)\s*\[\s*\]\s*;")


def kernel_start(text, end):
    """Index where the kernel expression ending just before `end` begins."""
    i = end
    while i > 0 and text[i - 1].isspace():
        i -= 1
    if i > 0 and text[i - 1] == ">":  # template arguments: match the angle brackets
        depth = 0
        while i > 0:
            i -= 1
            c = text[i]
            if c == ">":
                depth += 1
            elif c == "<":
                depth -= 1
                if depth == 0:
                    break
        if depth != 0:
            raise ValueError("unbalanced template arguments before <<<")
    while i > 0 and IDENT.match(text[i - 1]):
        i -= 1
    return i


def split_config(cfg):
    """Splits the launch configuration at top-level commas."""
    parts, depth, cur = [], 0, ""
    for c in cfg:
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if c == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += c
    parts.append(cur.strip())
    return parts


def translate(text):
    out = text
    while True:
        start = out.find("<<<")
        if start < 0:
            break
        stop = out.find(">>>", start)
        if stop < 0:
            raise ValueError("<<< without >>>")
        k0 = kernel_start(out, start)
        kernel = out[k0:start].strip()
        if not kernel:
            raise ValueError("no kernel name before <<<")
        cfg = split_config(out[start + 3:stop])
        name = " ".join(kernel.split()).replace('"', '\\"')
        call = "::kestrel::emu::launch(%s, \"%s\", %s)" % (kernel, name, ", ".join(cfg))
        call += "\n" * (out[k0:stop + 3].count("\n") - call.count("\n"))  # keep line numbers
        out = out[:k0] + call + out[stop + 3:]
    return EXTERN_SHARED.sub(
        lambda m: "%s* %s = reinterpret_cast<%s*>(::kestrel::emu::dynamic_shared());" % (m.group(1), m.group(2), m.group(1)),
        out)


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: cuda_emu_translate.py IN.cu OUT.cpp")
    src, dst = sys.argv[1], sys.argv[2]
    with open(src) as f:
        text = f.read()
    try:
        result = translate(text)
    except ValueError as e:
        sys.exit("cuda_emu_translate: %s: %s" % (src, e))
    with open(dst, "w") as f:
        f.write('#line 1 "%s"\n' % src)
        f.write(result)


if __name__ == "__main__":
    main()
