"""Probe datasets from tiny fixtures in each official format: MTAT (.cP + .npy), MTG-Jamendo TSVs
and the generic folder; validation counts; the .cP unpickler refuses code."""

import os
import pickle

import numpy as np
import pytest

from probe_fixtures import SOURCE_TAGS, split_sizes, write_generic, write_jamendo, write_mtat
from keras_music_ssl.probe.datasets import (MTAT_TAGS, ProbeDataError, jamendo_tsv, load_probe_dataset,
                                            read_string_list)

pytestmark = pytest.mark.backend_independent
SIZES = split_sizes(train=5, valid=3, test=4)


def _tags_by_split(data):
    return {s: [row["tags"].split(";") for row in data.dataset.split(s).rows] for s in ("train", "valid", "test")}


def test_generic_folder_reads_every_split_with_its_tags(tmp_path):
    spec, expected = write_generic(tmp_path, seconds=1.0, sizes=SIZES)
    data = load_probe_dataset(spec)
    assert data.dataset.tags == list(SOURCE_TAGS)
    assert _tags_by_split(data) == expected
    assert data.report["splits"] == SIZES and data.report["dropped"] == {}
    assert all(os.path.isfile(p) for p in data.dataset.paths)
    assert load_probe_dataset(os.path.join(spec, "metadata.csv")).dataset.rows == data.dataset.rows


def test_mtat_uses_the_published_tag_order_and_swaps_npy_for_mp3(tmp_path):
    spec, expected = write_mtat(tmp_path, seconds=1.0, sizes=SIZES)
    data = load_probe_dataset(spec)
    assert data.dataset.tags == list(MTAT_TAGS) and len(MTAT_TAGS) == 50
    assert MTAT_TAGS[:5] == ("guitar", "classical", "slow", "techno", "strings") and MTAT_TAGS[-1] == "choral"
    by_split = _tags_by_split(data)
    order = {tag: i for i, tag in enumerate(MTAT_TAGS)}
    assert by_split == {s: [sorted(t, key=order.get) for t in tags] for s, tags in expected.items()}
    assert all(p.endswith(".mp3") and os.path.isfile(p) for p in data.dataset.paths)
    assert data.dataset.split("test").rows[0]["path"].startswith("d/")


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_split_lists_in_any_pickle_protocol_are_read(tmp_path, protocol):
    path = tmp_path / "list.cP"
    path.write_bytes(pickle.dumps(["0/a.npy", "1/b.npy"], protocol=protocol))
    assert read_string_list(path) == ["0/a.npy", "1/b.npy"]


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_split_list_that_would_run_code_is_refused_and_the_code_does_not_run(tmp_path):
    spec, _ = write_mtat(tmp_path, seconds=1.0, sizes=SIZES)
    marker = tmp_path / "pwned"
    exploit = _Exploit()
    exploit.marker = marker
    (tmp_path / "MTAT_split" / "train_list_pub.cP").write_bytes(pickle.dumps([exploit], protocol=2))
    with pytest.raises(ProbeDataError, match="refused: .*system"):
        load_probe_dataset(spec)
    assert not marker.exists()
    pickle.loads((tmp_path / "MTAT_split" / "train_list_pub.cP").read_bytes())  # the file does run code
    assert marker.exists()


def test_a_split_list_of_something_else_is_refused(tmp_path):
    path = tmp_path / "list.cP"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ProbeDataError, match="list of strings"):
        read_string_list(path)
    path.write_bytes(b"not a pickle")
    with pytest.raises(ProbeDataError):
        read_string_list(path)


def test_mtat_labels_that_do_not_match_the_list_are_an_error(tmp_path):
    spec, _ = write_mtat(tmp_path, seconds=1.0, sizes=SIZES)
    np.save(tmp_path / "MTAT_split" / "y_valid_pub.npy", np.zeros((2, 50)))
    with pytest.raises(ProbeDataError, match="y_valid_pub.npy: shape"):
        load_probe_dataset(spec)


def test_jamendo_orders_tags_by_category_then_name_and_reads_each_split(tmp_path):
    spec, expected = write_jamendo(tmp_path, seconds=1.0, sizes=SIZES)
    data = load_probe_dataset(spec)
    # genre---rock < instrument---bass < instrument---violin: never set-iteration order
    assert data.dataset.tags == ["rock", "bass", "violin"]
    assert {s: [sorted(t) for t in v] for s, v in _tags_by_split(data).items()} == \
        {s: [sorted(t) for t in v] for s, v in expected.items()}
    assert data.dataset.rows[0]["track_id"].startswith("track_")


