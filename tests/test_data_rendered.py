"""The offline labeled dataset (music21 scores rendered with TimGM6mb): tags checked against the MIDI that was
rendered, splits by work, the audio itself, and the same files for the same seed whatever the worker count."""

import filecmp
import os

import numpy as np
import pretty_midi
import pytest
import soundfile as sf

from keras_music_ssl.data.labeled_csv import read_labeled_dataset, split_tags
from keras_music_ssl.data.rendered import SIZES, TAGS, build_rendered_dataset, list_works, render

pytestmark = pytest.mark.backend_independent

# The reference for the tags: General MIDI's own instrument classes (as pretty_midi names them).
GM_CLASSES = {
    "piano": {"Piano"}, "mallet": {"Chromatic Percussion"}, "organ": {"Organ"}, "guitar": {"Guitar"},
    "bass": {"Bass"}, "strings": {"Strings", "Ensemble"}, "voice": {"Ensemble"}, "brass": {"Brass"},
    "woodwind": {"Reed", "Pipe"}, "synth": {"Synth Lead", "Synth Pad"},
}


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """The tiny rendered dataset, built once per test session."""
    out = tmp_path_factory.mktemp("rendered_tiny")
    return build_rendered_dataset(out, size="tiny", seed=0, workers=1, progress=False)


def tree_files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files
                  if ".cache" not in d)


def test_tiny_dataset_is_in_the_labeled_format_with_every_split(tiny):
    again = read_labeled_dataset(tiny.root)
    assert again.tags == list(TAGS) and len(again) == 24
    assert set(again.column("style")) == {"bach", "oneills1850", "ryansMammoth"}
    assert all(len(again.split(s)) > 0 for s in ("train", "valid", "test"))
    assert again.labels.sum(axis=1).min() >= 1  # every clip has at least one tag


def test_splits_never_share_a_work(tiny):
    works = {s: set(tiny.split(s).column("work")) for s in ("train", "valid", "test")}
    assert not (works["train"] & works["valid"] or works["train"] & works["test"] or works["valid"] & works["test"])


def test_tags_match_the_instruments_in_the_rendered_midi(tiny):
    seen = set()
    for row in tiny.rows:
        midi = pretty_midi.PrettyMIDI(os.path.join(tiny.root, row["midi"]))
        sounding = [inst for inst in midi.instruments if inst.notes]
        drums = any(inst.is_drum for inst in sounding)
        classes = {pretty_midi.program_to_instrument_class(inst.program) for inst in sounding if not inst.is_drum}
        tags = set(split_tags(row["tags"]))
        seen |= tags
        assert ("drums" in tags) == drums
        # Every melodic instrument's GM class belongs to one of the clip's families, and every family plays.
        for inst in sounding:
            if not inst.is_drum:
                assert any(pretty_midi.program_to_instrument_class(inst.program) in GM_CLASSES[t]
                           for t in tags - {"drums"})
        assert all(GM_CLASSES[t] & classes for t in tags - {"drums"})
        assert all(0.0 <= n.start < n.end <= float(row["duration"]) + 1e-3 for inst in sounding for n in inst.notes)
    assert len(seen) >= 8  # the orchestration is really random


def test_clips_are_8_s_of_16_khz_mono_audio_that_sounds(tiny):
    for path in tiny.paths:
        audio, rate = sf.read(path, dtype="float32")
        assert rate == 16000 and audio.shape == (128000,)
        assert np.max(np.abs(audio)) == pytest.approx(0.9, abs=1e-3)
        assert np.sqrt(np.mean(audio**2)) > 0.01


def test_a_fresh_synthesizer_renders_the_same_midi_identically(tiny):
    first, second = (pretty_midi.PrettyMIDI(os.path.join(tiny.root, r["midi"])) for r in tiny.rows[:2])
    a = render(first, 2.0)
    render(second, 2.0)  # another clip in between must not leak into the next one
    np.testing.assert_array_equal(render(first, 2.0), a)


def test_same_seed_same_files_whatever_the_worker_count(tiny, tmp_path):
    again = build_rendered_dataset(tmp_path / "again", size="tiny", seed=0, workers=2, progress=False)
    files = tree_files(tiny.root)
    assert files == tree_files(again.root) and len(files) >= 2 * 24 + 3
    match, mismatch, errors = filecmp.cmpfiles(tiny.root, again.root, files, shallow=False)
    assert not mismatch and not errors


def test_another_seed_gives_another_dataset_from_the_same_score_cache(tmp_path):
    small = dict(works_per_style=2, clips_per_work=1, clip_seconds=4.0, workers=1, progress=False)
    cache = tmp_path / "scores"
    first = build_rendered_dataset(tmp_path / "seed0", seed=0, cache_dir=cache, **small)
    second = build_rendered_dataset(tmp_path / "seed1", seed=1, cache_dir=cache, **small)
    again = build_rendered_dataset(tmp_path / "seed0_again", seed=0, cache_dir=cache, **small)  # all cached
    assert len(first) == len(second) == 6
    assert first.rows != second.rows and first.rows == again.rows
    for a, b in zip(first.paths, again.paths):
        assert filecmp.cmp(a, b, shallow=False)


def test_every_style_lists_scores_but_no_analyses_or_whole_collections():
    works = list_works(tuple(SIZES["full"]["styles"]))
    for style in SIZES["full"]["styles"]:
        assert any(w.style == style for w in works), style
    assert not any(w.source.endswith(".rntxt") for w in works)  # Roman-numeral analyses, not scores
    numbered = {w.source for w in works if w.number}
    assert not any(w.source in numbered and not w.number for w in works)
    assert len({w.id for w in works}) == len(works)


def test_tasks_are_instruments_style_and_tempo_and_an_older_build_gains_them(tiny, tmp_path):
    import csv
    import shutil

    from keras_music_ssl.data.embedded import embedded_dataset

    assert [(t.name, t.type) for t in tiny.tasks] == [("instruments", "multi-label"), ("style", "single-label"),
                                                      ("tempo", "single-label")]
    assert tiny.task("style").classes == SIZES["tiny"]["styles"]
    for row in tiny.rows:  # the tempo class from the tempo the MIDI file was rendered at
        qpm = pretty_midi.PrettyMIDI(os.path.join(tiny.root, row["midi"])).get_tempo_changes()[1][0]
        assert float(row["qpm"]) == pytest.approx(qpm, abs=0.01)
        assert row["tempo"] == ("slow" if qpm < 108 else "moderate" if qpm < 135 else "fast")
    # A build from before tasks.json (no qpm/tempo columns) gets the same labels from its MIDI files.
    old = tmp_path / "rendered-tiny-seed0"
    shutil.copytree(tiny.root, old, ignore=shutil.ignore_patterns("audio", ".cache"))
    os.remove(old / "tasks.json")
    with open(old / "metadata.csv", newline="") as f:
        rows = [{k: v for k, v in r.items() if k not in ("qpm", "tempo")} for r in csv.DictReader(f)]
    with open(old / "metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    migrated = embedded_dataset("tiny", 0, str(tmp_path), progress=False)
    assert [t.name for t in migrated.tasks] == ["instruments", "style", "tempo"]
    assert migrated.column("tempo") == tiny.column("tempo")
