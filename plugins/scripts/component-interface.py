#!/usr/bin/env python3
"""Lists the imports and exports of WebAssembly components (the top-level ones, by name).

    python3 scripts/component-interface.py target/wasm32-wasip2/release/*.wasm

Reads the binary format directly (no wasm-tools needed): a component's import and export names are
plain strings such as "wasi:cli/stderr@0.2.6" or "mediary:plugin/kv@0.1.0".
"""

import sys

COMPONENT_IMPORT = 10
COMPONENT_EXPORT = 11


class Reader:
    def __init__(self, data, pos=0, end=None):
        self.data, self.pos = data, pos
        self.end = len(data) if end is None else end

    def byte(self):
        b = self.data[self.pos]
        self.pos += 1
        return b

    def u32(self):
        result = shift = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return result

    def name(self):
        n = self.u32()
        s = self.data[self.pos:self.pos + n].decode("utf-8")
        self.pos += n
        return s

    def extern_name(self):
        kind = self.byte()
        if kind not in (0x00, 0x01):
            raise ValueError(f"unknown name encoding {kind:#x}")
        return self.name()

    def extern_desc(self):
        sort = self.byte()
        if sort == 0x00:  # core module: 0x11 typeidx
            self.byte()
            self.u32()
            return "core-module"
        if sort in (0x02, 0x03):  # value or type bound: 0x00 idx | 0x01 (valtype / sub resource)
            bound = self.byte()
            if bound == 0x00 or sort == 0x02:
                self.u32()
            return "value" if sort == 0x02 else "type"
        self.u32()
        return {0x01: "func", 0x04: "component", 0x05: "instance"}.get(sort, f"sort {sort:#x}")

    def sort(self):
        sort = self.byte()
        if sort == 0x00:  # a core sort follows
            self.byte()
            return "core"
        return {0x01: "func", 0x02: "value", 0x03: "type", 0x04: "component",
                0x05: "instance"}.get(sort, f"sort {sort:#x}")


def interface(data):
    """The (kind, name) imports and exports of the component in `data`."""
    if data[:4] != b"\0asm" or data[4:8] != b"\x0d\x00\x01\x00":
        raise ValueError("not a WebAssembly component")
    imports, exports = [], []
    r = Reader(data, 8)
    while r.pos < len(data):
        section, size = r.byte(), r.u32()
        body = Reader(data, r.pos, r.pos + size)
        if section == COMPONENT_IMPORT:
            for _ in range(body.u32()):
                name = body.extern_name()
                imports.append((body.extern_desc(), name))
        elif section == COMPONENT_EXPORT:
            for _ in range(body.u32()):
                name = body.extern_name()
                kind = body.sort()
                body.u32()  # index
                if body.byte() == 0x01:  # an explicit type ascription
                    body.extern_desc()
                exports.append((kind, name))
        r.pos += size
    return imports, exports


def main(paths):
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        imports, exports = interface(data)
        print(f"{path} ({len(data)} bytes)")
        for kind, name in imports:
            if kind == "instance":
                print(f"  import {name}")
        for kind, name in exports:
            if kind == "instance":
                print(f"  export {name}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
