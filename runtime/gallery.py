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
           "REBUILD_HINT", "plan_enrollment"]

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
    replaced: list[str] = field(default_factory=list)  # people whose earlier rows were replaced
    modalities: dict[str, int] = field(default_factory=dict)  # embedded images per modality
    sources: dict[str, int] = field(default_factory=dict)     # where each modality came from: folder/flag/guess
    warnings: list[str] = field(default_factory=list)

    @property
    def skipped_count(self) -> int:
        return len(self.skipped)

    def modality_line(self) -> str:
        counts = ", ".join(f"{n} {m}" for m, n in sorted(self.modalities.items()))
        said = {"folder": "from visible/ or infrared/ folders", "flag": "from --enroll-modality",
                "guess": "guessed from colour"}
        origin = ", ".join(f"{n} {said.get(k, k)}" for k, n in sorted(self.sources.items()))
        return f"modality: {counts or 'none'} ({origin})" if origin else f"modality: {counts or 'none'}"

    def __str__(self) -> str:
        extra = f", skipped {self.skipped_count} unreadable" if self.skipped else ""
        if self.replaced:
            extra += f", replacing the earlier rows of {len(self.replaced)} already enrolled"
        return f"enrolled {self.images} images of {self.people} people{extra}; {self.modality_line()}"


