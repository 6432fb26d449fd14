"""PostgreSQL's binary COPY format, built with NumPy: a whole tensor becomes rows in one pass.

Each row is fixed-width here (same types, same vector length), so a NumPy structured
array with big-endian fields IS the COPY stream. pgvector's binary forms:
vector = int16 dim, int16 unused, float4[dim]; halfvec = int16 dim, int16 unused, float2[dim].
"""

from __future__ import annotations

import numpy as np

HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
TRAILER = b"\xff\xff"
SCALARS = {"int4": ">i4", "float4": ">f4"}
VECTORS = {"vector": ">f4", "halfvec": ">f2"}


def rows(fields: list[tuple[str, object]]) -> bytes:
    """Encode n rows. fields: [(kind, values)], kind in int4/float4 ([n] arrays),
    vector/halfvec ([n, dim] arrays) or text (one str, the same in every row)."""
    n = next(len(v) for kind, v in fields if kind != "text")
    dtype = [("nfields", ">i2")]
    for i, (kind, values) in enumerate(fields):
        dtype.append((f"len{i}", ">i4"))
        if kind == "text":
            dtype.append((f"val{i}", f"S{len(values.encode())}"))
        elif kind in SCALARS:
            dtype.append((f"val{i}", SCALARS[kind]))
        else:
            dtype += [(f"dim{i}", ">i2"), (f"unused{i}", ">i2"), (f"val{i}", VECTORS[kind], (values.shape[1],))]
    out = np.zeros(n, dtype=dtype)
    out["nfields"] = len(fields)
    for i, (kind, values) in enumerate(fields):
        if kind == "text":
            data = values.encode()
            out[f"len{i}"], out[f"val{i}"] = len(data), data
        elif kind in SCALARS:
            out[f"len{i}"], out[f"val{i}"] = 4, values
        else:
            dim = values.shape[1]
            out[f"len{i}"] = 4 + dim * np.dtype(VECTORS[kind]).itemsize
            out[f"dim{i}"] = dim
            out[f"val{i}"] = values
    return out.tobytes()
