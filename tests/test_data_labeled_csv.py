"""The generic labeled format (metadata.csv + tags.txt) read strictly: a BOM is accepted, a broken
row or header is one line naming the file and the line (csv.DictReader gave None fields, kept the
second of two same-named columns, or raised a csv.Error naming nothing)."""

import pytest

from keras_music_ssl.data.csvfile import CsvFileError
from keras_music_ssl.data.labeled_csv import read_labeled_dataset
from keras_music_ssl.errors import KmsslError
from keras_music_ssl.probe.datasets import ProbeDataError, load_probe_dataset

pytestmark = pytest.mark.backend_independent

GOOD = "path,split,tags\na.wav,train,rock\nb.wav,test,jazz;rock\n"


def dataset(tmp_path, metadata, tags="rock\njazz\n", encoding="utf-8"):
    (tmp_path / "metadata.csv").write_text(metadata, encoding=encoding)
    (tmp_path / "tags.txt").write_text(tags, encoding=encoding)
    return tmp_path


def test_a_utf8_bom_in_metadata_and_tags_is_not_part_of_the_first_column_or_tag(tmp_path):
    data = read_labeled_dataset(dataset(tmp_path, "\ufeff" + GOOD, tags="\ufeffrock\njazz\n"))
    assert data.tags == ["rock", "jazz"]
    assert [row["path"] for row in data.rows] == ["a.wav", "b.wav"]
    assert data.labels.tolist() == [[1.0, 0.0], [1.0, 1.0]]


@pytest.mark.parametrize("metadata,where", [
    ("path,split,tags,tags\na.wav,train,rock,jazz\n", "metadata.csv:1: column(s) ['tags'] appear more than once"),
    ("path,split,tags\na.wav,train,rock\nb.wav,test\n", "metadata.csv:3: no ['tags'] value, 2 field(s), the header"),
    ("path,split,tags\na.wav,train,rock,extra\n", "metadata.csv:2: 4 field(s), the header has 3"),
    ("path,split,tags\na.wav,train,\"" + "x" * 140000 + "\"\n", "metadata.csv:2: field larger than field limit"),
    ("path,split\na.wav,train\n", "metadata.csv:1: missing column(s) ['tags']"),
    ("", "metadata.csv:1: empty file"),
])
def test_a_broken_row_or_header_is_one_line_naming_the_file_and_line(tmp_path, metadata, where):
    root = dataset(tmp_path, metadata)
    with pytest.raises(CsvFileError) as error:
        read_labeled_dataset(root)
    message = str(error.value)
    assert where in message and "\n" not in message and isinstance(error.value, KmsslError)
    with pytest.raises(ProbeDataError, match="metadata.csv:") as error:  # kmssl probe: one line, exit 2
        load_probe_dataset(str(root))
    assert isinstance(error.value, KmsslError)


def test_rows_without_their_trailing_optional_fields_read_them_as_empty(tmp_path):
    data = read_labeled_dataset(dataset(tmp_path, "path,split,tags,style,work\na.wav,train,rock\nb.wav,test,jazz,x\n"))
    assert [(row["style"], row["work"]) for row in data.rows] == [("", ""), ("x", "")]


def test_a_metadata_file_that_is_not_utf8_names_its_line(tmp_path):
    (tmp_path / "tags.txt").write_text("rock\n")
    rows = b"a.wav,train,rock\n" * 2000 + b"caf\xe9.wav,train,rock\n"  # past the first decoded block
    (tmp_path / "metadata.csv").write_bytes(b"path,split,tags\n" + rows)
    with pytest.raises(CsvFileError, match=r"metadata.csv:2002: not UTF-8 text"):
        read_labeled_dataset(tmp_path)


def test_written_datasets_read_back_and_leave_no_temporary(tmp_path):
    from keras_music_ssl.data.labeled_csv import write_labeled_dataset

    rows = [{"path": "a.wav", "split": "train", "tags": "rock", "note": 'a "quoted", comma'}]
    data = write_labeled_dataset(tmp_path / "d", rows, ["rock"])
    assert data.rows[0]["note"] == 'a "quoted", comma'
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["metadata.csv", "tags.txt"]


TASKS = '{"genre": {"column": "tags", "type": "multi-label"}, "mood": {"column": "mood", "type": "single-label"}}'


def test_tasks_json_names_the_tasks_in_order_with_their_classes(tmp_path):
    root = dataset(tmp_path, "path,split,tags,mood\na.wav,train,rock,sad\nb.wav,test,jazz;rock,\nc.wav,valid,,happy\n")
    (root / "tasks.json").write_text(TASKS)
    data = read_labeled_dataset(root)
    assert [(t.name, t.type, t.column) for t in data.tasks] == [("genre", "multi-label", "tags"),
                                                                ("mood", "single-label", "mood")]
    assert data.task("genre").classes == ("rock", "jazz")  # tags.txt order
    assert data.task("mood").classes == ("happy", "sad")  # sorted values found
    labels, labelled = data.task("mood").labels(data.rows)
    assert labels.tolist() == [[0, 1], [0, 0], [1, 0]] and labelled.tolist() == [True, False, True]
    assert data.split("test").tasks == data.tasks
    # without tasks.json: the one `tags` task of older datasets
    (root / "tasks.json").unlink()
    assert [(t.name, t.classes) for t in read_labeled_dataset(root).tasks] == [("tags", ("rock", "jazz"))]


@pytest.mark.parametrize("tasks,message", [
    ('{"a b": {"column": "tags", "type": "multi-label"}}', "task name 'a b'"),
    ('{"mood": {"column": "mood", "type": "regression"}}', "needs \"column\" and \"type\""),
    ('{"mood": {"column": "mood", "type": "single-label", "classes": ["sad", "sad"]}}', "distinct"),
    ('{"mood": {"column": "mood", "type": "single-label", "classes": ["happy"]}}', "metadata.csv:2: task 'mood'"),
    ('{"mood": {"column": "colour", "type": "single-label"}}', "missing column(s) ['colour']"),
    ('[1]', "tasks.json: expected a non-empty object"),
])
def test_a_broken_tasks_json_is_one_line_naming_the_file(tmp_path, tasks, message):
    root = dataset(tmp_path, "path,split,tags,mood\na.wav,train,rock,sad\n")
    (root / "tasks.json").write_text(tasks)
    with pytest.raises(CsvFileError) as error:
        read_labeled_dataset(root)
    assert message in str(error.value) and len(str(error.value).splitlines()) == 1
