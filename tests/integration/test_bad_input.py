"""The bad-input corpus: broken and unusual datasets, configs and checkpoints, each run end to end
through ``swin-maskrcnn train`` and ``swin-maskrcnn evaluate`` (in-process ``cli.main``).

Every case is a row of :data:`CASES` and a test. A case builds a copy of a tiny 3-image COCO set
(56-64 px, categories 3 and 7) in a tmp folder, breaks it in one way, and says what each command
must do:

* ``ok``: exit 0; ``train`` runs its step and writes its checkpoints, ``evaluate`` scores every image;
* ``skip``: as ``ok``, and the run summary counts the skipped annotations / images by kind;
* ``error``: exit 2, no traceback, one message naming the file, image id, annotation id or key;
  the existing run folder it was pointed at keeps every file byte for byte and gains none.

What the library does for each case and why is written down in docs/data.md.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pytest
import torch
from PIL import Image

from swin_maskrcnn.apps.cli import main
from swin_maskrcnn.training.config import save_config

from conftest import make_tiny_coco, tiny_train_config

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")

REPO = Path(__file__).resolve().parents[2]
N_IMAGES = 3
SIZES = [(64, 64), (64, 56), (56, 64)]  # (w, h) of images 0, 1, 2


# ------------------------------------------------------------------------------------------------
# the case table
# ------------------------------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    mutate: Callable[[Path, dict], Optional[str]]  # (case root, parsed JSON) -> raw JSON text to write instead
    train: str  # "ok" | "skip" | "error" | "-" (not applicable)
    evaluate: str
    says: list[str] = field(default_factory=list)  # substrings every error message must contain
    overrides: list[str] = field(default_factory=list)  # extra train overrides
    eval_args: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # summary.data.train.problems expected counts


def _img(root: Path, k: int) -> Path:
    return root / "images" / f"img_{k:03d}.png"


def _rename(data: dict, k: int, name: str) -> None:
    data["images"][k]["file_name"] = name


def _first_ann(data: dict, image_index: int = 1) -> dict:
    return next(a for a in data["annotations"] if a["image_id"] == image_index + 1)


def missing_image(root, data):
    _img(root, 1).unlink()


def truncated_jpeg(root, data):
    arr = np.asarray(Image.open(_img(root, 1)).convert("RGB"))
    path = root / "images" / "img_001.jpg"
    Image.fromarray(arr).save(path, quality=95)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    _rename(data, 1, "img_001.jpg")


def zero_byte_png(root, data):
    _img(root, 1).write_bytes(b"")


def text_named_jpg(root, data):
    (root / "images" / "img_001.jpg").write_text("<html>404 not found</html>\n")
    _rename(data, 1, "img_001.jpg")


def _convert(k: int, fn: Callable[[np.ndarray], Image.Image]):
    def mutate(root, data):
        arr = np.asarray(Image.open(_img(root, k)).convert("RGB"))
        fn(arr).save(_img(root, k))
    return mutate


def _gray(arr):
    return Image.fromarray(arr).convert("L")


def _rgba(arr):
    rgba = np.concatenate([arr, np.full(arr.shape[:2] + (1,), 128, np.uint8)], axis=2)
    return Image.fromarray(rgba, mode="RGBA")


def _palette(arr):
    return Image.fromarray(arr).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)


def _gray16(arr):
    g = np.asarray(Image.fromarray(arr).convert("L")).astype(np.uint16) * 257
    return Image.fromarray(g)  # mode I;16


def _exif_jpeg(json_as_stored: bool):
    """Image 1 stored rotated 90 deg counter-clockwise with EXIF orientation 6 (display = rotate
    clockwise), so the displayed image is the original and the annotations fit it."""
    def mutate(root, data):
        arr = np.asarray(Image.open(_img(root, 1)).convert("RGB"))
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.fromarray(np.ascontiguousarray(np.rot90(arr, k=1))).save(
            root / "images" / "img_001.jpg", exif=exif, quality=95)
        _rename(data, 1, "img_001.jpg")
        if json_as_stored:
            im = data["images"][1]
            im["width"], im["height"] = im["height"], im["width"]
    return mutate


def size_disagrees(root, data):
    Image.open(_img(root, 1)).resize((100, 90)).save(_img(root, 1))


def polygon_two_points(root, data):
    _first_ann(data)["segmentation"].append([10.0, 10.0, 20.0, 20.0])  # a 2-point part next to a good one
    a = _first_ann(data, 2)
    a["segmentation"] = [[5.0, 5.0, 30.0, 5.0]]  # the only part has 2 points: annotation skipped


def polygon_nan(root, data):
    a = _first_ann(data)
    a["segmentation"] = [[float("nan")] + a["segmentation"][0][1:]]


def rle_size_disagrees(root, data):
    a = _first_ann(data)
    im = data["images"][1]
    a["segmentation"] = {"size": [im["height"] + 8, im["width"]], "counts": [10, 20, 30]}


def unknown_category(root, data):
    _first_ann(data)["category_id"] = 42


def box_outside(root, data):
    a = _first_ann(data)
    a["bbox"] = [500.0, 500.0, 20.0, 20.0]


def box_zero_area(root, data):
    a = _first_ann(data)
    a["bbox"] = [a["bbox"][0], a["bbox"][1], 0.0, 0.0]


def box_negative_width(root, data):
    a = _first_ann(data)
    a["bbox"] = [a["bbox"][0] + a["bbox"][2], a["bbox"][1], -a["bbox"][2], a["bbox"][3]]


def image_without_annotations(root, data):
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 2]


def no_annotations(root, data):
    data["annotations"] = []


def truncated_json(root, data):
    text = json.dumps(data)
    return text[: len(text) // 2]


def json_not_coco(root, data):
    return json.dumps([{"image_id": 1, "category_id": 3, "bbox": [1, 2, 3, 4], "score": 0.9}])


def duplicate_image_ids(root, data):
    data["images"][2]["id"] = data["images"][1]["id"]
    for a in data["annotations"]:
        if a["image_id"] == 3:
            a["image_id"] = 2


def duplicate_annotation_ids(root, data):
    data["annotations"][1]["id"] = data["annotations"][0]["id"]


def annotation_of_missing_image(root, data):
    _first_ann(data)["image_id"] = 999


def noncontiguous_ids(root, data):
    remap = {3: 1, 7: 90}
    for c in data["categories"]:
        c["id"] = remap[c["id"]]
    for a in data["annotations"]:
        a["category_id"] = remap[a["category_id"]]


def unchanged(root, data):
    return None


CASES = [
    # images
    Case("missing_image", missing_image, "error", "error", ["img_001.png", "image id 2", "file not found", "ann.json"]),
    Case("missing_image_skip", missing_image, "skip", "ok", overrides=["data.bad_images=skip"],
         eval_args=["--bad-images", "skip"], skipped={"image skipped (missing)": 1}),
    Case("truncated_jpeg", truncated_jpeg, "error", "error", ["img_001.jpg", "image id 2", "truncated"]),
    Case("zero_byte_png", zero_byte_png, "error", "error", ["img_001.png", "image id 2", "empty file (0 bytes)"]),
    Case("text_named_jpg", text_named_jpg, "error", "error", ["img_001.jpg", "image id 2", "not an image"]),
    Case("grayscale_png", _convert(1, _gray), "ok", "ok"),
    Case("rgba_png", _convert(1, _rgba), "ok", "ok"),
    Case("palette_png", _convert(1, _palette), "ok", "ok"),
    Case("gray16_png", _convert(1, _gray16), "ok", "ok"),
    Case("exif_rotated_jpeg", _exif_jpeg(json_as_stored=False), "ok", "ok"),
    Case("exif_rotated_json_as_stored", _exif_jpeg(json_as_stored=True), "error", "error",
         ["img_001.jpg", "image id 2", "swapped", "EXIF"]),
    Case("size_disagrees", size_disagrees, "error", "error", ["img_001.png", "image id 2", "100x90", "64x56"]),
    # annotations
    Case("polygon_under_3_points", polygon_two_points, "skip", "ok",
         skipped={"bad polygon part": 2, "no valid polygon": 1}),
    Case("polygon_nan", polygon_nan, "skip", "ok", skipped={"bad polygon part": 1, "no valid polygon": 1}),
    Case("rle_size_disagrees", rle_size_disagrees, "error", "error", ["image id 2", "annotation id", "RLE size"]),
    Case("unknown_category", unknown_category, "error", "error", ["image id 2", "annotation id", "category_id 42"]),
    Case("box_outside_image", box_outside, "skip", "ok", skipped={"box outside image": 1}),
    Case("box_zero_area", box_zero_area, "skip", "ok", skipped={"box under 1 px (zero-area or negative size)": 1}),
    Case("box_negative_width", box_negative_width, "skip", "ok",
         skipped={"box under 1 px (zero-area or negative size)": 1}),
    Case("image_without_annotations", image_without_annotations, "ok", "ok", overrides=["data.filter_empty_gt=false"]),
    Case("no_annotations_anywhere", no_annotations, "error", "error", ["ann.json", "no annotations at all"]),
    # the file
    Case("truncated_json", truncated_json, "error", "error", ["ann.json", "not a valid JSON"]),
    Case("json_not_coco", json_not_coco, "error", "error", ["ann.json", "not a COCO instance annotation file"]),
    Case("duplicate_image_ids", duplicate_image_ids, "error", "error", ["ann.json", "duplicate image id", "id 2",
                                                                        "img_001.png", "img_002.png"]),
    Case("duplicate_annotation_ids", duplicate_annotation_ids, "error", "error", ["ann.json", "duplicate annotation id"]),
    Case("annotation_of_missing_image", annotation_of_missing_image, "error", "error",
         ["ann.json", "annotation id", "image id 999"]),
    Case("noncontiguous_category_ids", noncontiguous_ids, "ok", "ok"),
    # configs
    Case("config_negative_lr", unchanged, "error", "-", ["optim.lr", "greater than 0"], overrides=["optim.lr=-0.01"]),
    Case("config_wrong_type", unchanged, "error", "-", ["optim.max_steps", "integer"], overrides=["optim.max_steps=ten"]),
    Case("config_unknown_key", unchanged, "error", "-", ["optim.learning_rate", "unknown key"],
         overrides=["optim.learning_rate=0.1"]),
]
CHECKPOINT_CASES = ["ckpt_truncated", "ckpt_code_running_pickle", "ckpt_classes_disagree"]


# ------------------------------------------------------------------------------------------------
# shared pieces
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Any]:
    """The clean dataset, one tiny config YAML, and a run trained from it for 1 step (its final
    model is the checkpoint ``evaluate`` uses on the cases whose own training fails)."""
    root = tmp_path_factory.mktemp("corpus")
    ann, imgs = make_tiny_coco(root / "clean", n_images=N_IMAGES, sizes=SIZES, object_sides=(14, 28))
    cfg = tiny_train_config(ann, imgs, root / "runs", "base", max_steps=1, probe_every_n_steps=0,
                            checkpoint_every_n_steps=1000, val_every_n_steps=1000)
    data = dict(val_ann=None, val_images=None, batch_size=1, scale=(64, 64), test_scale=(64, 64))
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update=data)})
    cfg_path = save_config(cfg, root / "tiny.yaml")
    assert main(["--log-level", "WARNING", "train", "--config", str(cfg_path)]) == 0
    return {"root": root, "clean": root / "clean", "config": cfg_path, "runs": root / "runs",
            "base": root / "runs" / "base"}


def _summary(out: str) -> dict:
    return json.loads(out[out.index("{\n"):])


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _assert_clean_error(rc: int, err: str, says: list[str]) -> None:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("swin-maskrcnn ")]
    assert len(lines) == 1 and ": error: " in lines[0], err
    for s in says:
        assert s in err, f"{s!r} not in the error message:\n{err}"


def _make_case(corpus: dict, case_dir: Path, mutate) -> tuple[Path, Path]:
    shutil.copytree(corpus["clean"], case_dir)
    ann = case_dir / "ann.json"
    data = json.loads(ann.read_text())
    raw = mutate(case_dir, data)
    ann.write_text(raw if raw is not None else json.dumps(data))
    return ann, case_dir / "images"


def _train(corpus, ann, imgs, run_name, extra=(), capsys=None) -> tuple[int, str, str]:
    argv = ["--log-level", "ERROR", "train", "--config", str(corpus["config"]),
            f"data.train_ann={ann}", f"data.train_images={imgs}",
            f"runtime.out_dir={corpus['runs']}", f"runtime.run_name={run_name}", *extra]
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _evaluate(ckpt, ann, imgs, capsys, extra=()) -> tuple[int, str, str]:
    rc = main(["--log-level", "ERROR", "evaluate", "--checkpoint", str(ckpt), "--ann", str(ann), "--images", str(imgs),
               "--device", "cpu", "--no-progress", "--scale", "64", "64", "--max-dets", "1", "10", "20", *extra])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _error_keeps_run_folder(corpus, run_call) -> tuple[int, str, str]:
    """Runs a failing ``train`` pointed at an existing run folder (a copy of the base run): the
    folder must come out byte for byte the same, with no file added."""
    before = _snapshot(corpus["base"])
    result = run_call("base")
    assert _snapshot(corpus["base"]) == before, "a failed run changed the existing run folder"
    return result


# ------------------------------------------------------------------------------------------------
# the data and config cases
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_corpus_case(case: Case, corpus, tmp_path, capsys):
    ann, imgs = _make_case(corpus, tmp_path / case.name, case.mutate)
    capsys.readouterr()

    if case.train == "error":
        rc, out, err = _error_keeps_run_folder(
            corpus, lambda run: _train(corpus, ann, imgs, run, case.overrides, capsys))
        _assert_clean_error(rc, err, case.says)
    else:
        rc, out, err = _train(corpus, ann, imgs, case.name, case.overrides, capsys)
        assert rc == 0, err
        summary = _summary(out)
        assert summary["global_step"] == 1 and Path(summary["final_model"]).is_file()
        problems = summary["data"]["train"]["problems"]
        for kind, n in case.skipped.items():
            assert problems.get(kind) == n, (kind, problems)
        if case.train == "ok":
            assert not any(k.startswith(("image skipped", "bad polygon", "box", "no valid")) for k in problems), problems

    if case.evaluate == "-":
        return
    ckpt = summary["final_model"] if case.train != "error" else corpus["base"] / "model_final.pt"
    rc, out, err = _evaluate(ckpt, ann, imgs, capsys, case.eval_args)
    if case.evaluate == "error":
        _assert_clean_error(rc, err, case.says)
        return
    assert rc == 0, err
    assert "bbox: AP" in out and "segm: AP" in out
    n_eval = int(out.split("images ")[1].split(",")[0])
    assert n_eval == N_IMAGES - sum(case.skipped.get(k, 0) for k in case.skipped if k.startswith("image skipped"))


def test_unusual_images_decode_like_the_original(corpus, tmp_path):
    """The valid-but-unusual encodings give the pixels they should (not only 'no error'): the EXIF
    JPEG as the original within JPEG error, 16-bit as the 8-bit gray it was made from."""
    from swin_maskrcnn.data import CocoInstanceDataset

    clean = CocoInstanceDataset(corpus["clean"] / "ann.json", corpus["clean"] / "images")
    original = clean.load_image(1).astype(np.int16)
    for name, mutate, tol in (("exif", _exif_jpeg(False), 12.0), ("gray16", _convert(1, _gray16), 0.0)):
        ann, imgs = _make_case(corpus, tmp_path / name, mutate)
        got = CocoInstanceDataset(ann, imgs).load_image(1).astype(np.int16)
        assert got.shape == original.shape
        if name == "exif":
            assert np.abs(got - original).mean() < tol
        else:
            gray = np.asarray(Image.fromarray(original.astype(np.uint8)).convert("L")).astype(np.int16)
            assert np.array_equal(got[..., 0], gray) and np.array_equal(got[..., 2], gray)


# ------------------------------------------------------------------------------------------------
# hardware the machine lacks
# ------------------------------------------------------------------------------------------------
def test_coco_recipe_asks_for_gpus_this_machine_lacks(corpus, capsys):
    """configs/swin_t_coco_1x.yaml asks for 8 GPUs: before any data is read, the error says which
    keys run it here (and keeps the global batch of 16)."""
    n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n_gpu >= 8:
        pytest.skip("this machine has the 8 GPUs the recipe asks for")
    clean = corpus["clean"]
    rc, out, err = _error_keeps_run_folder(corpus, lambda run: _train(
        {**corpus, "config": REPO / "configs" / "swin_t_coco_1x.yaml"}, clean / "ann.json", clean / "images", run,
        ["model.num_classes=2", "data.val_ann=null", "data.val_images=null"], capsys))
    _assert_clean_error(rc, err, ["runtime.devices=1"])
    if n_gpu == 0:
        _assert_clean_error(rc, err, ["runtime.accelerator=gpu", "runtime.accelerator=cpu", "runtime.strategy=auto",
                                      "optim.accumulate_grad_batches=8", "global batch of 16"])
    else:
        _assert_clean_error(rc, err, [f"runtime.devices={n_gpu}"])


# ------------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------------
class _Evil:
    """Unpickling this calls ``open(path, 'w')``: a file appears if the pickle's code ever runs."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("kind", CHECKPOINT_CASES)
