"""admpff-reid and the gallery at their edges (issue 10): enrolment folders, re-enrolment, camera names,
output folders, the modality of enrolment crops, a gallery the model cannot separate, readable labels."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from _tiny_model import build_tiny_embedder
from admpff.runtime import reid
from admpff.runtime.embedder import load_embedder
from admpff.runtime.gallery import Gallery
from admpff.runtime.matching import IdentityRegistry
from admpff.runtime.modality import frame_modality

CLIP = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "vtest.avi"
needs_clip = pytest.mark.skipif(not CLIP.is_file(), reason=f"real clip not found at {CLIP} (apt-get install opencv-doc)")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_embedder(tmp_path_factory.mktemp("m") / "tiny.onnx", checkpoint_sha256="hardening")


def person_crop(bgr, seed, size=(128, 64)):
    rng = np.random.default_rng(seed)
    img = np.empty((*size, 3), np.uint8)
    img[:] = bgr
    return np.clip(img.astype(np.int16) + rng.integers(-15, 16, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture()
def people(tmp_path):
    root = tmp_path / "people"
    for k, (name, bgr) in enumerate({"alice": (40, 40, 200), "bob": (40, 190, 40)}.items()):
        (root / name).mkdir(parents=True)
        for i in range(3):
            cv2.imwrite(str(root / name / f"{i}.png"), person_crop(bgr, 10 * k + i))
    return root


def cli(*args, cwd=None):
    """admpff-reid in a subprocess: (exit code, stdout, stderr)."""
    p = subprocess.run([sys.executable, "-m", "admpff.runtime.reid", *map(str, args)], capture_output=True,
                       text=True, cwd=cwd)
    return p.returncode, p.stdout, p.stderr


def one_line_error(rc, err):
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("admpff-reid: error: "), err
    return lines[0]


# ------------------------------------------------------------------------------------------- enrolment
def test_enroll_folder_without_person_folders_is_an_error_and_writes_nothing(model, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        cv2.imwrite(str(flat / f"{i}.jpg"), person_crop((40, 40, 200), i))
    rc, _, err = cli("--model", model, "--gallery", tmp_path / "g.npz", "--enroll", flat)
    line = one_line_error(rc, err)
    assert "no person folders" in line and "3 images lie directly" in line
    assert not (tmp_path / "g.npz").exists()
    # one person's visible/ + infrared/ folder given instead of the folder above it
    (tmp_path / "one" / "visible").mkdir(parents=True)
    (tmp_path / "one" / "infrared").mkdir()
    rc, _, err = cli("--model", model, "--gallery", tmp_path / "g.npz", "--enroll", tmp_path / "one")
    assert "looks like one person's folder" in one_line_error(rc, err)
    # person folders without a single image
    (tmp_path / "empty" / "carol").mkdir(parents=True)
    rc, _, err = cli("--model", model, "--gallery", tmp_path / "g.npz", "--enroll", tmp_path / "empty")
    assert "no images" in one_line_error(rc, err)


def test_enrolling_the_same_folder_twice_replaces_rows_and_append_adds(model, people, tmp_path):
    gallery = tmp_path / "g.npz"
    emb = load_embedder(model)
    assert reid.main(["--model", str(model), "--gallery", str(gallery), "--enroll", str(people)]) == 0
    first = Gallery.load_for(gallery, emb)
    assert first.num_embeddings == 6
    assert reid.main(["--model", str(model), "--gallery", str(gallery), "--enroll", str(people)]) == 0
    again = Gallery.load_for(gallery, emb)
    assert again.persons == first.persons and again.num_embeddings == 6
    np.testing.assert_array_equal(again.matrix()[0], first.matrix()[0])
    assert reid.main(["--model", str(model), "--gallery", str(gallery), "--enroll", str(people),
                      "--enroll-append"]) == 0
    assert Gallery.load_for(gallery, emb).num_embeddings == 12

    # re-enrolling one person replaces only that person's rows
    g = Gallery.load_for(gallery, emb)
    only_bob = tmp_path / "bob-again"
    (only_bob / "bob").mkdir(parents=True)
    cv2.imwrite(str(only_bob / "bob" / "new.png"), person_crop((40, 190, 40), 77))
    report = g.enroll_folder(only_bob, emb)
    assert report.replaced == ["bob"] and len(g.embeddings_of("bob")) == 1 and len(g.embeddings_of("alice")) == 6


def test_online_identity_never_takes_a_gallery_persons_name():
    g = Gallery()
    g.add("P0001", np.eye(4, dtype=np.float32)[:1])  # saved by an earlier --update-gallery
    registry = IdentityRegistry(g, threshold=0.9)
    a = registry.assign(np.eye(4, dtype=np.float32)[2])
    assert a.new and not a.known and a.identity != "P0001"


# ------------------------------------------------------------------------------- cameras and outputs
def test_camera_name_and_modality_errors_come_before_the_model_loads(tmp_path):
    missing_model = tmp_path / "no-model.onnx"  # never reached: the usage error is reported first
    rc, _, err = cli("--model", missing_model, "--source", "lobby=a.avi", "--source", "lobby=b.avi")
    assert "two --source are named 'lobby'" in one_line_error(rc, err)
    rc, _, err = cli("--model", missing_model, "--source", "lobby=a.avi", "--modality", "yard=auto")
    line = one_line_error(rc, err)
    assert "--modality yard=auto" in line and "cameras: lobby" in line
    rc, _, err = cli("--model", missing_model, "--source", "lobby=a.avi", "--modality", "lobby=sepia")
    assert "sepia" in one_line_error(rc, err)


def test_out_that_is_a_file_is_one_line_exit_2_before_work(tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("a file")
    rc, _, err = cli("--model", tmp_path / "no-model.onnx", "--source", "lobby=a.avi", "--out", taken)
    assert "--out" in one_line_error(rc, err) and "existing file" in err
    rc, _, err = cli("--model", tmp_path / "no-model.onnx", "--enroll", tmp_path, "--gallery", tmp_path)
    assert rc == 2 and err.count("\n") == 1


def write_video(path, frames=6, size=(160, 240)):  # at least HOG's 128x64 window (smaller crashes OpenCV)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (size[1], size[0]))
    for i in range(frames):
        writer.write(np.full((*size, 3), 40 + 20 * i, np.uint8))
    writer.release()
    return path


def test_without_out_each_run_writes_a_new_default_folder_and_says_where(model, tmp_path):
    video = write_video(tmp_path / "clip.avi")
    work = tmp_path / "work"
    work.mkdir()
    outs = []
    for _ in range(2):
        rc, out, err = cli("--model", model, "--source", f"lobby={video}", "--detector", "hog", "--quiet", cwd=work)
        assert rc == 0, err
        runs = sorted((work / "runs" / "reid").iterdir())
        outs.append(runs[-1])
        assert str(runs[-1]) in out  # printed where it writes
        summary = json.loads((runs[-1] / "summary.json").read_text())
        assert summary["frames"] == 6 and (runs[-1] / "events.jsonl").is_file() and (runs[-1] / "lobby.avi").is_file()
    assert outs[0] != outs[1]  # the second run did not overwrite the first
    rc, _, err = cli("--model", tmp_path / "missing.onnx", "--source", f"lobby={video}", cwd=work)
    assert rc == 2 and "missing.onnx" in err
    assert sorted((work / "runs" / "reid").iterdir()) == sorted(outs)  # a failed start leaves no empty folder


# ------------------------------------------------------------------------------ modality of enrolment
@pytest.fixture(scope="module")
def clip_crops(tmp_path_factory):
    """HOG person crops of the (colour) courtyard clip, saved as JPEG as a user's enrolment folder."""
    if not CLIP.is_file():
        pytest.skip(f"real clip not found at {CLIP}")
    from admpff.runtime.detectors import HOGPersonDetector
    from admpff.runtime.tracker import crop

    cap, det = cv2.VideoCapture(str(CLIP)), HOGPersonDetector()
    crops, index = [], 0
    while len(crops) < 36:
        ok, frame = cap.read()
        if not ok:
            break
        if index % 50 == 0:
            boxes, _ = det.detect(frame)
            crops += [c for c in (crop(frame, b) for b in boxes) if c.size]
        index += 1
    root = tmp_path_factory.mktemp("clip-people")
    for i, c in enumerate(crops):  # six "people" of several crops each
        (root / f"p{i % 6}").mkdir(exist_ok=True)
        cv2.imwrite(str(root / f"p{i % 6}" / f"{i:03d}.jpg"), c)
    return root


