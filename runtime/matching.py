"""Cosine matching against the gallery, and cross-camera identities assigned online.

Embeddings are unit rows, so cosine similarity is a dot product.  A person's score is the maximum over
that person's embeddings (the nearest-neighbour similarity DeepStream's re-ID uses): a person enrolled
from several views matches a query that resembles any one of them.

:class:`Matcher` answers "who in the gallery is this?" with top-k candidates and ``'unknown'`` below
the threshold.  :class:`IdentityRegistry` goes further for live video: tracks that match nobody in the
gallery are matched against identities created online from any camera (``P0001``, ``P0002``, ...), so
the same stranger gets the same id on every camera.

FAISS (``IndexFlatIP``, exact inner product) is used when installed and asked for; it returns the same
matches as numpy (it is an exact index), only faster on galleries of many thousand rows.
"""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from .gallery import Gallery

log = logging.getLogger(__name__)

__all__ = ["UNKNOWN", "MatchResult", "Matcher", "IdentityRegistry", "Assignment", "cosine_similarity",
           "faiss_available"]

UNKNOWN = "unknown"


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    if x.ndim == 1:
        x = x[None]
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def cosine_similarity(queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``[q, m]`` cosine similarities (inputs are renormalised, so any non-zero rows work)."""
    return _unit_rows(queries) @ _unit_rows(rows).T


@dataclass(frozen=True)
class MatchResult:
    """Best gallery match of one query.  ``person`` is ``'unknown'`` when ``score < threshold``;
    ``candidates`` always lists the top-k ``(person, score)`` pairs, best first."""

    person: str
    score: float
    candidates: tuple[tuple[str, float], ...]

    @property
    def known(self) -> bool:
        return self.person != UNKNOWN


class Matcher:
    """Top-k person matching of query embeddings against a :class:`Gallery`.

    ``use_faiss``: 'auto' (FAISS if installed and the gallery has at least ``faiss_min_rows`` rows),
    True (require it) or False (numpy only).
    """

    def __init__(self, gallery: Gallery, threshold: float = 0.5, use_faiss: bool | str = "auto",
                 faiss_min_rows: int = 20000):
        if use_faiss is True and not faiss_available():
            raise ImportError("use_faiss=True but faiss is not installed (pip install faiss-cpu)")
        self.gallery = gallery
        self.threshold = float(threshold)
        self.use_faiss = use_faiss
        self.faiss_min_rows = int(faiss_min_rows)
        self._built_version = None

    # -- index -------------------------------------------------------------------------------------
    def _ensure_index(self) -> None:
        if self._built_version == self.gallery.version:
            return
        emb, owner, names = self.gallery.matrix()
        self._emb, self._owner, self._names = emb, owner, names
        # owner is grouped (rows of one person contiguous): reduceat needs each group's first row
        self._starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]]) if len(owner) else np.zeros(0, np.int64)
        self._max_rows_per_person = int(np.bincount(owner).max()) if len(owner) else 0
        self._index = None
        want = self.use_faiss is True or (self.use_faiss == "auto" and len(emb) >= self.faiss_min_rows)
        if want and len(emb) and faiss_available():
            import faiss

            self._index = faiss.IndexFlatIP(emb.shape[1])
            self._index.add(np.ascontiguousarray(emb, np.float32))
        self._built_version = self.gallery.version

    @property
    def backend(self) -> str:
        self._ensure_index()
        return "faiss" if self._index is not None else "numpy"

    def person_scores(self, queries: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """``[q, persons]`` score matrix (max over each person's rows) and the person names (numpy)."""
        self._ensure_index()
        q = _unit_rows(queries)
        if len(self._emb) == 0:
            return np.zeros((len(q), 0), np.float32), []
        sims = q @ self._emb.T
        return np.maximum.reduceat(sims, self._starts, axis=1), list(self._names)

    def _top_numpy(self, q: np.ndarray, k: int):
        scores, _ = self.person_scores(q)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return order, np.take_along_axis(scores, order, axis=1)

    def _top_faiss(self, q: np.ndarray, k: int):
        # Every row scoring above the k-th best person's best row belongs to one of the top k people,
        # so k * (most rows any person has) nearest rows always contain the top k people's best rows.
        n_rows = min(len(self._emb), k * self._max_rows_per_person)
        sims, idx = self._index.search(np.ascontiguousarray(q, np.float32), n_rows)
        order = np.zeros((len(q), k), np.int64)
        top = np.full((len(q), k), -np.inf, np.float32)
        for i in range(len(q)):
            best: dict[int, float] = {}
            for s, j in zip(sims[i], idx[i]):
                if j < 0:
                    continue
                p = int(self._owner[j])
                if p not in best:
                    best[p] = float(s)
            ranked = sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
            for c, (p, s) in enumerate(ranked):
                order[i, c], top[i, c] = p, s
        return order, top

    def match(self, queries: np.ndarray, top_k: int = 5) -> list[MatchResult]:
        """One :class:`MatchResult` per query row."""
        self._ensure_index()
        q = _unit_rows(queries)
        n_persons = len(self._names)
        if n_persons == 0:
            return [MatchResult(UNKNOWN, float("-inf"), ()) for _ in range(len(q))]
        k = max(1, min(int(top_k), n_persons))
        order, top = (self._top_faiss if self._index is not None else self._top_numpy)(q, k)
        results = []
        for i in range(len(q)):
            cands = tuple((self._names[int(p)], float(s)) for p, s in zip(order[i], top[i]) if np.isfinite(s))
            best_name, best_score = cands[0]
            results.append(MatchResult(best_name if best_score >= self.threshold else UNKNOWN, best_score, cands))
        return results

    def match_one(self, query: np.ndarray, top_k: int = 5) -> MatchResult:
        return self.match(np.asarray(query)[None] if np.ndim(query) == 1 else query, top_k)[0]


# --------------------------------------------------------------------------------------------------
# cross-camera identities
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Assignment:
    """Identity given to a track embedding by :meth:`IdentityRegistry.assign`."""

    identity: str
    score: float          # similarity that decided (-1.0 for a brand-new identity)
    known: bool           # the identity is a gallery person
    new: bool             # the identity was created by this call


@dataclass
class _Identity:
    name: str
    known: bool
    bank: deque
    cameras: set = field(default_factory=set)
    last_seen: float = 0.0
    observations: int = 0


class IdentityRegistry:
    """Identities shared by all cameras: gallery people plus people first seen online.

    ``assign(embedding, camera)``: a gallery person scoring ``>= threshold`` wins; otherwise the best
    online identity scoring ``>= online_threshold`` (max over its bank of recent embeddings, from any
    camera); otherwise a new identity ``P0001``, ``P0002``, ... is created.  The chosen identity's bank
    receives the embedding, so a person seen in visible light on one camera and in infrared on another
    accumulates both.  ``previous`` (the track's current identity) is kept while it still scores within
    ``stickiness`` of the threshold, so ids do not flicker between similar people; ``exclude`` lists
    identities held by other tracks of the same camera at the same time (one person is never twice in
    one frame).
    """

    def __init__(self, gallery: Gallery | None = None, threshold: float = 0.5,
                 online_threshold: float | None = None, bank_size: int = 20,
                 id_format: str = "P{:04d}", stickiness: float = 0.05, use_faiss: bool | str = "auto"):
        self.threshold = float(threshold)
        self.online_threshold = float(threshold if online_threshold is None else online_threshold)
        self.bank_size = int(bank_size)
        self.id_format = id_format
        self.stickiness = float(stickiness)
        self.matcher = Matcher(gallery, threshold, use_faiss=use_faiss) if gallery is not None and len(gallery) else None
        self.identities: dict[str, _Identity] = {}
        # an online id never takes a gallery person's name (P0001 saved by an earlier --update-gallery)
        self._reserved = set(gallery.persons) if gallery is not None else set()
        self._next = 1
        self.created = 0

    def _new_identity(self, known: bool, name: str | None = None) -> _Identity:
        if name is None:
            name = self.id_format.format(self._next)
            while name in self.identities or name in self._reserved:
                self._next += 1
                name = self.id_format.format(self._next)
            self._next += 1
            self.created += 1
        ident = _Identity(name, known, deque(maxlen=self.bank_size))
        self.identities[name] = ident
        return ident

    def _bank_scores(self, q: np.ndarray, exclude: set) -> dict[str, float]:
        scores = {}
        for name, ident in self.identities.items():
            if ident.bank and name not in exclude:
                scores[name] = float(np.max(np.stack(ident.bank) @ q))
        return scores

    def assign(self, embedding: np.ndarray, camera: str | None = None, previous: str | None = None,
               exclude: Iterable[str] = (), timestamp: float = 0.0) -> Assignment:
        q = _unit_rows(embedding)[0]
        exclude = set(exclude) - ({previous} if previous else set())
        bank = self._bank_scores(q, exclude)

        gallery_scores: dict[str, float] = {}
        if self.matcher is not None:
            scores, names = self.matcher.person_scores(q[None])
            gallery_scores = {n: float(s) for n, s in zip(names, scores[0]) if n not in exclude}
        # a gallery person's score also counts what the registry saw of them online
        known = {n: max(s, bank.get(n, -1.0)) for n, s in gallery_scores.items()}
        online = {n: s for n, s in bank.items() if n not in known}

        chosen, score = None, -1.0
        if previous and (previous in known or previous in online):
            prev_score = known.get(previous, online.get(previous))
            limit = (self.threshold if previous in known else self.online_threshold) - self.stickiness
            if prev_score >= limit:
                chosen, score = previous, prev_score
        if chosen is None and known:
            name, s = max(known.items(), key=lambda kv: kv[1])
            if s >= self.threshold:
                chosen, score = name, s
        if chosen is None and online:
            name, s = max(online.items(), key=lambda kv: kv[1])
            if s >= self.online_threshold:
                chosen, score = name, s

        created = chosen is None
        if created:
            ident = self._new_identity(known=False)
        elif chosen not in self.identities:  # first online sighting of a gallery person
            ident = self._new_identity(known=True, name=chosen)
        else:
            ident = self.identities[chosen]
        ident.bank.append(q.astype(np.float32))
        if camera is not None:
            ident.cameras.add(str(camera))
        ident.last_seen = float(timestamp)
        ident.observations += 1
        return Assignment(ident.name, -1.0 if created else float(score), ident.known, created)

    def cameras_of(self, identity: str) -> set[str]:
        ident = self.identities.get(identity)
        return set(ident.cameras) if ident else set()

    def forget_older_than(self, timestamp: float) -> int:
        """Drop online (non-gallery) identities not seen since ``timestamp``; returns how many."""
        old = [n for n, i in self.identities.items() if not i.known and i.last_seen < timestamp]
        for n in old:
            del self.identities[n]
        return len(old)

    def __len__(self) -> int:
        return len(self.identities)
