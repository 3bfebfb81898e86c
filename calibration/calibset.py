"""A deterministic, modality-balanced calibration set, and its on-disk cache.

``build_calibration_set`` turns sources of real person crops into the exact tensors the exported graph
takes (float32 NCHW 0..255 through ``admpff.runtime.preprocess.crops_to_batch``, the runtime's own
preprocessing, so calibration statistics match deployment).  Never random data: a quantizer that is
handed no data invents random inputs, and the scales it derives from them are meaningless.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from admpff.runtime.atomic import atomic_open
from admpff.runtime.contract import DEFAULT_CONTRACT, INFRARED, MODALITY_NAMES, VISIBLE, InputContract
from admpff.runtime.preprocess import crops_to_batch

from .cache_key import Note, key_digest, stale_reason
from .sources import HOW_TO, MODALITY_RULE, CalibrationError, CalibrationSource, CropRef, as_sources, infer_modality

log = logging.getLogger(__name__)

CACHE_FORMAT = "admpff.calibset/1"


def _contract_header(contract: InputContract) -> dict:
    """The parts of the contract that shape the cached tensors."""
    return {"height": contract.height, "width": contract.width, "channel_order": contract.channel_order,
            "layout": contract.layout, "value_range": list(contract.value_range),
            "resize_interpolation": contract.resize_interpolation}


def request_key(sources: Sequence[CalibrationSource], num_samples: int, seed: int,
                contract: InputContract, balance: bool) -> dict:
    """Everything that decides the tensors a build gives (see ``cache_key``); stored in the cache."""
    return {"format": CACHE_FORMAT, "sources": sorted(s.fingerprint() for s in sources),
            "num_samples": int(num_samples), "seed": int(seed), "balance": bool(balance),
            "contract": _contract_header(contract), "modality_rule": MODALITY_RULE}


def request_fingerprint(sources: Sequence[CalibrationSource], num_samples: int, seed: int,
                        contract: InputContract, balance: bool) -> str:
    """Identity of a build request: same fingerprint -> the cached set is what a rebuild would give."""
    return key_digest(request_key(sources, num_samples, seed, contract, balance))


def _content_sha256(images: np.ndarray, modality: np.ndarray) -> str:
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(images).tobytes())
    digest.update(np.ascontiguousarray(modality).tobytes())
    return digest.hexdigest()


def content_sha256(calset: "CalibrationSet") -> str:
    """Identity of a calibration set's tensors (pixels and modality codes)."""
    return _content_sha256(calset.images, calset.modality)