def plan_enrollment(root: str | Path) -> tuple[list[tuple[str, list[tuple[Path, str | None]]]], list[str]]:
    """What enrolling ``root`` would read, checked without a model: ``([(person, [(image, modality the
    folder states or None)])], warnings)``.  Raises :class:`GalleryError` for a missing folder, one
    without person sub-folders, one that looks like a single person's folder, or one without images."""
    from .modality import folder_modality

    root = Path(root)
    if not root.is_dir():
        raise GalleryError(f"enrollment folder not found: {root}")
    person_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not person_dirs:
        loose = sum(1 for f in root.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
        raise GalleryError(f"{root} has no person folders: enrolment reads {root}/<person>/*.jpg, one folder "
                           f"per person" + (f" ({loose} images lie directly in {root})" if loose else ""))
    if all(folder_modality(p.name) for p in person_dirs):
        raise GalleryError(f"{root} holds only modality folders ({', '.join(p.name + '/' for p in person_dirs)}), "
                           f"so it looks like one person's folder: give the folder above it "
                           f"(PEOPLE/<person>/[visible/|infrared/]*.jpg)")
    plans, warnings = [], []
    for person_dir in person_dirs:
        items: list[tuple[Path, str | None]] = [(f, None) for f in sorted(person_dir.iterdir())
                                               if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS]
        for sub in sorted(p for p in person_dir.iterdir() if p.is_dir()):
            said = folder_modality(sub.name)
            if said is None:
                warnings.append(f"{sub} is not a visible/ or infrared/ folder: its images are not enrolled")
                continue
            items += [(f, said) for f in sorted(sub.iterdir()) if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS]
        plans.append((person_dir.name, items))
    if not any(items for _, items in plans):
        raise GalleryError(f"no images ({'/'.join(IMAGE_EXTENSIONS)}) in the person folders of {root}")
    return plans, warnings


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
    def enroll_folder(self, root: str | Path, embedder, modality: str = "visible", batch_size: int = 32,
                      replace: bool = True, log_warnings: bool = True) -> EnrollReport:
        """Embed ``root/<person>/*.jpg`` (also .jpeg/.png/.bmp) and add them under the folder names.

        A person folder may hold ``visible/`` and ``infrared/`` sub-folders (also ``rgb/``, ``ir/``,
        ``thermal/``, ...): their images have that modality, whatever ``modality`` says.  Images lying
        directly in a person folder get ``modality`` ('visible' or 'infrared'); with 'auto' their
        modality is guessed per image from its colour (:func:`modality.crop_modality`), a last resort
        that the report counts and warns about, since dull daylight crops look colourless.  With
        'auto', images in a modality folder are also guessed, and a guess that contradicts the folder
        is reported (the folder wins).

        ``replace`` (default): a person already in the gallery gets the new rows *instead of* the old
        ones, so enrolling the same folder twice leaves the gallery as after once; ``replace=False``
        adds to them.  A folder without person sub-folders, or without any image, is a
        :class:`GalleryError`.  Unreadable images are skipped and listed in the report.  Warnings are
        in ``report.warnings``, and logged unless ``log_warnings=False`` (a CLI that prints them itself).
        """
        from .modality import crop_modality, normalize_setting

        setting = normalize_setting(modality)
        model_hash = embedder.info.checkpoint_sha256
        if self.model_hash and model_hash != self.model_hash:
            raise ModelMismatchError(f"this gallery holds embeddings of model {_short(self.model_hash)}; "
                                     f"cannot add ones from model {_short(model_hash)}")
        if self.embedding_dim is not None and self.embedding_dim != embedder.contract.embedding_dim:
            raise GalleryError(f"gallery dimension {self.embedding_dim} != model dimension {embedder.contract.embedding_dim}")
        plans, warnings = plan_enrollment(root)

        report = EnrollReport(warnings=list(warnings))
        self.model_hash = model_hash
        self.embedding_dim = embedder.contract.embedding_dim
        self.precision = embedder.info.precision
        guessed: dict[str, int] = {}
        contradicted: dict[str, list[int]] = {}   # folder modality -> [contradicting guesses, images]
        for person, items in plans:
            rows, row_mods = [], []
            for start in range(0, len(items), batch_size):
                crops, mods = [], []
                for f, said in items[start:start + batch_size]:
                    img = cv2.imread(str(f), cv2.IMREAD_COLOR)
                    if img is None or img.size == 0:
                        report.skipped.append(str(f))
                        continue
                    guess = crop_modality(img) if setting == "auto" else None
                    if said is not None:
                        mod, source = said, "folder"
                        if guess is not None:
                            tally = contradicted.setdefault(said, [0, 0])
                            tally[0] += guess != said
                            tally[1] += 1
                    elif setting != "auto":
                        mod, source = setting, "flag"
                    else:
                        mod, source = guess, "guess"
                        guessed[mod] = guessed.get(mod, 0) + 1
                    report.sources[source] = report.sources.get(source, 0) + 1
                    crops.append(img)
                    mods.append(mod)
                if crops:
                    emb = embedder.embed(crops, mods)
                    keep = np.linalg.norm(emb, axis=1) > 1e-6  # empty crops give zero rows
                    rows += list(emb[keep])
                    row_mods += [m for m, k in zip(mods, keep) if k]
            if not rows:
                if items:
                    report.warnings.append(f"no readable image of {person}: nothing enrolled for them")
                continue
            if replace and person in self:
                self.remove(person)
                report.replaced.append(person)
            for mod in sorted(set(row_mods)):
                n = self.add(person, np.stack([r for r, m in zip(rows, row_mods) if m == mod]), mod)
                report.modalities[mod] = report.modalities.get(mod, 0) + n
                report.images += n
            report.people += 1
        if guessed:
            report.warnings.append(
                f"the modality of {sum(guessed.values())} images was guessed from their colour "
                f"({', '.join(f'{n} {m}' for m, n in sorted(guessed.items()))}): dull daylight crops can look "
                f"infrared; put them in <person>/visible/ and <person>/infrared/ folders, or pass "
                f"--enroll-modality visible|infrared")
        for said, (bad, total) in sorted(contradicted.items()):
            if bad:
                report.warnings.append(f"{bad} of {total} images in {said}/ folders look "
                                       f"{'visible' if said != 'visible' else 'infrared'} by colour; "
                                       f"kept as {said}, as their folder says")
        if report.skipped:
            report.warnings.append(f"skipped {report.skipped_count} unreadable images under {root}")
        for line in report.warnings if log_warnings else ():
            log.warning("%s", line)
        return report

    # -- how well the model separates the enrolled people -------------------------------------------
    def closest_pairs(self, top: int = 3, above: float | None = None) -> tuple[list[tuple[str, str, float]], int]:
        """The ``top`` most similar pairs of people by the cosine of their mean embeddings, most similar
        first, and how many pairs score ``>= above`` (0 when ``above`` is None)."""
        names = self.persons
        if len(names) < 2:
            return [], 0
        cents = np.stack([np.mean(self._rows[n], axis=0) for n in names]).astype(np.float32)
        cents /= np.maximum(np.linalg.norm(cents, axis=1, keepdims=True), 1e-12)
        best: list[tuple[float, int, int]] = []
        count = 0
        for start in range(0, len(names), 1024):  # blocks: a gallery of many thousand people stays small in memory
            block = cents[start:start + 1024] @ cents.T
            rows, cols = np.nonzero(np.arange(len(names))[None, :] > (start + np.arange(len(block)))[:, None])
            values = block[rows, cols]
            if above is not None:
                count += int((values >= above).sum())
            pick = np.argsort(-values, kind="stable")[:top]
            best += [(float(values[i]), start + int(rows[i]), int(cols[i])) for i in pick]
        best.sort(key=lambda t: -t[0])
        return [(names[i], names[j], v) for v, i, j in best[:top]], count

    def separation_warning(self, threshold: float, top: int = 3) -> str | None:
        """A one-line warning when some people's mean embeddings are as close as the match threshold
        (the model cannot tell them apart: a query of one matches the other), naming the closest pairs."""
        pairs, count = self.closest_pairs(top, above=threshold)
        if not pairs or pairs[0][2] < threshold:
            return None
        total = len(self) * (len(self) - 1) // 2
        named = ", ".join(f"{a}/{b} {v:.3f}" for a, b, v in pairs)
        return (f"the model can hardly tell the gallery's people apart: {count} of {total} pairs of people have "
                f"mean-embedding cosines at or above the match threshold {threshold:.2f} (closest: {named}); "
                f"their matches are unreliable (a better-trained model, or more distinct crops, separates them)")

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
