"""The gallery of known people: several embeddings per person, tied to the model that made them.

Embeddings from two different models (or two checkpoints of one model) live in unrelated spaces, so a
gallery records the ``checkpoint_sha256`` of the model that built it and :meth:`Gallery.load` refuses
to pair it with another model.  The file is a single ``.npz`` (arrays plus a JSON header stored as a
byte array, read with ``allow_pickle=False``), written atomically so a crash or full disk during
``save`` leaves the previous gallery intact; the previous file is also kept as ``<name>.bak``.
"""
from __future__ import annotations

import json
import logging
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
import cv2
import numpy as np

from . import atomic
from .contract import MODALITY_CODES, MODALITY_NAMES, package_version

log = logging.getLogger(__name__)

__all__ = ["Gallery", "GalleryError", "ModelMismatchError", "EnrollReport", "IMAGE_EXTENSIONS",
           "REBUILD_HINT"]

FORMAT = "admpff-gallery"
FORMAT_VERSION = 1
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
#: how a user rebuilds a gallery for the current model (shown when a gallery is refused)
REBUILD_HINT = ("rebuild it by enrolling the person folders again with the current model "
                "(admpff-reid --model MODEL --gallery NEW.npz --enroll PEOPLE_DIR)")


class GalleryError(RuntimeError):
    """A gallery file that cannot be used: missing, corrupt/truncated, or inconsistent."""


class ModelMismatchError(GalleryError):
    """The gallery was built with a different model than the one loaded."""


@dataclass
class EnrollReport:
    """What :meth:`Gallery.enroll_folder` did."""

    people: int = 0
    images: int = 0                                 # embedded images
    skipped: list[str] = field(default_factory=list)  # unreadable image paths

    @property
    def skipped_count(self) -> int:
        return len(self.skipped)

    def __str__(self) -> str:
        extra = f", skipped {self.skipped_count} unreadable" if self.skipped else ""
        return f"enrolled {self.images} images of {self.people} people{extra}"


def _short(h: str | None) -> str:
    return (h or "unknown")[:12]


