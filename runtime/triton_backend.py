"""Triton Inference Server client backend: ``load_embedder("grpc://host:8001/admpff")`` (or ``http://``).

The model's input contract is read from the server (the model configuration's ``parameters``, written
by ``admpff-serve`` and ``admpff-export --triton``), never assumed, and checked against the tensors the
configuration declares.  A server that drops mid-run is retried with exponential back-off, as a camera
that drops is (``runtime.sources``); only when it stays away longer than ``retry_for`` seconds does
``embed`` fail, with one line.

``tritonclient`` is imported only here, inside the class: the rest of the runtime runs without it.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from .contract import ModelInfo
from .embedder import Embedder, ModelLoadError

log = logging.getLogger(__name__)

__all__ = ["TritonEmbedder", "TritonUnavailableError", "TritonURI", "parse_triton_uri", "DEFAULT_MODEL_NAME"]

DEFAULT_MODEL_NAME = "admpff"
DEFAULT_PORTS = {"grpc": 8001, "http": 8000}
# Triton config data types of the contract's tensors.
_IMAGES_TYPE, _MODALITY_TYPE, _OUTPUT_TYPE = "TYPE_FP32", "TYPE_INT32", "TYPE_FP32"


class TritonUnavailableError(ModelLoadError):
    """The server could not be reached (at start-up, or for longer than the retry window mid-run)."""


@dataclass(frozen=True)
class TritonURI:
    protocol: str  # "grpc" or "http"
    host: str
    port: int
    model: str
    version: str = ""  # "" = the server's policy (latest)

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.protocol}://{self.address}/{self.model}" + (f"/{self.version}" if self.version else "")


def parse_triton_uri(uri: str) -> TritonURI:
    """``grpc://HOST[:PORT]/MODEL[/VERSION]`` or ``http://...``; the port defaults to Triton's 8001 / 8000."""
    parsed = urlparse(str(uri))
    protocol = parsed.scheme.lower()
    if protocol not in DEFAULT_PORTS:
        raise ModelLoadError(f"not a Triton model URI: {uri!r} (expected grpc://HOST:PORT/MODEL or http://...)")
    if not parsed.hostname:
        raise ModelLoadError(f"Triton URI {uri!r} has no host")
    try:
        port = parsed.port or DEFAULT_PORTS[protocol]
    except ValueError:
        raise ModelLoadError(f"Triton URI {uri!r} has an invalid port") from None
    parts = [p for p in parsed.path.split("/") if p]
    if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise ModelLoadError(f"Triton URI {uri!r}: expected the path /MODEL or /MODEL/VERSION")
    return TritonURI(protocol, parsed.hostname, port, parts[0] if parts else DEFAULT_MODEL_NAME,
                     parts[1] if len(parts) == 2 else "")