@dataclass
class CalibrationSet:
    """Calibration tensors ready for a quantizer.

    ``images``: float32 [N, 3, H, W], values 0..255 in the contract's channel order; ``modality``: int32 [N];
    ``origins``: where each sample came from; ``skipped``: unreadable or empty crops met on the way.
    """

    images: np.ndarray
    modality: np.ndarray
    origins: list[str]
    contract: InputContract = DEFAULT_CONTRACT
    skipped: int = 0
    sources: list[str] = field(default_factory=list)
    seed: int = 0
    num_samples: int = 0          # what was asked for (len(self) may be smaller)
    fingerprint: str = ""         # request fingerprint (see ``request_fingerprint``)
    request: dict = field(default_factory=dict)  # the request key itself, to say what changed
    modality_from: dict = field(default_factory=dict)   # {"frame": 300, "colour": 12}: what labelled the crops
    contradictions: dict = field(default_factory=dict)  # {"frame": 3}: crops whose colour says otherwise

    def __post_init__(self):
        self.images = np.asarray(self.images, dtype=np.float32)
        self.modality = np.asarray(self.modality, dtype=np.int32)
        if self.images.ndim != 4 or self.images.shape[1] != 3:
            raise CalibrationError(f"calibration images must be [N,3,H,W], got {self.images.shape}")
        if len(self.modality) != len(self.images) or len(self.origins) != len(self.images):
            raise CalibrationError(f"calibration set is inconsistent: {len(self.images)} images, "
                                   f"{len(self.modality)} modality codes, {len(self.origins)} origins")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def counts(self) -> dict[str, int]:
        """Samples per modality name, e.g. {'visible': 256, 'infrared': 256}."""
        return {MODALITY_NAMES[code]: int((self.modality == code).sum()) for code in (VISIBLE, INFRARED)}

    def summary(self) -> str:
        counts = ", ".join(f"{n} {name}" for name, n in self.counts.items())
        return (f"{len(self)} calibration crops ({counts}) at {self.images.shape[2]}x{self.images.shape[3]}"
                f", {self.skipped} skipped, seed {self.seed}")

    def modality_report(self) -> str:
        """E.g. "modality from the frame (hysteresis) 300, a guess from the crop's colour 12"."""
        names = {"flag": "the --calib-modality flag or a visible:/infrared: prefix", "folder": "visible/ infrared/ folders",
                 "dataset": "the data set's cameras", "frame": "the frames (runtime rule, hysteresis)",
                 "colour": "a guess from each crop's colour (no better source)"}
        parts = [f"{names.get(k, k)}: {n}" for k, n in sorted(self.modality_from.items()) if n]
        return f"modality of the {len(self)} crops taken from " + ("; ".join(parts) if parts else "nowhere")

    def modality_warnings(self) -> list[str]:
        """One line per source kind whose crops' colour disagrees with the modality it gave them."""
        out = []
        for kind, n in sorted(self.contradictions.items()):
            if n:
                out.append(f"{n} of {self.modality_from.get(kind, n)} calibration crops labelled visible by their "
                           f"{kind} are grey, as infrared crops are; kept visible (pass --calib-modality or an "
                           f"infrared: prefix if that source is infrared)")
        return out

    # -- cache ---------------------------------------------------------------------------------------
    def header(self) -> dict:
        return {"format": CACHE_FORMAT, "contract": _contract_header(self.contract), "sources": list(self.sources),
                "seed": int(self.seed), "num_samples": int(self.num_samples), "fingerprint": self.fingerprint,
                "request": dict(self.request),
                "count": len(self), "counts": self.counts, "skipped": int(self.skipped),
                "origins": list(self.origins),
                "modality_from": dict(self.modality_from), "contradictions": dict(self.contradictions),
                "content_sha256": _content_sha256(self.images, self.modality)}

    def save(self, path: "str | os.PathLike") -> Path:
        """Write an npz atomically (temp file in the same folder, then os.replace).

        The pixels are stored as uint8 when they are whole numbers in 0..255 (always, for crops that went
        through ``crops_to_batch``): 4x smaller, and exactly the same float32 tensor comes back.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        images = self.images
        exact_u8 = images.size == 0 or (images.min() >= 0 and images.max() <= 255
                                        and np.array_equal(images, np.round(images)))
        arrays = {"header": np.array(json.dumps(self.header(), sort_keys=True)),
                  "modality": self.modality}
        if exact_u8:
            arrays["images_u8"] = images.astype(np.uint8)
        else:
            arrays["images"] = images
        with atomic_open(path) as handle:  # a file object: np.savez then adds no ".npz" of its own
            np.savez(handle, **arrays)
        return path

    @classmethod
    def load(cls, path: "str | os.PathLike", contract: InputContract = DEFAULT_CONTRACT) -> "CalibrationSet":
        """Read a cache written by ``save`` and check that it fits ``contract``."""
        path = Path(path)
        if not path.is_file():
            raise CalibrationError(f"calibration cache {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as data:
                header = json.loads(str(data["header"]))
                modality = data["modality"]
                images = data["images_u8"].astype(np.float32) if "images_u8" in data.files else data["images"]
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
            raise CalibrationError(f"{path} is not a readable admpff calibration cache ({exc}); delete it") from None
        if header.get("format") != CACHE_FORMAT:
            raise CalibrationError(f"{path} has cache format {header.get('format')!r}, expected {CACHE_FORMAT!r}; "
                                   f"delete it to rebuild")
        want = _contract_header(contract)
        have = header.get("contract", {})
        expected_shape = (3, contract.height, contract.width)
        if tuple(images.shape[1:]) != expected_shape or (have.get("height"), have.get("width")) != (
                contract.height, contract.width):
            raise CalibrationError(
                f"calibration cache {path} holds crops of {images.shape[2]}x{images.shape[3]} (HxW) but the model "
                f"takes {contract.height}x{contract.width}: it was made for another input size; delete it or "
                f"give another cache path to rebuild")
        different = sorted(k for k in want if have.get(k) != want[k])
        if different:
            raise CalibrationError(f"calibration cache {path} was made with other preprocessing "
                                   f"({', '.join(f'{k}={have.get(k)!r} not {want[k]!r}' for k in different)}); "
                                   f"delete it to rebuild")
        if _content_sha256(images.astype(np.float32), modality.astype(np.int32)) != header.get("content_sha256"):
            raise CalibrationError(f"calibration cache {path} is corrupted (content checksum mismatch); delete it")
        return cls(images=images, modality=modality, origins=list(header.get("origins", [])), contract=contract,
                   skipped=int(header.get("skipped", 0)), sources=list(header.get("sources", [])),
                   seed=int(header.get("seed", 0)), num_samples=int(header.get("num_samples", 0)),
                   fingerprint=str(header.get("fingerprint", "")), request=dict(header.get("request") or {}),
                   modality_from=dict(header.get("modality_from") or {}),
                   contradictions=dict(header.get("contradictions") or {}))


# -- selection -------------------------------------------------------------------------------------------
def balanced_quotas(available: dict[int, int], total: int) -> dict[int, int]:
    """Split ``total`` as evenly as possible over the groups, never beyond what each group has.

    A group that runs short hands its share to the others (half/half, or as close as possible).  Odd
    remainders go to the lower modality code first, so the split is deterministic.
    """
    quotas = {m: 0 for m in available}
    remaining = min(int(total), sum(available.values()))
    while remaining > 0:
        open_groups = [m for m in sorted(available) if available[m] > quotas[m]]
        if not open_groups:
            break
        share, extra = divmod(remaining, len(open_groups))
        for i, m in enumerate(open_groups):
            give = min(share + (1 if i < extra else 0), available[m] - quotas[m])
            quotas[m] += give
            remaining -= give
    return quotas


class _Group:
    """Candidates of one selection group, walked in a seeded random order."""

    def __init__(self, refs: list[CropRef], rng: np.random.Generator):
        self.refs = refs
        self.order = rng.permutation(len(refs))
        self.cursor = 0
        self.taken: list[tuple[CropRef, np.ndarray]] = []
        self.contradicted = 0
        self.contradiction_kinds: dict[str, int] = {}

    def contradicted_by(self, ref: CropRef) -> None:
        # Only the direction the colour rule can tell: a grey crop from a visible source.  A coloured
        # crop from an infrared source is normal (IR illuminator casts, false-colour thermal).
        if ref.modality != INFRARED:
            self.contradicted += 1
            self.contradiction_kinds[ref.modality_from] = self.contradiction_kinds.get(ref.modality_from, 0) + 1

    @property
    def left(self) -> int:
        return len(self.refs) - self.cursor

    def take(self, count: int, contract: InputContract) -> int:
        """Preprocess up to ``count`` more readable crops; returns how many unreadable ones were skipped."""
        skipped = 0
        while count > 0 and self.cursor < len(self.refs):
            ref = self.refs[self.order[self.cursor]]
            self.cursor += 1
            crop = ref.load()
            if crop is None or getattr(crop, "size", 0) == 0:
                skipped += 1
                log.warning("skipping unreadable calibration crop %s", ref.origin)
                continue
            try:
                # One crop at a time through the runtime's preprocessing: a bad crop is skipped, not fatal,
                # and only the selected crops are ever held as float32.
                tensor = crops_to_batch([crop], contract)[0]
            except (ValueError, TypeError) as exc:
                skipped += 1
                log.warning("skipping calibration crop %s: %s", ref.origin, exc)
                continue
            if ref.modality_from != "colour" and infer_modality(crop) != ref.modality:
                self.contradicted_by(ref)
            self.taken.append((ref, tensor))
            count -= 1
        return skipped


def _dedupe_sorted(refs: list[CropRef]) -> list[CropRef]:
    """Sort by origin (listing order must not matter) and drop repeats (a source given twice)."""
    unique: dict[str, CropRef] = {}
    for ref in sorted(refs, key=lambda r: (r.origin, r.modality)):
        unique.setdefault(ref.origin, ref)
    return list(unique.values())


def build_calibration_set(sources, num_samples: int = 512, seed: int = 0,
                          contract: InputContract = DEFAULT_CONTRACT, balance: bool = True,
                          warn_short: bool = True) -> CalibrationSet:
    """Choose ``num_samples`` crops from ``sources`` and preprocess them for the exported graph.

    ``sources``: CalibrationSource objects or ``--calib-data`` spec strings (one or a list).
    Deterministic: candidates are sorted by origin, then sampled with ``numpy.random.default_rng(seed)``.
    With ``balance`` and both modalities present, half the samples are visible and half infrared (as close
    as the data allows).  Raises CalibrationError when no usable crop is found.  ``warn_short=False``
    leaves the "fewer crops than asked" report to a caller that knows what the user asked for.
    """
    if int(num_samples) < 1:
        raise CalibrationError(f"num_samples must be >= 1, not {num_samples}")
    source_list = as_sources(sources)
    if not source_list:
        raise CalibrationError(f"no calibration data given: {HOW_TO}")
    described = [s.describe() for s in source_list]
    refs: list[CropRef] = []
    for source in source_list:
        refs.extend(source.scan())
    skipped = sum(int(getattr(s, "skipped", 0)) for s in source_list)
    refs = _dedupe_sorted(refs)

    rng = np.random.default_rng(int(seed))
    if balance:
        by_modality = {m: [r for r in refs if r.modality == m] for m in (VISIBLE, INFRARED)}
        groups = {m: _Group(by_modality[m], rng) for m in sorted(by_modality) if by_modality[m]}
    else:
        groups = {0: _Group(refs, rng)} if refs else {}

    target = min(int(num_samples), len(refs))
    wanted = balanced_quotas({m: g.left for m, g in groups.items()}, target)
    while True:
        for m in sorted(groups):
            skipped += groups[m].take(wanted[m] - len(groups[m].taken), contract)
        have = sum(len(g.taken) for g in groups.values())
        shortfall = target - have
        if shortfall <= 0 or not any(g.left for g in groups.values()):
            break
        # Unreadable crops left a group short: spread the gap over the groups that still have candidates.
        extra = balanced_quotas({m: g.left for m, g in groups.items()}, shortfall)
        wanted = {m: len(groups[m].taken) + extra[m] for m in groups}

    chosen = [item for m in sorted(groups) for item in groups[m].taken]
    if not chosen:
        where = "; ".join(described)
        raise CalibrationError(f"no calibration crops found in {where}: {HOW_TO}")
    # Interleave modalities (seeded) so that every reader batch sees both.
    order = rng.permutation(len(chosen))
    images = np.stack([chosen[i][1] for i in order]).astype(np.float32, copy=False)
    modality = np.array([chosen[i][0].modality for i in order], dtype=np.int32)
    origins = [chosen[i][0].origin for i in order]
    request = request_key(source_list, num_samples, seed, contract, balance)
    modality_from: dict[str, int] = {}
    for ref, _tensor in chosen:
        modality_from[ref.modality_from] = modality_from.get(ref.modality_from, 0) + 1
    contradictions: dict[str, int] = {}
    for group in groups.values():
        for kind, n in group.contradiction_kinds.items():
            contradictions[kind] = contradictions.get(kind, 0) + n
    calset = CalibrationSet(images=images, modality=modality, origins=origins, contract=contract, skipped=skipped,
                            sources=described, seed=int(seed), num_samples=int(num_samples),
                            fingerprint=key_digest(request), request=request, modality_from=modality_from,
                            contradictions=contradictions)
    for line in calset.modality_warnings():
        log.warning("%s", line)
    if warn_short and len(calset) < num_samples:
        log.warning("only %d calibration crops available (asked for %d)", len(calset), num_samples)
    log.info("%s", calset.summary())
    return calset


def load_or_build(cache_path: "str | os.PathLike | None", sources, num_samples: int = 512, seed: int = 0,
                  contract: InputContract = DEFAULT_CONTRACT, balance: bool = True, *, note: Note = None,
                  warn_short: bool = True) -> CalibrationSet:
    """Reuse ``cache_path`` when it was built from the same request, otherwise build and (re)write it.

    The request key covers the sources' content identities (file sizes and times, not pixels), the
    seed, the sample count, balancing, the contract's input size and preprocessing, and the rule that
    labels each crop's modality.  A cache that differs in any of them (or is unreadable, or from an
    older format) is rebuilt, and ``note`` (default: a log warning) gets one line saying why.
    """
    say = note or log.warning
    source_list = as_sources(sources)
    if cache_path is None:
        return build_calibration_set(source_list, num_samples, seed, contract, balance, warn_short=warn_short)
    cache_path = Path(cache_path)
    wanted = request_key(source_list, num_samples, seed, contract, balance)
    if cache_path.is_file():
        cached, reason = _reusable(cache_path, wanted, contract)
        if cached is not None:
            say(f"reusing calibration cache {cache_path} (same data, seed, size and preprocessing)")
            return cached
        say(f"rebuilding calibration cache {cache_path}: {reason}")
    calset = build_calibration_set(source_list, num_samples, seed, contract, balance, warn_short=warn_short)
    calset.save(cache_path)
    return calset


def _reusable(path: Path, wanted: dict, contract: InputContract) -> "tuple[CalibrationSet | None, str | None]":
    """(the cached set, None) when it answers this request, else (None, why not)."""
    try:
        with np.load(path, allow_pickle=False) as data:  # the header only: the pixels stay on disk
            header = json.loads(str(data["header"]))
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        return None, f"it is not a readable calibration cache ({exc})"
    reason = stale_reason(header.get("request"), wanted)
    if reason is not None:
        return None, reason
    try:  # same request: the content checksum and the contract checks still apply
        return CalibrationSet.load(path, contract), None
    except CalibrationError as exc:
        return None, str(exc)