def test_checkpoint_case(kind, corpus, tmp_path, capsys):
    clean = corpus["clean"]
    ann, imgs = clean / "ann.json", clean / "images"
    last = corpus["base"] / "checkpoints" / "last.ckpt"
    final = corpus["base"] / "model_final.pt"
    sentinel = tmp_path / "pwned.txt"
    capsys.readouterr()
    if kind == "ckpt_truncated":
        bad = tmp_path / "cut.ckpt"
        raw = last.read_bytes()
        bad.write_bytes(raw[: len(raw) // 3])
        says = ["cut.ckpt", "truncated"]
    elif kind == "ckpt_code_running_pickle":
        bad = tmp_path / "evil.ckpt"
        torch.save({"state_dict": {"x": _Evil(sentinel)}, "swin_maskrcnn": {}}, bad)
        says = ["evil.ckpt", "refused", "weights_only=True"]
    else:  # classes disagree: the checkpoints of the 2-class run against a 3-category annotation file
        data = json.loads(ann.read_text())
        data["categories"].append({"id": 9, "name": "extra"})
        ann = tmp_path / "three.json"
        ann.write_text(json.dumps(data))
        says = ["model.num_classes"]

    if kind == "ckpt_classes_disagree":
        rc, _, err = _evaluate(final, ann, imgs, capsys)
        _assert_clean_error(rc, err, ["2 classes", "3 categories"])
        # --resume of the 2-class run on the 3-category file, num_classes set to match the file
        rc, _, err = _error_keeps_run_folder(corpus, lambda run: _train(
            corpus, ann, imgs, run, ["model.num_classes=3", f"--resume={last}"], capsys))
        _assert_clean_error(rc, err, ["--resume", "model.num_classes=2", "model.num_classes=3", "three.json"])
        return

    rc, _, err = _evaluate(bad, ann, imgs, capsys)
    _assert_clean_error(rc, err, says)
    # --resume first looks for a complete Lightning checkpoint (training/checkpoint_io.resolve_resume)
    for extra, expect in (([f"--resume={bad}"], [bad.name, "--resume"]), ([f"init.checkpoint={bad}"], says)):
        rc, _, err = _error_keeps_run_folder(corpus, lambda run: _train(corpus, ann, imgs, run, extra, capsys))
        _assert_clean_error(rc, err, expect)
    assert not sentinel.exists(), "the pickle's code ran"


def test_resume_with_weights_only_checkpoint_says_use_init(corpus, capsys):
    clean = corpus["clean"]
    final = corpus["base"] / "model_final.pt"
    capsys.readouterr()
    rc, _, err = _error_keeps_run_folder(corpus, lambda run: _train(
        corpus, clean / "ann.json", clean / "images", run, [f"--resume={final}"], capsys))
    _assert_clean_error(rc, err, ["model_final.pt", "init.checkpoint="])


# ------------------------------------------------------------------------------------------------
# the CLI's error handling itself
# ------------------------------------------------------------------------------------------------
def test_debug_flag_keeps_the_traceback(corpus, tmp_path, capsys):
    from swin_maskrcnn.data import DataError

    ann, imgs = _make_case(corpus, tmp_path / "c", zero_byte_png)
    with pytest.raises(DataError, match="empty file"):
        main(["--debug", "evaluate", "--checkpoint", str(corpus["base"] / "model_final.pt"), "--ann", str(ann),
              "--images", str(imgs), "--device", "cpu"])


def test_a_bug_is_not_dressed_up_as_an_input_error(monkeypatch, capsys):
    """Only the library's input errors become one-line messages; anything else keeps its traceback."""
    import swin_maskrcnn.apps.cli as cli

    def boom(args):
        raise KeyError("internal")

    parser = cli.build_parser()
    args = parser.parse_args(["evaluate", "--checkpoint", "x", "--ann", "y", "--images", "z"])
    monkeypatch.setattr(cli, "build_parser", lambda: _Fixed(parser, args, boom))
    with pytest.raises(KeyError):
        cli.main(["evaluate", "--checkpoint", "x", "--ann", "y", "--images", "z"])


class _Fixed:
    def __init__(self, parser, args, func):
        self.parser, self.args = parser, args
        self.args.func = func

    def parse_args(self, argv):
        return self.args


# ------------------------------------------------------------------------------------------------
# the pieces, directly
# ------------------------------------------------------------------------------------------------
def test_fewer_gpus_than_asked_names_the_count(corpus, monkeypatch):
    """On a machine with 2 GPUs, the 8-GPU recipe is told to set runtime.devices=2 (the GPU branch,
    tested here on any machine by faking the count)."""
    from swin_maskrcnn.training.config import ConfigError, load_config
    from swin_maskrcnn.training.preflight import check_hardware

    clean = corpus["clean"]
    cfg = load_config(REPO / "configs" / "swin_t_coco_1x.yaml",
                      [f"data.train_ann={clean / 'ann.json'}", f"data.train_images={clean / 'images'}"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"runtime.devices=8 asks for 8 GPUs, but this machine has 2: set "
                                          r"runtime.devices=2 .*global batch of 16"):
        check_hardware(cfg)
    check_hardware(load_config(REPO / "configs" / "swin_t_coco_1x.yaml",
                               [f"data.train_ann={clean}", f"data.train_images={clean}", "runtime.devices=2"]))


def test_header_read_needs_no_decode_and_accepts_trailing_data(tmp_path, monkeypatch):
    """A complete JPEG/PNG is judged from its header and end marker (no pixel decode); a JPEG with
    data after its end marker (a phone's motion photo) is decoded once to confirm it, and passes."""
    from swin_maskrcnn.data.validation import probe_image

    arr = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.jpg")
    Image.fromarray(arr).save(tmp_path / "a.png")
    (tmp_path / "motion.jpg").write_bytes((tmp_path / "a.jpg").read_bytes() + b"ftypmp42" + bytes(500))
    loads = []
    original_load = Image.Image.load

    def counting_load(self):
        loads.append(self.format)
        return original_load(self)

    monkeypatch.setattr(Image.Image, "load", counting_load)
    assert probe_image(tmp_path / "a.jpg") == (30, 20) and probe_image(tmp_path / "a.png") == (30, 20)
    assert not [f for f in loads if f in ("JPEG", "PNG")], loads
    assert probe_image(tmp_path / "motion.jpg") == (30, 20)
    assert "JPEG" in loads


def test_ground_truth_for_cocoeval_drops_what_pycocotools_cannot_rasterise():
    from swin_maskrcnn.data.validation import sanitize_ground_truth

    good = [1.0, 1.0, 9.0, 1.0, 9.0, 9.0]
    anns = [
        {"id": 1, "segmentation": [good]},
        {"id": 2, "segmentation": [good, [1.0, 2.0, 3.0, 4.0]]},  # a 4-coordinate part: pycocotools reads a box
        {"id": 3, "segmentation": [[1.0, 2.0, 3.0, 4.0]]},
        {"id": 4, "segmentation": []},
        {"id": 5, "segmentation": {"size": [10, 10], "counts": [0, 100]}},
        {"id": 6, "segmentation": [[math.nan, 1.0, 9.0, 1.0, 9.0, 9.0]]},
    ]
    out = sanitize_ground_truth(anns, "x.json")
    assert [a["id"] for a in out] == [1, 2, 5]
    assert out[1]["segmentation"] == [good] and out[0]["segmentation"] == [good]