@needs_clip
def test_real_colour_crops_enroll_as_visible(model, clip_crops, tmp_path, capsys):
    files = sorted(clip_crops.glob("*/*.jpg"))
    assert len(files) >= 20
    # what went wrong before: the frame rule applied to single crops calls dull daylight crops infrared
    assert sum(frame_modality(cv2.imread(str(f))) == "infrared" for f in files) > 0
    emb = load_embedder(model)
    reports = {}
    for setting in ("auto", "visible"):
        g = Gallery.for_embedder(emb)
        reports[setting] = g.enroll_folder(clip_crops, emb, modality=setting)
        assert g.modalities().tolist() == [0] * len(files), setting   # 0 = visible, every crop
    assert reports["visible"].modalities == reports["auto"].modalities == {"visible": len(files)}
    assert reports["visible"].sources == {"flag": len(files)} and reports["auto"].sources == {"guess": len(files)}
    assert any("guessed from their colour" in w for w in reports["auto"].warnings)  # a last resort, and said so

    # the folder layout wins over the flag and over any guess; a contradicting guess is reported
    layered = tmp_path / "layered"
    for f in files[:8]:
        dest = layered / "ann" / ("visible" if int(f.stem) % 2 else "infrared") / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(f.read_bytes())
    g = Gallery.for_embedder(emb)
    report = g.enroll_folder(layered, emb, modality="auto")
    n_ir = len(list((layered / "ann" / "infrared").iterdir()))
    assert report.sources == {"folder": 8} and report.modalities == {"infrared": n_ir, "visible": 8 - n_ir}
    assert any("in infrared/ folders look visible" in w for w in report.warnings)


