"""Where INT8 calibration crops come from: a folder of crops, a video through the detector, a training split.

Every source yields ``CropSample(crop_bgr, modality, origin)``: a BGR uint8 crop as OpenCV reads it, the
toolkit's modality code (0 visible, 1 infrared) and a string naming where the crop came from.  The
origin is what makes selection deterministic: ``calibset`` sorts candidates by origin before sampling,
so directory listing order, file creation order or a shuffled source list never change the result.

For efficient selection every source also offers ``scan()``: a list of ``CropRef`` (origin, modality
and a ``load()`` callable) so that a large folder is not held in memory; only the crops chosen for the
calibration set are decoded a second time.

Test data is refused everywhere: calibration statistics taken on the query/gallery images would leak
the evaluation split into the quantized model and inflate the accuracy it reports.
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Sequence

import cv2
import numpy as np

from admpff.runtime.contract import INFRARED, VISIBLE

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".ts", ".wmv", ".flv",
                    ".h264", ".h265", ".mjpeg", ".mjpg")
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")

# Sub-folder names that fix the modality of everything below them (case-insensitive).
MODALITY_FOLDERS = {"visible": VISIBLE, "rgb": VISIBLE, "vis": VISIBLE,
                    "infrared": INFRARED, "ir": INFRARED, "thermal": INFRARED, "nir": INFRARED}

# Folder names of evaluation splits in the common re-ID layouts (Market/Duke/SYSU/RegDB style).
TEST_SPLIT_NAMES = {"test", "query", "gallery", "bounding_box_test", "test_set", "testing"}

# Split list files of evaluation data: RegDB's idx/test_{visible,thermal}_N.txt, SYSU-MM01's exp/test_id.txt.
_TEST_LIST_FILE = re.compile(r"^test_(visible|thermal|infrared)_\d+\.txt$|^test_id\.txt$")

# Mean per-pixel channel spread (max(B,G,R) - min(B,G,R), 0..255) below which a crop *with no other
# source of its modality* is guessed infrared: only (nearly) grey crops.  Infrared crops are stored as 3
# equal channels (spread 0.0 after JPEG, 2.0 after OpenCV's MJPG video codec); 252 HOG crops of the
# colour clip shared/data/vtest.avi measure 3.9 at the least (5th percentile 4.9, median 13.8).  The
# runtime's frame rule (Lab spread around the mean, made for whole frames with an IR illuminator's
# colour cast) labelled 64 of those 252 crops infrared, since a crop is often one colour (blue jeans,
# a grey coat): it is not used on crops.
INFRARED_CHROMA_THRESHOLD = 3.0

# Where a crop's modality came from, most trustworthy first ("colour" is the per-crop last resort).
MODALITY_FROM = ("flag", "folder", "dataset", "frame", "colour")

HOW_TO = "give --calib-data a folder of person crops, a video, or sysu:/regdb: training data"

#: Version of the rule that labels a crop's modality; part of every calibration cache key, so a cache
#: labelled by an older rule is rebuilt instead of reused.
MODALITY_RULE = "source-first/2"


class CalibrationError(ValueError):
    """Calibration data is missing, unusable, or would leak test data; the message says what to do."""


class CropSample(NamedTuple):
    crop: np.ndarray   # BGR uint8, H x W x 3
    modality: int      # contract modality code
    origin: str        # where it came from (file path, video frame and box, data set entry)


@dataclass(frozen=True)
class CropRef:
    """A candidate crop that is not necessarily decoded yet.  ``load()`` returns None when unreadable.

    ``modality_from`` says what decided ``modality`` (one of ``MODALITY_FROM``): an explicit flag, the
    folder layout, the data set's camera, the frame the crop was cut from, or the crop's own colour.
    """

    origin: str
    modality: int
    load: Callable[[], "np.ndarray | None"]
    modality_from: str = "colour"


# -- modality from pixels --------------------------------------------------------------------------------
def crop_chroma(image_bgr: np.ndarray) -> float:
    """Mean per-pixel spread between the colour channels (0 for a grey / infrared image)."""
    if image_bgr.ndim == 2 or image_bgr.shape[2] == 1:
        return 0.0
    img = image_bgr[:, :, :3]
    # A 64-pixel-wide thumbnail is plenty for a global statistic and keeps big frames cheap.
    if img.shape[1] > 64:
        scale = 64.0 / img.shape[1]
        img = cv2.resize(img, (64, max(1, int(round(img.shape[0] * scale)))), interpolation=cv2.INTER_AREA)
    wide = img.astype(np.int16)
    return float((wide.max(axis=2) - wide.min(axis=2)).mean())


def infer_modality(image_bgr: np.ndarray) -> int:
    """Last-resort guess of one crop's modality from its own pixels: infrared only when (nearly) grey.

    Used only when nothing better knows the modality (no flag, no ``visible/``/``infrared/`` folder, no
    frame, no data set camera), and to count crops whose colour contradicts their source.  A colour
    crop can be nearly one colour (a blue coat), so the bar is "no colour at all", not "little colour".
    """
    return INFRARED if crop_chroma(image_bgr) < INFRARED_CHROMA_THRESHOLD else VISIBLE


def _modality_arg(modality: "str | int") -> "int | None":
    """'auto' -> None (infer), otherwise the modality code."""
    if isinstance(modality, str):
        key = modality.lower()
        if key == "auto":
            return None
        if key in MODALITY_FOLDERS:
            return MODALITY_FOLDERS[key]
        raise CalibrationError(f"unknown modality {modality!r}: use 'auto', 'visible' or 'infrared'")
    if int(modality) in (VISIBLE, INFRARED):
        return int(modality)
    raise CalibrationError(f"unknown modality code {modality!r}: use {VISIBLE} (visible) or {INFRARED} (infrared)")


# -- test-split guard ------------------------------------------------------------------------------------
def _is_test_split_name(path: Path) -> bool:
    """A folder or list file named like an evaluation split (``query``, ``gallery``, RegDB's ``test_visible_1.txt``)."""
    name = path.name.lower()
    return name in TEST_SPLIT_NAMES or bool(_TEST_LIST_FILE.match(name))


def _test_split_reason(path: Path) -> "str | None":
    """Why ``path`` looks like evaluation data, or None."""
    if _is_test_split_name(path):
        return f"{path} is a test split ({path.name})"
    if path.is_dir():
        if (path / "exp" / "test_id.txt").exists() and not path.name.lower().startswith("train"):
            return (f"{path} is a whole SYSU-MM01 folder, which holds the test identities too; "
                    f"use sysu:{path} to take its training split only")
        if (path / "idx").is_dir() and ((path / "Thermal").is_dir() or (path / "thermal").is_dir()):
            return (f"{path} is a whole RegDB folder, which holds the test identities too; "
                    f"use regdb:{path} to take its training split only")
    return None


def refuse_test_data(path: "str | os.PathLike", what: str = "calibration data") -> None:
    """Raise CalibrationError when ``path`` is (or is the root of) an evaluation split."""
    reason = _test_split_reason(Path(path))
    if reason:
        raise CalibrationError(f"refusing {what}: {reason}. Calibrating on test data leaks into the reported "
                               f"accuracy; {HOW_TO}")


# -- sources ---------------------------------------------------------------------------------------------
class CalibrationSource:
    """Base class: subclasses implement ``scan()``, ``describe()`` and ``fingerprint()``."""

    #: crops that could not be read or were empty (counted during ``scan`` and by the selection)
    skipped: int = 0

    def scan(self) -> list[CropRef]:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Cheap identity of the content (no decoding), used to decide whether a cache still matches."""
        return self.describe()

    def __iter__(self) -> Iterator[CropSample]:
        for ref in self.scan():
            crop = ref.load()
            if crop is None or crop.size == 0:
                self.skipped += 1
                continue
            yield CropSample(crop, ref.modality, ref.origin)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


def _read_image(path: str, flags: int = cv2.IMREAD_COLOR) -> "np.ndarray | None":
    # imdecode over np.fromfile instead of imread: survives non-ASCII paths on every platform.
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return None
    if data.size == 0:
        return None
    image = cv2.imdecode(data, flags)
    if image is None or image.size == 0:
        return None
    return image


class FolderSource(CalibrationSource):
    """Person crops in a folder, searched recursively (jpg, png, bmp).

    Modality: a sub-folder named ``visible``/``rgb`` or ``infrared``/``ir``/``thermal`` fixes it for the
    files below it; otherwise ``modality`` decides ('auto' infers it per image from its chroma).  An
    explicit ``modality='visible'|'infrared'`` applies to every file.  Unreadable images are skipped and
    counted in ``skipped``.
    """

    def __init__(self, path: "str | os.PathLike", modality: "str | int" = "auto", progress: "bool | None" = None):
        self.path = Path(path).expanduser()
        if not self.path.exists():
            raise CalibrationError(f"calibration folder {self.path} does not exist; {HOW_TO}")
        if not self.path.is_dir():
            raise CalibrationError(f"{self.path} is not a folder of crops; {HOW_TO}")
        refuse_test_data(self.path)
        self.modality = _modality_arg(modality)
        self.modality_name = modality if isinstance(modality, str) else str(modality)
        self.progress = progress
        self.skipped = 0
        self._files: "list[Path] | None" = None

    def files(self) -> list[Path]:
        """Image files below the folder, sorted (the listing order of the file system never matters)."""
        if self._files is None:
            found = []
            for dirpath, dirnames, filenames in os.walk(self.path):
                rel_dir = Path(dirpath).relative_to(self.path)
                for part in rel_dir.parts:
                    if part.lower() in TEST_SPLIT_NAMES:
                        raise CalibrationError(
                            f"refusing calibration data: {Path(dirpath)} is a test split inside {self.path}. "
                            f"Calibrating on test data leaks into the reported accuracy; point at the training "
                            f"crops only")
                found.extend(Path(dirpath) / f for f in filenames if f.lower().endswith(IMAGE_EXTENSIONS))
            self._files = sorted(found)
        return self._files

    def _folder_modality(self, file: Path) -> "int | None":
        for part in reversed(file.relative_to(self.path).parts[:-1]):
            code = MODALITY_FOLDERS.get(part.lower())
            if code is not None:
                return code
        return None

    def scan(self) -> list[CropRef]:
        from tqdm import tqdm

        self.skipped = 0
        refs = []
        files = self.files()
        for file in tqdm(files, desc=f"scan {self.path.name}", unit="img", disable=self._bar_disabled(len(files))):
            origin = str(file)
            modality, decided_by = self.modality, "flag"
            if modality is None:
                modality, decided_by = self._folder_modality(file), "folder"
            if modality is None:
                # Last resort: one reduced decode to read the crop's colour (and find unreadable files early).
                image = _read_image(origin, cv2.IMREAD_REDUCED_COLOR_2)
                if image is None:
                    self.skipped += 1
                    log.warning("skipping unreadable image %s", file)
                    continue
                modality, decided_by = infer_modality(image), "colour"
            refs.append(CropRef(origin, modality, lambda p=origin: _read_image(p), decided_by))
        return refs

    def _bar_disabled(self, n: int) -> "bool | None":
        if self.progress is None:
            return True if n < 2000 else None  # None: tqdm shows it only on a terminal
        return not self.progress

    def describe(self) -> str:
        return f"folder:{self.path.resolve()} (modality={self.modality_name})"

    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.describe().encode())
        for file in self.files():
            st = file.stat()
            digest.update(f"{file.relative_to(self.path)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        return digest.hexdigest()


def _is_stream(uri: "str | int") -> bool:
    return isinstance(uri, int) or str(uri).isdigit() or str(uri).lower().startswith(STREAM_SCHEMES)


class VideoSource(CalibrationSource):
    """Person crops cut from real frames by the runtime's detector.

    ``uri``: a video file, an ``rtsp://``/``http://`` stream or a camera index.  Every ``every_n_frames``-th
    frame of the first ``max_frames`` frames read goes through the detector; boxes are clipped to the
    frame and boxes smaller than ``min_box = (height, width)`` pixels are skipped (counted in
    ``too_small``).  The frames are read once; the crops are kept for later iterations (a live camera
    would not give the same frames twice).  ``detector="auto"`` is admpff-reid's default detector
    (SSDLite where installed, else HOG), so calibration sees the crops the runtime will embed; on the
    demo's clip it also took 36.7 s of HOG out of a 300 s export.
    """

    def __init__(self, uri: "str | int | os.PathLike", detector="auto", every_n_frames: int = 5,
                 max_frames: "int | None" = 1000, modality: "str | int" = "auto",
                 min_box: "tuple[int, int]" = (64, 32), progress: "bool | None" = None):
        if isinstance(uri, os.PathLike):
            uri = os.fspath(uri)
        if isinstance(uri, str) and uri.isdigit():
            uri = int(uri)
        if not _is_stream(uri) and not Path(uri).expanduser().is_file():
            raise CalibrationError(f"calibration video {uri} does not exist; {HOW_TO}")
        if isinstance(uri, str) and not _is_stream(uri):
            uri = str(Path(uri).expanduser())
        if every_n_frames < 1:
            raise CalibrationError(f"every_n_frames must be >= 1, not {every_n_frames}")
        if max_frames is None and _is_stream(uri):
            raise CalibrationError("a live stream needs max_frames: it never ends on its own")
        self.uri = uri
        self.detector_spec = detector
        self.every_n_frames = int(every_n_frames)
        self.max_frames = None if max_frames is None else int(max_frames)
        self.modality = _modality_arg(modality)
        self.modality_name = modality if isinstance(modality, str) else str(modality)
        self.min_box = (int(min_box[0]), int(min_box[1]))
        self.progress = progress
        self.skipped = 0
        self.too_small = 0
        self.frames_read = 0
        self.frames_detected = 0
        self._refs: "list[CropRef] | None" = None

    def _build_detector(self):
        if hasattr(self.detector_spec, "detect"):
            return self.detector_spec
        try:
            detectors = importlib.import_module("admpff.runtime.detectors")
        except ImportError as exc:
            raise CalibrationError(f"video calibration needs admpff.runtime.detectors, which is not available ({exc})") from None
        try:
            return detectors.build_detector(self.detector_spec)
        except (RuntimeError, ValueError, OSError) as exc:  # DetectorError, a missing model file, ...
            raise CalibrationError(f"cannot build detector {self.detector_spec!r}: {exc}") from None

    @staticmethod
    def _detect_call(detector):
        """detector.detect with the frame index when it takes one (file-based detectors need it)."""
        try:
            takes_index = "frame_index" in inspect.signature(detector.detect).parameters
        except (TypeError, ValueError):
            takes_index = False
        if takes_index:
            return lambda frame, index: detector.detect(frame, frame_index=index)
        return lambda frame, index: detector.detect(frame)

    def scan(self) -> list[CropRef]:
        if self._refs is not None:
            return self._refs
        from tqdm import tqdm

        detect = self._detect_call(self._build_detector())
        cap = cv2.VideoCapture(self.uri)
        if not cap.isOpened():
            raise CalibrationError(f"cannot open video {self.uri}; {HOW_TO}")
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        limits = [n for n in (count, self.max_frames) if n and n > 0]
        total = min(limits) if limits else None  # for the progress bar only
        refs: list[CropRef] = []
        min_h, min_w = self.min_box
        switch = None
        if self.modality is None:
            from admpff.runtime.modality import ModalitySwitch
            switch = ModalitySwitch()
        try:
            with tqdm(total=total, desc=f"detect {Path(str(self.uri)).name}", unit="frame",
                      disable=None if self.progress is None else not self.progress) as bar:
                index = -1
                while self.max_frames is None or index + 1 < self.max_frames:
                    ok, frame = cap.read()
                    if not ok or frame is None:
                        break
                    index += 1
                    self.frames_read += 1
                    bar.update(1)
                    if switch is not None:
                        # The runtime's own per-frame decision with hysteresis, fed every frame read (not
                        # only detector frames), as admpff-reid does: one camera is one modality at a time.
                        camera_modality = switch.update(frame)
                    if index % self.every_n_frames:
                        continue
                    self.frames_detected += 1
                    if switch is None:
                        modality, decided_by = self.modality, "flag"
                    else:
                        modality, decided_by = (INFRARED if camera_modality == "infrared" else VISIBLE), "frame"
                    boxes, _scores = detect(frame, index)
                    height, width = frame.shape[:2]
                    for j, box in enumerate(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)):
                        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
                        x1, x2 = max(0, min(x1, width)), max(0, min(x2, width))
                        y1, y2 = max(0, min(y1, height)), max(0, min(y2, height))
                        if y2 - y1 < min_h or x2 - x1 < min_w:
                            self.too_small += 1
                            continue
                        crop = frame[y1:y2, x1:x2].copy()  # copy: do not keep the whole frame alive
                        origin = f"video:{self.uri}#frame{index:07d}/box{j:03d}"
                        refs.append(CropRef(origin, modality, lambda c=crop: c, decided_by))
        finally:
            cap.release()
        log.info("%s: %d frames read, %d run through the detector, %d crops, %d boxes too small",
                 self.uri, self.frames_read, self.frames_detected, len(refs), self.too_small)
        self._refs = refs
        return refs

    def describe(self) -> str:
        detector = self.detector_spec if isinstance(self.detector_spec, str) else type(self.detector_spec).__name__
        return (f"video:{self.uri} (detector={detector}, every_n_frames={self.every_n_frames}, "
                f"max_frames={self.max_frames}, min_box={self.min_box}, modality={self.modality_name})")

    def fingerprint(self) -> str:
        if _is_stream(self.uri):
            return self.describe()  # a live stream has no content identity: the request is all we know
        st = Path(self.uri).stat()
        return f"{self.describe()}|{st.st_size}|{st.st_mtime_ns}"


DATASET_KINDS = {"sysu": "sysu", "sysu-mm01": "sysu", "sysumm01": "sysu", "regdb": "regdb"}


class DatasetTrainSource(CalibrationSource):
    """The TRAINING split of SYSU-MM01 or RegDB, read by the toolkit's own data set readers.

    ``split`` exists only to be refused when it is not 'train': calibrating on test data leaks into the
    reported accuracy.
    """

    def __init__(self, kind: str, root: "str | os.PathLike", trial: int = 1, split: str = "train"):
        key = DATASET_KINDS.get(str(kind).lower())
        if key is None:
            raise CalibrationError(f"unknown data set {kind!r}: use 'sysu' or 'regdb'")
        if str(split).lower() not in ("train", "training"):
            raise CalibrationError(
                f"refusing the {split!r} split of {kind}: calibrating on test data leaks into the reported "
                f"accuracy; only the training split can be used ({key}:ROOT)")
        self.kind = key
        self.root = Path(root).expanduser()
        if not self.root.exists():
            raise CalibrationError(f"{key} data set root {self.root} does not exist; {HOW_TO}")
        if _is_test_split_name(self.root):
            raise CalibrationError(f"refusing calibration data: {self.root} is a test split. Calibrating on test data "
                                   f"leaks into the reported accuracy; give the data set root ({key}:ROOT), whose "
                                   f"training split is used")
        self.trial = int(trial)
        if self.kind == "regdb" and not 1 <= self.trial <= 10:
            raise CalibrationError(f"RegDB trial must be 1..10, not {trial}")
        self.skipped = 0

    def _reader(self):
        module_name = f"admpff.training.datasets.{self.kind}"
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise CalibrationError(f"{module_name} is not available ({exc})") from None
        try:
            if self.kind == "sysu":
                return module.SYSUMM01(str(self.root))
            return module.RegDB(str(self.root), self.trial)
        except CalibrationError:
            raise
        except (OSError, ValueError, KeyError) as exc:
            raise CalibrationError(f"cannot read {self.kind} training split at {self.root}: {exc}") from None

    def scan(self) -> list[CropRef]:
        reader = self._reader()
        self.skipped = 0
        refs = []
        for entries, modality in ((reader.train_visible, VISIBLE), (reader.train_infrared, INFRARED)):
            for entry in entries:
                path = str(entry[0])
                refs.append(CropRef(f"{self.kind}:{path}", modality, lambda p=path: _read_image(p), "dataset"))
        return refs

    def describe(self) -> str:
        trial = f":{self.trial}" if self.kind == "regdb" else ""
        return f"{self.kind}:{self.root.resolve()}{trial} (train split)"


# -- spec strings ----------------------------------------------------------------------------------------
_SPEC_PREFIX = re.compile(r"^([A-Za-z][\w.-]*):(?!//)(.*)$")
_MODALITY_PREFIXES = {"visible", "rgb", "infrared", "ir", "thermal"}


def parse_calib_spec(spec: "str | os.PathLike", modality: str = "auto", **video_options) -> CalibrationSource:
    """A ``--calib-data`` value -> a source.

    * ``DIR`` -> FolderSource; ``VIDEO_FILE``, ``rtsp://...``, ``http(s)://...`` or a camera index -> VideoSource
      (``video_options`` go to it: every_n_frames, max_frames, detector, min_box);
    * ``sysu:ROOT``, ``regdb:ROOT`` or ``regdb:ROOT:TRIAL`` -> DatasetTrainSource (training split only);
    * ``visible:PATH`` / ``infrared:PATH`` (also ``ir:``, ``thermal:``) force the modality of a folder or video;
      ``modality`` ('auto', 'visible' or 'infrared': ``--calib-modality``) does so for specs without a prefix;
    * ``sysu-test:...``, ``regdb-query:...`` and the like are refused (test data).
    """
    text = os.fspath(spec).strip() if not isinstance(spec, str) else spec.strip()
    if not text:
        raise CalibrationError(f"empty calibration data spec; {HOW_TO}")
    match = _SPEC_PREFIX.match(text)
    # A one-letter prefix is a Windows drive ("C:\\crops"), not a scheme.
    if match and len(match.group(1)) > 1:
        prefix, rest = match.group(1).lower(), match.group(2)
        if any(part in TEST_SPLIT_NAMES for part in prefix.split("-")):
            base = prefix.split("-")[0]
            hint = f"; use the training split ({DATASET_KINDS[base]}:ROOT)" if base in DATASET_KINDS else ""
            raise CalibrationError(f"refusing {text!r}: calibrating on test data leaks into the reported accuracy{hint}")
        if prefix in DATASET_KINDS:
            kind = DATASET_KINDS[prefix]
            root, trial = rest, 1
            if kind == "regdb":
                m = re.match(r"^(.*):(\d+)$", rest)
                if m:
                    root, trial = m.group(1), int(m.group(2))
            if not root:
                raise CalibrationError(f"{text!r} names no data set root; write {kind}:ROOT")
            return DatasetTrainSource(kind, root, trial=trial)
        if prefix in _MODALITY_PREFIXES:
            return _path_source(rest, modality=prefix, video_options=video_options, spec=text)
        if not Path(text).exists():
            raise CalibrationError(f"unknown calibration data scheme {match.group(1)!r} in {text!r}; {HOW_TO}")
    _modality_arg(modality)  # an unknown setting fails here, naming it
    return _path_source(text, modality=modality, video_options=video_options, spec=text)


def _path_source(text: str, modality: str, video_options: dict, spec: str) -> CalibrationSource:
    if _is_stream(text):
        return VideoSource(text, modality=modality, **video_options)
    path = Path(text).expanduser()
    if not path.exists():
        raise CalibrationError(f"calibration data {spec!r} does not exist; {HOW_TO}")
    if path.is_dir():
        return FolderSource(path, modality=modality)
    if path.suffix.lower() in VIDEO_EXTENSIONS:
        return VideoSource(path, modality=modality, **video_options)
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        raise CalibrationError(f"{spec!r} is a single image; give the folder that holds the crops ({HOW_TO})")
    raise CalibrationError(f"{spec!r} is neither a folder nor a video ({', '.join(VIDEO_EXTENSIONS[:4])}, ...); {HOW_TO}")


def as_sources(sources: "CalibrationSource | str | os.PathLike | Sequence",
               modality: str = "auto") -> list[CalibrationSource]:
    """Accept one source, one spec string, or a list of either; ``modality`` applies to specs without a
    ``visible:``/``infrared:`` prefix."""
    if isinstance(sources, (CalibrationSource, str, os.PathLike)):
        sources = [sources]
    out = []
    for source in sources:
        out.append(source if isinstance(source, CalibrationSource) else parse_calib_spec(source, modality=modality))
    return out
