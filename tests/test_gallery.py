"""Gallery enroll/persist/reload, model-hash and corruption handling, matching and the cross-camera
identity registry.  Enrollment runs a tiny real ONNX model through ``load_embedder``."""
from __future__ import annotations


import cv2
import numpy as np
import pytest

from admpff.runtime import atomic
from admpff.runtime.embedder import load_embedder
from admpff.runtime.gallery import Gallery, GalleryError, ModelMismatchError
from admpff.runtime.matching import UNKNOWN, IdentityRegistry, Matcher, faiss_available

from _tiny_model import build_tiny_embedder

# BGR colours of three people's clothes (the tiny model sees mean colour)
PEOPLE = {"alice": (40, 40, 200), "bob": (40, 190, 40), "carol": (200, 60, 30)}


def unit_rows(rng, n, dim=32):
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def person_crop(bgr, seed, size=(128, 64)):
    rng = np.random.default_rng(seed)
    img = np.empty((*size, 3), np.uint8)
    img[:] = bgr
    noise = rng.integers(-15, 16, img.shape)
    return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    path = build_tiny_embedder(tmp_path_factory.mktemp("model") / "tiny.onnx", checkpoint_sha256="test")
    return load_embedder(path)


@pytest.fixture(scope="module")
def people_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("people")
    for k, (name, bgr) in enumerate(PEOPLE.items()):
        (root / name).mkdir()
        for i in range(3):
            assert cv2.imwrite(str(root / name / f"{i}.jpg"), person_crop(bgr, 10 * k + i))
    (root / "bob" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (root / "notes.txt").write_text("files at the top level are ignored")
    return root


@pytest.fixture()
def gallery(embedder, people_dir):
    g = Gallery.for_embedder(embedder)
    report = g.enroll_folder(people_dir, embedder, modality="visible")
    assert report.people == 3 and report.images == 9 and report.skipped_count == 1
    assert report.skipped[0].endswith("broken.jpg")
    return g


# ---------------------------------------------------------------------------------------------- gallery
def test_enroll_save_reload_and_match(gallery, embedder, tmp_path):
    assert gallery.persons == ["alice", "bob", "carol"] and gallery.num_embeddings == 9
    path = gallery.save(tmp_path / "gallery.npz")
    loaded = Gallery.load_for(path, embedder)
    assert loaded.persons == gallery.persons and loaded.model_hash == "test"
    assert loaded.embedding_dim == embedder.contract.embedding_dim == 5120
    assert loaded.header["precision"] == "fp32" and "admpff_version" in loaded.header
    np.testing.assert_array_equal(loaded.matrix()[0], gallery.matrix()[0])
    assert set(loaded.modalities().tolist()) == {0}

    queries = embedder.embed([person_crop(bgr, 99) for bgr in PEOPLE.values()], "visible")
    results = Matcher(loaded, threshold=0.9).match(queries, top_k=2)
    assert [r.person for r in results] == list(PEOPLE)
    assert all(r.score > 0.9 and len(r.candidates) == 2 for r in results)


def test_enroll_auto_modality(embedder, people_dir, tmp_path):
    grey_root = tmp_path / "ir"
    (grey_root / "dave").mkdir(parents=True)
    grey = cv2.cvtColor(cv2.cvtColor(person_crop((90, 90, 90), 1), cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    cv2.imwrite(str(grey_root / "dave" / "0.png"), grey)
    g = Gallery.for_embedder(embedder)
    g.enroll_folder(grey_root, embedder, modality="auto")
    assert g.modalities().tolist() == [1]


def test_mismatched_model_hash_is_refused(gallery, tmp_path):
    path = gallery.save(tmp_path / "g.npz")
    with pytest.raises(ModelMismatchError) as exc:
        Gallery.load(path, expected_model_hash="0123456789abcdef")
    msg = str(exc.value)
    assert "built with another model" in msg and "rebuild" in msg and "\n" not in msg
    with pytest.raises(ModelMismatchError, match="512-d"):
        Gallery.load(path, expected_dim=512)


def test_failed_save_keeps_previous_good_file(gallery, tmp_path, monkeypatch):
    path = gallery.save(tmp_path / "g.npz")
    good = path.read_bytes()

    def broken_savez(fh, **arrays):
        fh.write(b"PK\x03\x04 half a zip")  # the writer dies midway (disk full, power cut, ...)
        raise OSError("No space left on device")

    gallery.add("erin", unit_rows(np.random.default_rng(1), 1, 5120))
    monkeypatch.setattr(atomic.np, "savez", broken_savez)
    with pytest.raises(OSError, match="No space"):
        gallery.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.npz"]  # no temporary file left behind
    assert Gallery.load(path, expected_model_hash="test").persons == ["alice", "bob", "carol"]


def test_truncated_file_is_reported_and_backup_recovers(gallery, tmp_path):
    path = gallery.save(tmp_path / "g.npz")
    gallery.add("erin", unit_rows(np.random.default_rng(2), 2, 5120))
    gallery.save(path)                             # the previous version becomes g.npz.bak
    bak = atomic.backup_path(path)
    assert bak.is_file()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])       # a copy cut short (not written by save)
    with pytest.raises(GalleryError, match="corrupt or truncated") as exc:
        Gallery.load(path)
    assert str(bak) in str(exc.value) and "\n" not in str(exc.value)
    assert Gallery.load(bak, expected_model_hash="test").persons == ["alice", "bob", "carol"]

    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(GalleryError):
        Gallery.load(tmp_path / "empty.npz")
    with pytest.raises(GalleryError, match="not found"):
        Gallery.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(GalleryError, match="not an admpff gallery"):
        Gallery.load(tmp_path / "other.npz")


def test_add_checks_dimension_and_normalises():
    g = Gallery()
    assert g.add("x", np.array([3.0, 4.0])) == 1
    np.testing.assert_allclose(g.embeddings_of("x"), [[0.6, 0.8]])
    assert g.add("x", np.zeros((1, 2))) == 0  # an empty crop's zero row teaches nothing
    with pytest.raises(ValueError, match="dimension"):
        g.add("y", np.ones((1, 3)))


def test_enrolling_with_another_model_is_refused(gallery, tmp_path):
    other = load_embedder(build_tiny_embedder(tmp_path / "other.onnx", checkpoint_sha256="other", seed=1))
    with pytest.raises(ModelMismatchError):
        gallery.enroll_folder(tmp_path, other)


# ---------------------------------------------------------------------------------------------- matching
def test_person_score_is_max_over_embeddings_and_threshold_gives_unknown():
    rng = np.random.default_rng(0)
    a, b = unit_rows(rng, 3), unit_rows(rng, 2)
    g = Gallery()
    g.add("a", a)
    g.add("b", b)
    m = Matcher(g, threshold=0.8)
    res = m.match(a[2])[0]                         # identical to a's third view
    assert res.person == "a" and res.score == pytest.approx(1.0, abs=1e-5)
    assert [c[0] for c in res.candidates] == ["a", "b"]
    assert res.candidates[1][1] == pytest.approx(float(np.max(b @ a[2])), abs=1e-5)
    stranger = unit_rows(rng, 1)[0]
    res = m.match(stranger)[0]
    assert res.person == UNKNOWN and not res.known and res.score < 0.8
    assert res.candidates[0][0] in ("a", "b")      # top-k still shows who was closest
    assert m.backend == "numpy"
    # the matcher follows gallery changes
    g.add("c", stranger)
    assert m.match(stranger)[0].person == "c"
    assert Matcher(Gallery(), 0.5).match(stranger)[0].person == UNKNOWN


@pytest.mark.skipif(not faiss_available(), reason="faiss is not installed (optional: pip install faiss-cpu)")
def test_faiss_and_numpy_give_identical_matches():
    rng = np.random.default_rng(3)
    g = Gallery()
    for p in range(50):
        g.add(f"p{p}", unit_rows(rng, int(rng.integers(1, 6)), 64))
    q = unit_rows(rng, 20, 64)
    q[:5] = g.embeddings_of("p7")[0]
    plain = Matcher(g, 0.5, use_faiss=False).match(q, top_k=5)
    fast = Matcher(g, 0.5, use_faiss=True)
    assert fast.backend == "faiss"
    for r1, r2 in zip(plain, fast.match(q, top_k=5)):
        assert r1.person == r2.person
        assert [c[0] for c in r1.candidates] == [c[0] for c in r2.candidates]
        np.testing.assert_allclose([c[1] for c in r1.candidates], [c[1] for c in r2.candidates], atol=1e-5)


# ---------------------------------------------------------------------------------------------- registry
def test_registry_same_person_same_id_on_two_cameras():
    rng = np.random.default_rng(5)
    known = unit_rows(rng, 2, 64)
    g = Gallery()
    g.add("alice", known)
    reg = IdentityRegistry(g, threshold=0.7)

    stranger, other = unit_rows(rng, 2, 64)
    noisy = stranger + 0.1 * unit_rows(rng, 1, 64)[0]
    first = reg.assign(stranger, camera="cam1")
    assert first.new and not first.known and first.identity == "P0001"
    again = reg.assign(noisy, camera="cam2")             # the same person seen by another camera
    assert again.identity == "P0001" and not again.new and again.score > 0.7
    assert reg.cameras_of("P0001") == {"cam1", "cam2"}
    different = reg.assign(other, camera="cam2")
    assert different.new and different.identity == "P0002"

    hit = reg.assign(known[1], camera="cam2")            # a gallery person keeps their name
    assert hit.identity == "alice" and hit.known and not hit.new
    assert reg.assign(known[0] * 0.9 + 0.05, camera="cam1").identity == "alice"
    assert len(reg) == 3 and reg.created == 2


def test_registry_exclude_and_stickiness():
    rng = np.random.default_rng(6)
    reg = IdentityRegistry(None, threshold=0.6, stickiness=0.1)
    x = unit_rows(rng, 1, 64)[0]
    a = reg.assign(x, "cam1").identity
    # another track on the same camera holds `a` right now: the same appearance must get a new id
    b = reg.assign(x, "cam1", exclude=[a]).identity
    assert b != a
    # a track keeps its id while it scores within the stickiness margin under the threshold
    y = x + 1.2 * unit_rows(rng, 1, 64)[0]
    y /= np.linalg.norm(y)
    score = float(np.dot(x, y))
    assert 0.5 <= score < 0.6, score
    assert reg.assign(y, "cam1", previous=a, exclude=[b]).identity == a
    assert reg.forget_older_than(1.0) == 2 and len(reg) == 0
