"""Each task's real source schema, read by the same loaders and adapters a run with network uses,
and `mubench data`, which checks a dataset against its card before a long run."""
from pathlib import Path

import datasets
import numpy as np
import pytest
from fixtures import DATA_FIXTURES, text

from mubench.errors import UserError


@pytest.mark.parametrize("task", DATA_FIXTURES)
def test_mubench_data_passes_on_every_fixture(task, task_data, cli):
    done = cli("data", task, "--data-dir", task_data(task))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith("ok: the data has the card's schema")
    assert "task examples: train" in done.stdout and "train[1]:" in done.stdout


def test_mubench_data_fails_on_ucf101_as_a_video_column(tmp_path, cli):
    """The earlier fixture's schema (one MP4 per row) is not what flwrlabs/ucf101 serves."""
    rows = {"video": [{"bytes": b"\x00", "path": None}] * 2, "label": [0, 1]}
    features = datasets.Features({"video": datasets.Video(), "label": datasets.ClassLabel(names=["a", "b"])})
    table = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"train": table, "test": table}).save_to_disk(tmp_path / "old")
    done = cli("data", "ucf101", "--data-dir", tmp_path / "old")
    assert done.returncode == 1
    problems = [line for line in done.stderr.splitlines() if line.startswith("mubench: problem:")]
    assert "split 'train' has no column 'clip_id' (it has: video, label)" in done.stderr
    assert len(problems) == 8  # image, video_id, clip_id and frame missing, in both splits
    assert "train[0]" not in done.stdout


def test_mubench_data_fails_on_speech_commands_without_the_export_schema(tmp_path, cli):
    """The earlier fixture had train and test only, and its labels as plain integers."""
    rows = {"file": ["yes/a.wav"], "audio": [{"bytes": b"", "path": "yes/a.wav"}], "label": [0],
            "is_unknown": [False], "speaker_id": ["a"], "utterance_id": [0]}
    table = datasets.Dataset.from_dict(rows)
    datasets.DatasetDict({"train": table, "test": table}).save_to_disk(tmp_path / "old")
    done = cli("data", "speech_commands", "--data-dir", tmp_path / "old")
    assert done.returncode == 1
    assert "the source has no split 'validation' (it has: train, test)" in done.stderr
    assert "column 'audio' is struct, the card says Audio" in done.stderr
    assert "column 'label' is int64, the card says ClassLabel" in done.stderr
    assert "utterance_id' is int64, the card says int8" in done.stderr