def test_jamendo_defaults_to_top50tags_split_0_and_other_splits_are_files_of_their_own(tmp_path):
    write_jamendo(tmp_path, split_index=0, seconds=1.0, sizes=SIZES)
    write_jamendo(tmp_path, subset="instrument", split_index=3, seconds=1.0, sizes=SIZES)
    assert len(load_probe_dataset(f"jamendo:{tmp_path}").dataset) == sum(SIZES.values())
    assert len(load_probe_dataset(f"jamendo:{tmp_path}:instrument:3").dataset) == sum(SIZES.values())
    with pytest.raises(ProbeDataError, match="not found"):
        load_probe_dataset(f"jamendo:{tmp_path}:moodtheme")
    with pytest.raises(ProbeDataError, match="subset must be one of"):
        load_probe_dataset(f"jamendo:{tmp_path}:mood")
    with pytest.raises(ProbeDataError, match="split must be 0-4"):
        load_probe_dataset(f"jamendo:{tmp_path}:top50tags:7")


def test_jamendo_low_quality_audio_stands_in_for_a_missing_mp3(tmp_path):
    spec, _ = write_jamendo(tmp_path, seconds=1.0, sizes=SIZES)
    first = load_probe_dataset(spec).dataset.paths[0]
    os.rename(first, first[:-4] + ".low.mp3")
    data = load_probe_dataset(spec)
    assert data.dataset.paths[0] == first[:-4] + ".low.mp3" and data.report["dropped"] == {}


def test_validation_counts_missing_audio_unknown_tags_and_untagged_rows(tmp_path):
    spec, _ = write_generic(tmp_path, seconds=1.0, sizes=SIZES)
    lines = (tmp_path / "metadata.csv").read_text().splitlines()
    header, rows = lines[0], lines[1:]
    os.remove(tmp_path / rows[0].split(",")[0])  # a train clip's audio is gone
    rows[1] = rows[1].split(",")[0] + ",train,sitar"  # only an unknown tag: no tag left
    rows[2] = rows[2].split(",")[0] + ",train,low;sitar;kazoo"  # keeps 'low'
    (tmp_path / "metadata.csv").write_text("\n".join([header, *rows]) + "\n")
    data = load_probe_dataset(spec)
    assert data.report["dropped"] == {"missing_audio": 1, "no_tags": 1}
    assert data.report["unknown_tags"] == {"sitar": 2, "kazoo": 1}
    assert data.report["splits"]["train"] == SIZES["train"] - 2
    assert data.dataset.split("train").rows[0]["tags"] == "low"


def test_a_split_left_empty_is_a_clear_error(tmp_path):
    spec, _ = write_generic(tmp_path, seconds=1.0, sizes=SIZES)
    for row in load_probe_dataset(spec).dataset.split("valid").rows:
        os.remove(tmp_path / row["path"])
    with pytest.raises(ProbeDataError, match=r"split\(s\) \['valid'\] empty after validation.*missing_audio"):
        load_probe_dataset(spec)


@pytest.mark.parametrize("spec,message", [("nowhere", "no such folder"), ("mtat:nowhere", "no train_list_pub.cP"),
                                          ("jamendo:", "expected jamendo:ROOT")])
def test_bad_dataset_arguments_say_what_is_expected(spec, message):
    with pytest.raises(ProbeDataError, match=message):
        load_probe_dataset(spec)


def test_jamendo_subsets_are_tasks_of_one_dataset_and_each_track_is_one_row(tmp_path):
    write_jamendo(tmp_path, seconds=1.0, sizes=SIZES)
    write_jamendo(tmp_path, subset="instrument", seconds=1.0, sizes=SIZES, seed=1)  # same tracks, other tags
    data = load_probe_dataset(f"jamendo:{tmp_path}").dataset
    assert [t.name for t in data.tasks] == ["top50tags", "instrument"]
    assert len(data) == sum(SIZES.values())  # merged by TRACK_ID, not one row per subset
    single = load_probe_dataset(f"jamendo:{tmp_path}:instrument").dataset
    by_track = {row["track_id"]: row["tags"] for row in single.rows}
    assert all(row["instrument"] == by_track[row["track_id"]] for row in data.rows)
    assert [t.name for t in load_probe_dataset(f"jamendo:{tmp_path}:instrument+top50tags").dataset.tasks] == \
        ["instrument", "top50tags"]
    test_tracks = open(jamendo_tsv(str(tmp_path), "instrument", 0, "test")).read()
    with open(jamendo_tsv(str(tmp_path), "instrument", 0, "valid"), "w") as f:
        f.write(test_tracks)  # instrument's test tracks now in its valid split: the subsets disagree
    with pytest.raises(ProbeDataError, match="splits disagree"):
        load_probe_dataset(f"jamendo:{tmp_path}")
