"""Write the small gallery fixtures the C++ tests read, with the Python runtime's own writer.

    .venv/bin/python runtime/native/tests/data/make_fixtures.py

gallery.npz: 3 people, 4-d rows, model hash "cafe" * 16 (np.savez, stored members);
gallery_compressed.npz: the same content through np.savez_compressed (deflated members).
"""
from pathlib import Path

import numpy as np

from admpff.runtime import atomic
from admpff.runtime.gallery import Gallery

HERE = Path(__file__).resolve().parent


def build() -> Gallery:
    g = Gallery(embedding_dim=4, model_hash="cafe" * 16, precision="fp32")
    g.add("alice", np.array([[1, 0, 0, 0], [0.8, 0.6, 0, 0]], np.float32), "visible")
    g.add("bob", np.array([[0, 1, 0, 0]], np.float32), "infrared")
    g.add("carol", np.array([[0, 0, 3, 4]], np.float32))  # renormalised to (0, 0, 0.6, 0.8)
    return g


if __name__ == "__main__":
    g = build()
    g.save(HERE / "gallery.npz", keep_backup=False)
    with np.load(HERE / "gallery.npz") as data:
        arrays = {k: data[k] for k in data.files}
    atomic.write_npz(HERE / "gallery_compressed.npz", arrays, compressed=True)