def test_a_run_refuses_a_source_of_another_schema_in_one_line(tmp_path, cli, task_data):
    task_data("ucf101")  # its models
    table = datasets.Dataset.from_dict({"video": [{"bytes": b"\x00", "path": None}], "label": [0]})
    datasets.DatasetDict({"train": table, "test": table}).save_to_disk(tmp_path / "old")
    done = cli("-q", "run", "--task", "ucf101", "--method", "neggrad", "--data-dir", tmp_path / "old", "--output-path", tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "task 'ucf101': split 'train' has no column 'image'" in done.stderr and "mubench data ucf101" in done.stderr


def test_ddi_pairs_are_every_pair_of_the_ddi_test_documents(tmp_path, registry):
    """Pair counts per label are the XML's own; the DrugNER test documents are not read."""
    from mubench.data import load_splits

    folder = text.ddi(tmp_path / "ddi")
    splits = load_splits(registry.card("ddi2013"), registry.dataset_loaders, folder, registry.dataset_adapters)
    expected = text.ddi_pair_counts(folder)
    assert ("train", "NONE") in expected and ("train", "INT") in expected  # fixture covers negatives and a type
    for split in ("train", "test"):
        names = splits[split].features["label"].names
        counted = {}
        for label in splits[split]["label"]:
            counted[split, names[label]] = counted.get((split, names[label]), 0) + 1
        assert counted == {k: v for k, v in expected.items() if k[0] == split}
    assert not any("Test for" in pair for pair in splits["test"]["document_id"]) and len(splits["test"]) > 0
    untyped = splits["train"].filter(lambda row: row["pair_id"].endswith(".s1.p0"))
    assert untyped["label"] == [0]  # ddi="true" without a type counts as NONE, as the published counts do


def test_ddi_mentions_are_marked_at_their_offsets_even_when_they_overlap():
    from mubench.tasks.text import RelationClassificationTask, mark_spans

    markers = RelationClassificationTask.markers
    sentence = "other diagnostic or therapeutic monoclonal antibodies"
    # "diagnostic [or therapeutic] monoclonal antibodies" covers "therapeutic monoclonal antibodies"
    assert mark_spans(sentence, [(6, 53), (20, 53)], markers) == \
        "other << diagnostic or [[ therapeutic monoclonal antibodies ]] >>"
    assert mark_spans("ab cd", [(0, 2), None], markers) == "<< ab >> cd"
    assert mark_spans("abcd", [(0, 2), (2, 4)], markers) == "<< ab >>[[ cd ]]"


def speech_export(task_data, registry):
    """The Speech Commands fixture as the card's source reads it from a local copy of the parquet export."""
    from mubench.data import local_copy, read_source

    return read_source(local_copy(registry.card("speech_commands").dataset, task_data("speech_commands")))


def test_a_local_copy_of_the_parquet_export_reads_the_cards_config_only(task_data, registry):
    """The copy holds v0.01 and v0.02 folders, as the export branch does; without data_dir they would merge."""
    raw = speech_export(task_data, registry)
    assert {name: len(split) for name, split in raw.items()} == {"train": 48, "validation": 12, "test": 16}
    assert isinstance(raw["train"].features["audio"], datasets.Audio)
    assert raw["train"].features["label"].names[-1] == "_silence_" and raw["train"].features["label"].num_classes == 31
    merged = datasets.load_dataset(str(task_data("speech_commands")))
    assert len(merged["train"]) == 48 + 3


def test_long_silence_recordings_are_cut_into_one_second_clips(task_data, registry):
    import io

    import soundfile

    from mubench.tasks.speech_commands import one_second_silence

    raw = speech_export(task_data, registry)
    cut = one_second_silence(raw, {})
    silence = raw["train"].features["label"].str2int("_silence_")
    for split in raw:
        before = [row for row in raw[split].cast_column("audio", datasets.Audio(decode=False)) if row["label"] == silence]
        seconds = [soundfile.info(io.BytesIO(row["audio"]["bytes"])).frames // 16000 for row in before]
        after = [row for row in cut[split] if row["label"] == silence]
        assert len(after) == sum(seconds) and len(cut[split]) == len(raw[split]) - len(before) + sum(seconds)
        assert all(soundfile.info(io.BytesIO(row["audio"]["bytes"])).frames == 16000 for row in after)
    assert len(cut["train"]) > len(raw["train"]) and len(cut["test"]) == len(raw["test"])  # test silence is 1 s already


def test_ucf101_frames_become_clips_in_frame_order(task_data):
    from mubench.tasks.ucf101 import clips

    frames = datasets.load_from_disk(str(task_data("ucf101")))["train"]
    grouped = clips(frames, 5)
    first = grouped[0]
    rows = sorted((r for r in frames.select_columns(["clip_id", "frame"]) if r["clip_id"] == first["clip_id"]),
                  key=lambda r: r["frame"])
    chosen = np.linspace(0, len(rows) - 1, 5).round().astype(int)
    by_frame = {r["frame"]: i for i, r in enumerate(frames.select_columns(["clip_id", "frame"]))
                if r["clip_id"] == first["clip_id"]}
    expected = [np.asarray(frames[by_frame[rows[i]["frame"]]]["image"]) for i in chosen]
    assert len(grouped) == len(set(frames["clip_id"])) and list(grouped["clip_id"]) == sorted(set(frames["clip_id"]))
    assert all(np.array_equal(np.asarray(a), b) for a, b in zip(first["frames"], expected))
    assert len(clips(frames, None)[0]["frames"]) == len(rows)  # null keeps every frame


def test_ucf101_refuses_a_clip_whose_frames_disagree_on_the_label(task_data):
    from mubench.tasks.ucf101 import clips

    frames = datasets.load_from_disk(str(task_data("ucf101")))["train"]
    first = frames[0]["clip_id"]
    mixed = frames.map(lambda row: {"label": 2 if row["clip_id"] == first and row["frame"] == 3 else row["label"]})
    with pytest.raises(UserError, match="frames of a clip carry different labels"):
        clips(mixed, 4)


def test_the_unsupervised_imdb_split_never_enters_training(task_data, registry):
    from mubench.harness import Prepared

    prepared = Prepared(registry, "imdb", None, 0.05, task_data("imdb"))
    prepared.load()
    raw = datasets.load_from_disk(str(task_data("imdb")))
    assert prepared.n_train == len(raw["train"]) and -1 in raw["unsupervised"]["label"]
    labels = np.concatenate([np.asarray(prepared.train.__getitems__([i])["labels"]) for i in range(len(prepared.train))])
    assert labels.min() >= 0


def test_nlvr2_without_a_local_copy_says_where_to_get_it(cli):
    done = cli("data", "nlvr2")
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "no hub serves its data" in done.stderr and "--data-dir" in done.stderr


def test_nlvr2_names_a_missing_image(task_data, tmp_path, registry):
    import shutil

    from mubench.data import load_splits

    copy = tmp_path / "nlvr2"
    shutil.copytree(task_data("nlvr2"), copy)
    next((copy / "dev").glob("*-img1.png")).unlink()
    with pytest.raises(UserError, match=r"NLVR2 dev.json: no image dev-.*-img1.png"):
        load_splits(registry.card("nlvr2"), registry.dataset_loaders, copy, registry.dataset_adapters)


def test_card_source_arguments_reach_load_dataset(monkeypatch, registry):
    """revision, data_dir and load_args go to datasets; a script-only repo's error says how to read its export."""
    from mubench.data import read_source

    seen = {}

    def fake_load(path, name=None, **kwargs):
        seen.update(path=path, name=name, **kwargs)
        raise RuntimeError("Dataset scripts are no longer supported, but found speech_commands.py")

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    spec = {"path": "google/speech_commands", "revision": "refs/convert/parquet", "data_dir": "v0.01", "load_args": {"num_proc": 2}}
    with pytest.raises(UserError, match="revision: refs/convert/parquet and data_dir: <config>"):
        read_source(spec)
    assert seen == {"path": "google/speech_commands", "name": None, "revision": "refs/convert/parquet",
                    "data_dir": "v0.01", "num_proc": 2}


@pytest.mark.parametrize(("repo", "labels", "message"), [
    ("someone/kws-v2-35", 35, "it predicts 35 labels, the task has 12"),
    ("someone/kws-reordered", ["no", "yes", "up", "down", "left", "right", "on", "off", "stop", "go", "_silence_", "_unknown_"],
     "its labels are ['no', 'yes'"),
])
def test_a_released_original_of_another_label_space_is_refused_in_one_line(repo, labels, message, task_data, cli, tmp_path):
    from fixtures import speech
    from fixtures.hub import publish_original

    data = task_data("speech_commands")
    publish_original(repo, "AutoModelForAudioClassification", *speech.tiny_model("facebook/wav2vec2-base"), labels)
    done = cli("-q", "run", "--task", "speech_commands", "--model", "wav2vec2-base", "--method", "neggrad", "--original", repo,
               "--data-dir", data, "--output-path", tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert f"original '{repo}' does not fit task 'speech_commands': {message}" in done.stderr
    assert not list(tmp_path.glob("*.json"))


def test_the_released_original_is_the_default_and_original_train_trains_one(task_data, registry, tmp_path):
    from mubench.harness import RunConfig, run

    data = task_data("imdb")
    released, _ = run(RunConfig(task="imdb", method="original", data_dir=data, output_path=tmp_path / "a"), registry)
    trained, _ = run(RunConfig(task="imdb", method="original", data_dir=data, output_path=tmp_path / "b", original="train"), registry)
    assert released["model_info"]["original"] == "jialicheng/imdb-bert-base" and released["model_info"]["original_sha256"] is None
    assert "originals/imdb/bert-base" in trained["model_info"]["original"]
    assert released["results"]["original"] != trained["results"]["original"]


def test_ddi_downloads_its_release_once_and_not_offline(tmp_path, monkeypatch):
    import shutil

    from mubench.tasks.ddi2013 import load_ddi_xml

    archive = Path(shutil.make_archive(str(tmp_path / "release"), "zip", text.ddi(tmp_path / "ddi")))
    spec = {"options": {"url": archive.as_uri()}}
    monkeypatch.setenv("MUBENCH_HOME", str(tmp_path / "home"))
    with pytest.raises(UserError, match="in offline mode: download it yourself and pass its folder with --data-dir"):
        load_ddi_xml(spec)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    first = load_ddi_xml(spec)
    archive.unlink()  # the second load reads the extracted copy
    second = load_ddi_xml(spec)
    assert len(first["train"]) == len(second["train"]) > 0 and first["test"]["marked"] == second["test"]["marked"]


def test_a_clip_reads_alike_from_a_video_file_and_from_its_frames():
    """Video copies (MP4 bytes, decoded by PyAV) and UCF101's frame lists sample the same frames."""
    import io

    import av
    from PIL import Image

    from mubench.tasks.video import read_frames

    frames = [np.full((32, 32, 3), 20 * t, np.uint8) for t in range(10)]  # frame t is a flat grey of level 20·t
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    from_video = read_frames({"bytes": out.getvalue(), "path": None}, 4)
    from_images = read_frames([Image.fromarray(frame) for frame in frames], 4)
    assert from_video.shape == from_images.shape == (4, 32, 32, 3)
    assert [float(f.mean()) for f in from_images] == [0.0, 60.0, 120.0, 180.0]  # frames 0, 3, 6, 9
    assert np.allclose([f.mean() for f in from_video], [0, 60, 120, 180], atol=4)
    with pytest.raises(ValueError, match="a clip has no frames"):
        read_frames([], 4)


def test_nlvr2_reads_a_saved_copy_with_image_columns_as_it_is(task_data, tmp_path, registry):
    from mubench.data import load_splits

    release = load_splits(registry.card("nlvr2"), registry.dataset_loaders, task_data("nlvr2"), registry.dataset_adapters)
    datasets.DatasetDict({"train": release["train"], "dev": release["test"]}).save_to_disk(tmp_path / "copy")
    copy = load_splits(registry.card("nlvr2"), registry.dataset_loaders, tmp_path / "copy", registry.dataset_adapters)
    assert copy["test"]["identifier"] == release["test"]["identifier"]
    assert np.array_equal(np.asarray(copy["train"][3]["left_image"]), np.asarray(release["train"][3]["left_image"]))
