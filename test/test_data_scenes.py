"""The driving-scene generator: determinism, coverage, sizes, samples."""
from __future__ import annotations

import numpy as np
import pytest

from gm_skip_ros.data import scenes
from gm_skip_ros.data.sample import Sample
from gm_skip_ros.errors import GmSkipError


def test_same_seed_gives_identical_pixels_and_truth():
    a = list(scenes.generate_scenes(6, seed=3, width=160, height=120))
    b = list(scenes.generate_scenes(6, seed=3, width=160, height=120))
    for (ia, ta), (ib, tb) in zip(a, b):
        assert np.array_equal(ia, ib)
        assert ta == tb


def test_different_seed_gives_different_scenes():
    a = list(scenes.generate_scenes(4, seed=1, width=160, height=120))
    b = list(scenes.generate_scenes(4, seed=2, width=160, height=120))
    assert any(not np.array_equal(ia, ib) for (ia, _), (ib, _) in zip(a, b))


def test_subset_is_reproducible_on_its_own():
    full = list(scenes.generate_scenes(5, seed=7, width=96, height=72))
    tail = list(scenes.generate_scenes(2, seed=7, width=96, height=72, start=3))
    for (ia, ta), (ib, tb) in zip(full[3:], tail):
        assert np.array_equal(ia, ib) and ta == tb
    img, truth = scenes.render_scene(scenes.scene_rng(7, 4), 96, 72)
    assert np.array_equal(img, full[4][0]) and truth == full[4][1]


@pytest.mark.parametrize("size", [(640, 480), (1920, 1080), (96, 64)])
def test_sizes_are_honoured(size):
    w, h = size
    img, truth = scenes.render_scene(np.random.default_rng(0), w, h)
    assert img.shape == (h, w, 3) and img.dtype == np.uint8
    x0, y0, x1, y1 = truth.bbox
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h


def test_all_classes_states_and_conditions_appear():
    truths = [t for _, t in scenes.generate_scenes(160, seed=0, width=64, height=48)]
    assert {t.main_class for t in truths} == set(scenes.CLASSES)
    lights = [t for t in truths if t.main_class == "traffic_light"]
    assert {t.light_state for t in lights} == set(scenes.LIGHT_STATES)
    assert all(t.colour == t.light_state for t in lights)
    assert all(t.light_state is None for t in truths if t.main_class != "traffic_light")
    assert {t.position for t in truths} == set(scenes.POSITIONS)
    assert {t.time_of_day for t in truths} == set(scenes.TIMES_OF_DAY)
    assert {t.weather for t in truths} == set(scenes.WEATHERS)
    assert any(t.distractors for t in truths)
    assert all(t.main_class not in t.distractors for t in truths)


def test_position_label_matches_the_drawn_box():
    for _, t in scenes.generate_scenes(40, seed=5, width=320, height=240):
        cx = (t.bbox[0] + t.bbox[2]) / 2
        third = scenes.POSITIONS[min(2, int(3 * cx / 320))]
        assert t.position == third


def test_forced_class_and_unknown_class():
    for cls in scenes.CLASSES:
        _, t = scenes.render_scene(np.random.default_rng(1), 128, 96, main_class=cls)
        assert t.main_class == cls
    with pytest.raises(GmSkipError, match="unknown scene class"):
        scenes.render_scene(np.random.default_rng(1), main_class="zebra")


def test_main_object_changes_the_pixels_it_claims():
    # Rendering the same rng state with another forced class must change the main box.
    a, ta = scenes.render_scene(np.random.default_rng(11), 320, 240, main_class="stop_sign")
    assert ta.colour == "red" and ta.display_name == "stop sign"
    x0, y0, x1, y1 = ta.bbox
    crop = a[y0:y1, x0:x1].reshape(-1, 3).astype(int)
    # a stop sign is red: some pixels are strongly red-dominant (unless fog washes it out)
    redness = crop[:, 0] - np.maximum(crop[:, 1], crop[:, 2])
    assert redness.max() > 40


def test_captions_and_display_names():
    _, t = scenes.render_scene(np.random.default_rng(4), 128, 96, main_class="traffic_light")
    assert len(t.captions) >= 3 and len(set(t.captions)) == len(t.captions)
    assert t.display_name == "traffic light"
    assert all("traffic light" in c for c in t.captions)
    assert t.light_state in t.captions[0]
    for cls in scenes.CLASSES:
        assert scenes.CLASS_SYNONYMS[cls][0] == scenes.DISPLAY_NAMES[cls] == cls.replace("_", " ")


def test_sample_from_truth_classify_and_caption():
    img, t = scenes.render_scene(np.random.default_rng(9), 128, 96, main_class="traffic_cone")
    s = scenes.sample_from_truth(img, t, "classify", stamp_ns=5, id="x")
    assert isinstance(s, Sample)
    assert s.prompt == scenes.PROMPTS["classify"] == "What is the main object?"
    assert s.answers[0] == "traffic cone" and "cone" in s.answers
    assert s.stamp_ns == 5 and s.id == "x" and s.meta["class"] == "traffic_cone"
    assert s.image is img
    c = scenes.sample_from_truth(img, t, "caption")
    assert c.prompt == "Describe the scene." and c.answers == t.captions
    with pytest.raises(GmSkipError, match="unknown task"):
        scenes.sample_from_truth(img, t, "count")


def test_bad_arguments():
    with pytest.raises(GmSkipError):
        list(scenes.generate_scenes(1, seed=-1))
    with pytest.raises(GmSkipError):
        scenes.render_scene(np.random.default_rng(0), 8, 8)