def _client_module(protocol: str):
    try:
        if protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        from tritonclient.utils import InferenceServerException
    except ImportError as exc:
        missing = "it is not installed" if (exc.name or "tritonclient").startswith("tritonclient") else f"{exc.name} is missing"
        raise ModelLoadError(f"a {protocol}:// model needs tritonclient ({missing}): pip install 'admpff[serve]'") from None
    return module, InferenceServerException


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class TritonEmbedder(Embedder):
    """Embeds through a model served by Triton; preprocessing stays on the client (resize + reorder).

    ``connect_timeout``: how long start-up waits for the server to answer before failing.
    ``retry_for``: how long one ``embed`` keeps retrying a server that dropped (back-off from
    ``backoff_initial`` doubling to ``backoff_max`` seconds, as ``runtime.sources`` does for cameras).
    ``request_timeout``: the deadline of one inference request.
    """

    def __init__(self, uri: str | Path, *, connect_timeout: float = 10.0, retry_for: float = 60.0,
                 request_timeout: float = 60.0, backoff_initial: float = 0.5, backoff_max: float = 10.0):
        self.uri = parse_triton_uri(str(uri))
        self._module, self._server_error = _client_module(self.uri.protocol)
        self.connect_timeout = float(connect_timeout)
        self.retry_for = float(retry_for)
        self.request_timeout = float(request_timeout)
        self.backoff_initial = float(backoff_initial)
        self.backoff_max = float(backoff_max)
        self.retries = 0  # requests re-sent after the server dropped
        self._local = threading.local()  # one client per thread: tritonclient.http is not thread-safe
        self._wait_until_live()
        config = self._model_config()
        info = self._info_from_config(config)
        super().__init__(info, Path(str(self.uri)))
        self.config = config
        self._check_io(config)
        self.max_batch = int(config.get("max_batch_size", 0)) or None

    # -- connection ---------------------------------------------------------------------------------
    def _client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            if self.uri.protocol == "grpc":
                client = self._module.InferenceServerClient(url=self.uri.address)
            else:
                client = self._module.InferenceServerClient(url=self.uri.address,
                                                            connection_timeout=self.connect_timeout,
                                                            network_timeout=self.request_timeout)
            self._local.client = client
        return client

    def _reset_client(self) -> None:
        client = getattr(self._local, "client", None)
        self._local.client = None
        if client is not None:
            try:
                client.close()
            except Exception:  # a half-dead connection may fail to close; it is dropped either way
                pass

    def _is_unavailable(self, exc: BaseException) -> bool:
        """Connection-level failures (retry) as opposed to a request the server rejected (do not)."""
        if isinstance(exc, (ConnectionError, OSError, TimeoutError)):
            return True
        if isinstance(exc, self._server_error):
            status = str(exc.status() or "")
            text = str(exc).lower()
            return ("UNAVAILABLE" in status or "DEADLINE_EXCEEDED" in status or status in ("502", "503", "504")
                    or "connection refused" in text or "failed to connect" in text or "socket closed" in text)
        return False

    def _wait_until_live(self) -> None:
        deadline = time.monotonic() + self.connect_timeout
        delay, last = 0.1, None
        while True:
            try:
                if self._client().is_server_live():
                    return
                last = "server is not live"
            except Exception as exc:  # tritonclient raises its own and socket-level errors
                if not (self._is_unavailable(exc) or isinstance(exc, self._server_error)):
                    raise
                last = _first_line(exc)
                self._reset_client()
            if time.monotonic() + delay > deadline:
                raise TritonUnavailableError(f"cannot reach Triton at {self.uri.protocol}://{self.uri.address} "
                                             f"within {self.connect_timeout:g} s: {last}")
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    # -- contract -----------------------------------------------------------------------------------
    def _model_config(self) -> dict:
        client, name, version = self._client(), self.uri.model, self.uri.version
        try:
            ready = client.is_model_ready(name, version)
        except self._server_error as exc:
            ready, why = False, _first_line(exc)
        else:
            why = ""
        if not ready:
            try:
                index = client.get_model_repository_index(**({"as_json": True} if self.uri.protocol == "grpc" else {}))
                models = index.get("models", []) if isinstance(index, dict) else index
                entry = [m for m in models if m.get("name") == name]
                names = sorted({m.get("name", "") for m in models})
            except Exception:  # the index is only for the message
                entry, names = [], []
            if not entry:
                raise ModelLoadError(f"Triton at {self.uri.address} has no model {name!r}"
                                     + (f" (it serves: {', '.join(names)})" if names else "") + (f": {why}" if why else ""))
            states = "; ".join(f"version {m.get('version', '?')}: {m.get('state', '?')} {m.get('reason', '')}".strip()
                               for m in entry)
            raise ModelLoadError(f"Triton model {name!r} at {self.uri.address} is not ready ({states})")
        try:
            if self.uri.protocol == "grpc":
                config = client.get_model_config(name, version, as_json=True)
            else:
                config = client.get_model_config(name, version)
        except self._server_error as exc:
            raise ModelLoadError(f"cannot read the configuration of Triton model {name!r}: {_first_line(exc)}") from None
        return config.get("config", config)

    def _info_from_config(self, config: dict) -> ModelInfo:
        params = {key: (value or {}).get("string_value", "") for key, value in (config.get("parameters") or {}).items()}
        try:
            return ModelInfo.from_metadata(params, source=f"Triton model {self.uri.model!r} (its config parameters)")
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from None

    def _check_io(self, config: dict) -> None:
        c, name = self.contract, self.uri.model
        inputs = {i["name"]: i for i in config.get("input", [])}
        outputs = {o["name"]: o for o in config.get("output", [])}
        if set(inputs) != set(c.input_names) or c.output_name not in outputs:
            raise ModelLoadError(f"Triton model {name!r} declares inputs {sorted(inputs)} and outputs {sorted(outputs)}, "
                                 f"but its contract says inputs {list(c.input_names)} and output {c.output_name!r}")
        if int(config.get("max_batch_size", 0)) < 1:
            raise ModelLoadError(f"Triton model {name!r} has max_batch_size 0; admpff models batch crops")
        images = inputs[c.input_names[0]]
        dims = [int(d) for d in images.get("dims", [])]
        if dims != [3, c.height, c.width] or images.get("data_type") != _IMAGES_TYPE:
            raise ModelLoadError(f"Triton model {name!r} takes {c.input_names[0]!r} as {images.get('data_type')} "
                                 f"{dims}, but its contract says {_IMAGES_TYPE} [3, {c.height}, {c.width}]")
        if len(c.input_names) > 1:
            modality = inputs[c.input_names[1]]
            if modality.get("data_type") != _MODALITY_TYPE:
                raise ModelLoadError(f"Triton model {name!r} takes {c.input_names[1]!r} as "
                                     f"{modality.get('data_type')}, expected {_MODALITY_TYPE}")
            self._modality_dims = [int(d) for d in modality.get("dims", [])]
        out_dims = [int(d) for d in outputs[c.output_name].get("dims", [])]
        if out_dims != [self.dim] or outputs[c.output_name].get("data_type") != _OUTPUT_TYPE:
            raise ModelLoadError(f"Triton model {name!r} emits {c.output_name!r} as {out_dims}, but its contract "
                                 f"says an embedding of {self.dim}")

    # -- inference ----------------------------------------------------------------------------------
    def _request(self, images: np.ndarray, modality: np.ndarray):
        c, m = self.contract, self._module
        first = m.InferInput(c.input_names[0], list(images.shape), "FP32")
        first.set_data_from_numpy(images)
        inputs = [first]
        if len(c.input_names) > 1:
            # Declared dims [1] (+ reshape to a scalar): Triton wants a rank >= 1 shape per sample.
            codes = modality.reshape(len(modality), *([1] * len(self._modality_dims)))
            second = m.InferInput(c.input_names[1], list(codes.shape), "INT32")
            second.set_data_from_numpy(np.ascontiguousarray(codes, np.int32))
            inputs.append(second)
        return inputs, [m.InferRequestedOutput(c.output_name)]

    def _infer(self, images: np.ndarray, modality: np.ndarray) -> np.ndarray:
        inputs, outputs = self._request(images, modality)
        deadline = time.monotonic() + self.retry_for
        delay = self.backoff_initial
        attempt = 0
        while True:
            try:
                kwargs = {"client_timeout": self.request_timeout} if self.uri.protocol == "grpc" else {}
                result = self._client().infer(self.uri.model, inputs, model_version=self.uri.version,
                                              outputs=outputs, **kwargs)
                out = result.as_numpy(self.contract.output_name)
                if attempt:
                    log.info("Triton %s: answered again after %d retr%s", self.uri, attempt, "y" if attempt == 1 else "ies")
                return out
            except Exception as exc:
                if not self._is_unavailable(exc):
                    if isinstance(exc, self._server_error):
                        raise ModelLoadError(f"Triton model {self.uri.model!r} refused the request: "
                                             f"{_first_line(exc)}") from None
                    raise
                self._reset_client()
                if time.monotonic() + delay > deadline:
                    raise TritonUnavailableError(f"Triton at {self.uri.protocol}://{self.uri.address} stayed "
                                                 f"unreachable for {self.retry_for:g} s: {_first_line(exc)}") from None
                attempt += 1
                self.retries += 1
                log.warning("Triton %s: %s; retry %d in %.1f s", self.uri, _first_line(exc), attempt, delay)
                time.sleep(delay)
                delay = min(delay * 2, self.backoff_max)

    def describe(self) -> str:
        fixed = f", fixed to {self.fixed_modality}" if self.fixed_modality else ""
        return f"triton[{self.uri.protocol}] {self.uri} ({self.info.precision}, max batch {self.max_batch}{fixed})"

    def close(self) -> None:
        self._reset_client()