@needs_clip
def test_cli_enroll_auto_reports_counts_and_warns(model, clip_crops, tmp_path):
    rc, out, err = cli("--model", model, "--gallery", tmp_path / "g.npz", "--enroll", clip_crops,
                       "--enroll-modality", "auto")
    assert rc == 0, err
    n = len(list(clip_crops.glob("*/*.jpg")))
    assert f"modality: {n} visible ({n} guessed from colour)" in out
    assert "warning:" in err and "visible/ and <person>/infrared/" in err


# ------------------------------------------------------------------------ a gallery the model confuses
def test_gallery_separation_warning_names_the_closest_pairs():
    rng = np.random.default_rng(0)
    base = rng.standard_normal(16).astype(np.float32)
    close = Gallery()
    for name in ("ann", "ben", "cy"):
        close.add(name, base + 0.01 * rng.standard_normal((2, 16)).astype(np.float32))
    warning = close.separation_warning(threshold=0.6)
    assert warning and "3 of 3 pairs" in warning and "0.60" in warning
    assert any(f"{a}/{b}" in warning for a, b in (("ann", "ben"), ("ann", "cy"), ("ben", "cy")))
    apart = Gallery()
    for i, name in enumerate(("ann", "ben", "cy")):
        apart.add(name, np.eye(16, dtype=np.float32)[i])
    assert apart.separation_warning(threshold=0.6) is None
    pairs, count = apart.closest_pairs(top=2, above=0.6)
    assert len(pairs) == 2 and count == 0


def test_confusable_gallery_is_warned_at_enrolment_and_in_the_summary(model, tmp_path):
    same = tmp_path / "same"
    for name in ("ann", "ben"):  # two "people" the tiny model cannot tell apart
        (same / name).mkdir(parents=True)
        cv2.imwrite(str(same / name / "0.png"), person_crop((90, 120, 150), 1))
    gallery = tmp_path / "g.npz"
    rc, _, err = cli("--model", model, "--gallery", gallery, "--enroll", same)
    assert rc == 0 and "hardly tell" in err and "ann/ben" in err
    video = write_video(tmp_path / "clip.avi", frames=3)
    rc, out, err = cli("--model", model, "--gallery", gallery, "--source", f"lobby={video}", "--out",
                       tmp_path / "run", "--detector", "hog", "--quiet", "--no-video")
    assert rc == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["warnings"] and "ann/ben" in summary["warnings"][0]
    assert "warning: the model can hardly tell" in out


# --------------------------------------------------------------------------------- readable labels
def test_labels_sit_on_a_filled_box_inside_the_frame():
    img = np.full((60, 200, 3), 128, np.uint8)
    noisy = np.random.default_rng(0).integers(0, 255, img.shape, dtype=np.uint8)
    for background in (img, noisy):
        frame = background.copy()
        x1, y1, x2, y2 = reid.draw_label(frame, "P0007 0.93", (20, 5), (30, 200, 240))
        assert 0 <= y1 < y2 <= 60 and 0 <= x1 < x2 <= 200          # pushed down into the frame at the top edge
        box = frame[y1:y2, x1:x2].reshape(-1, 3)
        fill = np.all(box == (30, 200, 240), axis=1).mean()
        ink = np.all(box < 60, axis=1).mean()                        # black letters on a light box
        assert fill > 0.6 and ink > 0.03, (fill, ink)
        assert np.array_equal(frame[y2:, :], background[y2:, :])   # nothing drawn outside the box
    dark = reid.draw_label(img.copy(), "x", (0, 0), (20, 20, 20), below=True)
    assert dark[:2] == (0, 0)