class Gallery:
    """Known people and their embeddings (rows are L2-normalised float32)."""

    def __init__(self, embedding_dim: int | None = None, model_hash: str | None = None,
                 precision: str | None = None):
        self.embedding_dim = embedding_dim
        self.model_hash = model_hash
        self.precision = precision
        self._rows: dict[str, list[np.ndarray]] = {}     # person -> list of [dim] rows
        self._mods: dict[str, list[int]] = {}            # person -> modality code per row (-1 unknown)
        self.version = 0  # bumped on every change so matchers can rebuild their index lazily
        self.header: dict = {}

    @classmethod
    def for_embedder(cls, embedder) -> "Gallery":
        """An empty gallery bound to ``embedder``'s model (hash, dimension, precision)."""
        return cls(embedding_dim=embedder.contract.embedding_dim, model_hash=embedder.info.checkpoint_sha256,
                   precision=embedder.info.precision)

    # -- content -----------------------------------------------------------------------------------
    @property
    def persons(self) -> list[str]:
        return list(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, person: str) -> bool:
        return person in self._rows

    @property
    def num_embeddings(self) -> int:
        return sum(len(v) for v in self._rows.values())

    def embeddings_of(self, person: str) -> np.ndarray:
        rows = self._rows.get(person)
        if not rows:
            return np.zeros((0, self.embedding_dim or 0), np.float32)
        return np.stack(rows)

    def add(self, person: str, embeddings: np.ndarray, modality: str | int | None = None) -> int:
        """Add one or more embeddings of ``person``; returns how many rows were added.

        Rows are renormalised to unit length; zero rows (embeddings of empty crops) are dropped.
        """
        person = str(person)
        if not person:
            raise ValueError("person name must not be empty")
        emb = np.asarray(embeddings, np.float32)
        if emb.ndim == 1:
            emb = emb[None]
        if emb.ndim != 2:
            raise ValueError(f"embeddings must be [n, dim], got shape {emb.shape}")
        if self.embedding_dim is None:
            self.embedding_dim = int(emb.shape[1])
        elif emb.shape[1] != self.embedding_dim:
            raise ValueError(f"embeddings have dimension {emb.shape[1]}, the gallery holds {self.embedding_dim}")
        if not np.all(np.isfinite(emb)):
            raise ValueError(f"embeddings of {person!r} contain NaN or inf")
        norms = np.linalg.norm(emb, axis=1)
        emb = emb[norms > 1e-6] / norms[norms > 1e-6, None]
        if len(emb) == 0:
            return 0
        code = -1 if modality is None else (MODALITY_CODES[modality] if isinstance(modality, str) else int(modality))
        self._rows.setdefault(person, []).extend(np.ascontiguousarray(emb, np.float32))
        self._mods.setdefault(person, []).extend([code] * len(emb))
        self.version += 1
        return len(emb)

    def remove(self, person: str) -> bool:
        found = self._rows.pop(person, None) is not None
        self._mods.pop(person, None)
        if found:
            self.version += 1
        return found

    def matrix(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """All rows grouped by person: ``(embeddings [M, dim] float32, owner [M] int32, names)``,
        ``names[owner[i]]`` being row i's person; rows of one person are contiguous."""
        names = self.persons
        dim = self.embedding_dim or 0
        if not names:
            return np.zeros((0, dim), np.float32), np.zeros((0,), np.int32), []
        emb = np.stack([row for name in names for row in self._rows[name]]).astype(np.float32)
        owner = np.concatenate([np.full(len(self._rows[n]), i, np.int32) for i, n in enumerate(names)])
        return emb, owner, names

    def modalities(self) -> np.ndarray:
        """Modality code per row of :meth:`matrix` (-1 where unknown)."""
        return np.asarray([c for name in self.persons for c in self._mods[name]], np.int8)

    # -- enrollment --------------------------------------------------------------------------------
    def enroll_folder(self, root: str | Path, embedder, modality: str = "visible",
                      batch_size: int = 32) -> EnrollReport:
        """Embed ``root/<person>/*.jpg`` (also .jpeg/.png/.bmp) and add them under the folder names.

        ``modality`` is 'visible', 'infrared' or 'auto' (decided per image by its chroma).
        Unreadable images are skipped and listed in the report.
        """
        root = Path(root)
        if not root.is_dir():
            raise GalleryError(f"enrollment folder not found: {root}")
        model_hash = embedder.info.checkpoint_sha256
        if self.model_hash and model_hash != self.model_hash:
            raise ModelMismatchError(f"this gallery holds embeddings of model {_short(self.model_hash)}; "
                                     f"cannot add ones from model {_short(model_hash)}")
        if self.embedding_dim is not None and self.embedding_dim != embedder.contract.embedding_dim:
            raise GalleryError(f"gallery dimension {self.embedding_dim} != model dimension {embedder.contract.embedding_dim}")
        self.model_hash = model_hash
        self.embedding_dim = embedder.contract.embedding_dim
        self.precision = embedder.info.precision
        from .modality import frame_modality, normalize_setting

        setting = normalize_setting(modality)
        report = EnrollReport()
        for person_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            files = sorted(f for f in person_dir.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
            added = 0
            for start in range(0, len(files), batch_size):
                crops, mods = [], []
                for f in files[start:start + batch_size]:
                    img = cv2.imread(str(f), cv2.IMREAD_COLOR)
                    if img is None or img.size == 0:
                        report.skipped.append(str(f))
                        continue
                    crops.append(img)
                    mods.append(frame_modality(img) if setting == "auto" else setting)
                if not crops:
                    continue
                emb = embedder.embed(crops, mods)
                for row, mod in zip(emb, mods):
                    added += self.add(person_dir.name, row, mod)
            if added:
                report.people += 1
                report.images += added
        if report.skipped:
            log.warning("skipped %d unreadable images under %s", report.skipped_count, root)
        return report

    # -- persistence -------------------------------------------------------------------------------
    def _header(self) -> dict:
        names = self.persons
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "checkpoint_sha256": self.model_hash or "",
            "embedding_dim": self.embedding_dim,
            "precision": self.precision or "unknown",
            "admpff_version": package_version(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "persons": names,
            "counts": [len(self._rows[n]) for n in names],
            "modality_names": {str(k): v for k, v in MODALITY_NAMES.items()},
        }

    def save(self, path: str | Path, keep_backup: bool = True) -> Path:
        """Write the gallery atomically; the previous file (if any) is kept as ``<path>.bak``."""
        emb, owner, _ = self.matrix()
        header = self._header()
        arrays = {
            "header": np.frombuffer(json.dumps(header, sort_keys=True).encode("utf-8"), np.uint8),
            "embeddings": emb,
            "owner": owner,
            "modality": self.modalities(),
        }
        self.header = header
        return atomic.write_npz(path, arrays, keep_backup=keep_backup)

    @classmethod
    def load(cls, path: str | Path, expected_model_hash: str | None = None,
             expected_dim: int | None = None) -> "Gallery":
        """Read a gallery; refuse it if it was built with another model than ``expected_model_hash``."""
        path = Path(path)
        if not path.is_file():
            raise GalleryError(f"gallery file not found: {path}")
        bak = atomic.backup_path(path)
        recover = f"; the previous version is at {bak}" if bak.is_file() else ""
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in ("header", "embeddings", "owner", "modality")}
        except KeyError as exc:
            raise GalleryError(f"gallery file {path} lacks {exc} (not an admpff gallery?){recover}") from None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise GalleryError(f"gallery file {path} is corrupt or truncated "
                               f"({type(exc).__name__}: {str(exc)[:80]}){recover}") from None
        try:
            header = json.loads(arrays["header"].tobytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise GalleryError(f"gallery file {path} has an unreadable header ({exc}){recover}") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise GalleryError(f"{path} is not an admpff gallery file")
        if int(header.get("format_version", 0)) > FORMAT_VERSION:
            raise GalleryError(f"gallery {path} has format version {header.get('format_version')}, "
                               f"this admpff reads up to {FORMAT_VERSION}: upgrade admpff")

        built_with = header.get("checkpoint_sha256") or ""
        if expected_model_hash is not None and built_with != expected_model_hash:
            raise ModelMismatchError(
                f"gallery {path} was built with another model (checkpoint {_short(built_with)}, "
                f"admpff {header.get('admpff_version', '?')}) than the one loaded "
                f"(checkpoint {_short(expected_model_hash)}); embeddings of different models are not "
                f"comparable: {REBUILD_HINT}")

        emb, owner, mods = arrays["embeddings"], arrays["owner"], arrays["modality"]
        names, counts = header.get("persons", []), header.get("counts", [])
        dim = header.get("embedding_dim")
        if (emb.ndim != 2 or owner.shape != (len(emb),) or mods.shape != (len(emb),)
                or len(names) != len(counts) or sum(counts) != len(emb)
                or (len(emb) and (dim != emb.shape[1] or owner.min() < 0 or owner.max() >= len(names)))):
            raise GalleryError(f"gallery file {path} is inconsistent (header and arrays disagree){recover}")
        if expected_dim is not None and dim is not None and int(dim) != int(expected_dim):
            raise ModelMismatchError(f"gallery {path} holds {dim}-d embeddings, the model emits "
                                     f"{expected_dim}-d: {REBUILD_HINT}")

        gallery = cls(embedding_dim=dim, model_hash=built_with or None, precision=header.get("precision"))
        for i, name in enumerate(names):
            sel = owner == i
            gallery._rows[name] = list(np.ascontiguousarray(emb[sel], np.float32))
            gallery._mods[name] = [int(c) for c in mods[sel]]
        gallery.header = header
        return gallery

    @classmethod
    def load_for(cls, path: str | Path, embedder) -> "Gallery":
        """Load a gallery checked against ``embedder``'s model hash and embedding dimension."""
        return cls.load(path, expected_model_hash=embedder.info.checkpoint_sha256,
                        expected_dim=embedder.contract.embedding_dim)

    def __repr__(self) -> str:
        return (f"Gallery({len(self)} people, {self.num_embeddings} embeddings, dim={self.embedding_dim}, "
                f"model={_short(self.model_hash)})")
