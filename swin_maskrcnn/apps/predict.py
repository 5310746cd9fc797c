"""Predictions on image files: :class:`Predictor` (Python) and ``swin-maskrcnn predict`` (command line).

    swin-maskrcnn predict --checkpoint CKPT --out preds.json [--viz DIR] [--score-thr T]
        [--max-per-img N] [--batch-size B] [--device D] [--scale LONG SHORT | --no-resize]
        [--slice H W [--overlap R] [--slice-batch B] [--with-full-image] [--merge nms|nmm] [--merge-iou T]
        [--merge-metric iou|ios] [--class-agnostic-merge]] [--tta] [--tta-scales F ...]
        [--max-image-pixels N] [--resume] [--precision auto|fp32|bf16]
        [--backend torch|onnxruntime|openvino] IMAGE_OR_DIR...

With ``--slice`` / ``--tta`` images are predicted by tiles / augmented views and merged
(:mod:`swin_maskrcnn.inference`, docs/large_images.md).

``CKPT`` is any file :func:`swin_maskrcnn.load_model` reads. Folders are searched recursively for
:data:`~swin_maskrcnn.data.images.IMAGE_EXTENSIONS`; images are read as in training
(:func:`~swin_maskrcnn.data.images.load_rgb_image`: EXIF orientation, grayscale / RGBA / 16-bit to
8-bit RGB). The test resize is the checkpoint's test scale unless ``--scale`` / ``--no-resize`` say
otherwise. The output is a COCO results JSON list, one entry per detection::

    {"image": "photos/a.jpg", "file_name": "a.jpg", "category_id": 3, "bbox": [x, y, w, h],
     "score": 0.93, "segmentation": {"size": [h, w], "counts": "..."}}

``file_name`` is the path relative to the folder given on the command line (the file name for a
file argument); ``category_id`` is the checkpoint's dataset category id, or label + 1 when the
checkpoint stores none (mmdet files). An image that cannot be read or predicted (unreadable,
truncated, above the decompression-bomb limit of ``--max-image-pixels`` / PIL's, a prediction that
fails, e.g. out of memory) gets one error line naming it; the others are still predicted and the
exit status is 1.

Results are written as they come (``OUT.partial``, JSON lines, one per image:
:mod:`~swin_maskrcnn.apps.partial_results`) and ``OUT`` is written atomically at the end. A stop
signal (SIGTERM, Ctrl-C, SIGUSR1) ends the run after the image in progress, keeps the partial file,
says how many images it holds and prints the command to continue (``--resume``); the exit status
is 128 + the signal. A second Ctrl-C stops at once.

Loading a model and predicting imports no Lightning, pycocotools, matplotlib or TensorBoard; only
writing the JSON's RLE masks imports pycocotools.mask (:mod:`swin_maskrcnn.coco_results`), not COCOeval.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from ..data.images import IMAGE_EXTENSIONS, ImageTooLargeError, load_rgb_image, pil_to_rgb_uint8
from .options import HelpFormatter, add_inference_arguments, default_device, roi_overrides

log = logging.getLogger(__name__)

__all__ = ["Predictor", "ImageSource", "PredictionError", "collect_images", "image_error_line", "to_coco_results",
           "register_subcommand", "BACKENDS"]

#: what runs the network: the PyTorch model, or an exported graph (``export --format onnx|openvino``)
BACKENDS = ("torch", "onnxruntime", "openvino")

PathLike = Union[str, os.PathLike]
ImageInput = Union[PathLike, np.ndarray, Tensor, Any]  # Any: a PIL image


@dataclass(frozen=True)
class ImageSource:
    """An image file to predict: ``path`` as found, ``file_name`` relative to the folder given."""

    path: Path
    file_name: str


def collect_images(inputs: Sequence[PathLike]) -> tuple[list[ImageSource], list[str]]:
    """(image files, error lines) for files and folders (searched recursively, sorted, extensions of
    :data:`IMAGE_EXTENSIONS` in any case). A missing path or a folder without images is an error line."""
    found: list[ImageSource] = []
    errors: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                errors.append(f"{p}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
            found.extend(ImageSource(f, f.relative_to(p).as_posix()) for f in files)
        elif p.is_file():
            found.append(ImageSource(p, p.name))
        else:
            errors.append(f"{p}: no such file or folder")
    return found, errors


class Predictor:
    """Batched predictions for images, arrays or files, with the checkpoint's settings.

    ``model_or_path``: a ``SwinMaskRCNN`` or any checkpoint file (``overrides`` such as
    ``roi={"max_per_img": 300}`` then apply, as in :func:`~swin_maskrcnn.load_model`).
    ``scale``: ``"model"`` (the model's test scale), a (long, short) pair, or None (no resize).
    The model is moved to ``device`` (default: cuda when available) and put in eval mode.

    ``precision``: ``fp32``, ``bf16`` (torch: a bf16 copy of the model, converted once,
    :func:`~swin_maskrcnn.modeling.acceleration.inference_model`; OpenVINO's inference precision)
    or ``auto`` (bf16 where the device computes it natively, see
    :func:`~swin_maskrcnn.modeling.acceleration.resolve_precision`; the CLI's default).
    ``backend``: ``torch`` (a model or checkpoint), or an exported graph file run by ``onnxruntime``
    (``.onnx``, fp32) or ``openvino`` (``.xml`` + its ``.json``), on the CPU with ``threads``
    threads; the graph backends apply the same test resize, box rescaling and mask pasting as
    ``model.predict``, and take class names / category ids from the graph's metadata.

    :meth:`predict` returns, per image, ``boxes`` (K, 4) xyxy float32 in the original image's pixels,
    ``scores`` (K,), ``labels`` (K,) in 0..C-1, ``masks`` (K, H, W) bool, ``category_ids`` (K,) (the
    dataset's ids, else label + 1), ``class_names`` (K names) and ``image`` (the path, or None).

    ``slicing`` (:class:`~swin_maskrcnn.inference.SliceConfig`) and / or ``tta``
    (:class:`~swin_maskrcnn.inference.TTAConfig`) predict large images by tiles and / or augmented
    views (docs/large_images.md); results then hold the masks as box-sized crops instead of
    ``masks``: ``mask_crops`` (K bool tensors) at ``mask_windows`` (K, 4) ``[x0, y0, x1, y1)``, and
    ``image_size`` (h, w) (:func:`~swin_maskrcnn.inference.crops_to_dense` makes dense masks when the
    image is small). ``progress`` shows a bar over each image's tiles.
    """

    def __init__(
        self,
        model_or_path: Union[nn.Module, PathLike],
        device: Optional[Union[str, torch.device]] = None,
        batch_size: int = 1,
        scale: Union[str, tuple[int, int], None] = "model",
        slicing: Any = None,
        tta: Any = None,
        progress: bool = False,
        max_image_pixels: Optional[int] = None,
        precision: str = "fp32",
        backend: str = "torch",
        threads: Optional[int] = None,
        **overrides: Any,
    ) -> None:
        if max_image_pixels is not None and max_image_pixels < 1:
            raise ValueError(f"max_image_pixels must be >= 1, got {max_image_pixels}")
        self.max_image_pixels = max_image_pixels  # decompression-bomb limit for files (None: PIL's)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.backend = backend
        self.graph: Optional[Any] = None
        self.slicing, self.tta, self.progress = slicing, tta, bool(progress)
        if backend != "torch":
            if slicing is not None or tta is not None:
                raise ValueError(f"slicing / tta run the torch model; backend {backend!r} runs an exported graph")
            self._init_graph(model_or_path, device, batch_size, scale, precision, threads, overrides)
            return
        from ..modeling.acceleration import inference_model, resolve_precision

        if isinstance(model_or_path, (str, os.PathLike)):
            from ..checkpoint.loader import load_checkpoint

            model, _, _ = load_checkpoint(model_or_path, **overrides)
        elif isinstance(model_or_path, nn.Module):
            if overrides:
                raise ValueError(f"overrides {sorted(overrides)} need a checkpoint path; a model keeps its config")
            model = model_or_path
        else:
            raise TypeError(f"expected a model or a checkpoint path, got {type(model_or_path).__name__}")
        self.device = default_device(device)
        self.model = model.to(self.device).eval()
        self.precision = resolve_precision(precision, self.device)
        self.runner = inference_model(self.model, self.precision)  # what runs: the model or its bf16 copy
        self.batch_size = int(batch_size)
        if isinstance(scale, str):
            if scale != "model":
                raise ValueError(f"scale must be 'model', a (long, short) pair or None, got {scale!r}")
            scale = model.cfg.test_scale  # the one owner of the test resize (None: own size)
        self.scale = None if scale is None else (int(scale[0]), int(scale[1]))
        self.class_names = list(model.meta.class_names)
        self.label_to_cat_id = model.meta.category_ids()  # the data set's ids, else label + 1

    def _init_graph(self, path: Any, device: Any, batch_size: int, scale: Union[str, tuple[int, int], None],
                    precision: str, threads: Optional[int], overrides: dict) -> None:
        """An exported graph (``.onnx`` for onnxruntime, ``.xml`` for OpenVINO) in place of the model."""
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"backend {self.backend!r} runs an exported file; got a {type(path).__name__}")
        if overrides:
            raise ValueError(f"overrides {sorted(overrides)} apply to the torch backend; an exported graph has its "
                             "thresholds baked in (export again with them)")
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError(f"backend {self.backend!r} runs on the CPU, got device {device!r}")
        self.device = torch.device("cpu")
        if self.backend == "onnxruntime":
            from .onnx_runtime import OnnxPredictor

            if precision == "bf16":
                raise ValueError("the onnxruntime backend runs the fp32 graph; use backend='openvino' for bf16")
            self.precision = "fp32"
            self.graph = OnnxPredictor(path, threads=threads)
        else:
            from .openvino_runtime import OpenVinoPredictor

            self.graph = OpenVinoPredictor(path, threads=threads, precision=precision)
            self.precision = self.graph.precision
        meta = self.graph.metadata
        self.model = None
        self.batch_size = int(batch_size)
        if isinstance(scale, str):
            if scale != "model":
                raise ValueError(f"scale must be 'model', a (long, short) pair or None, got {scale!r}")
            scale = (meta.get("model_config") or {}).get("test_scale")
        self.scale = None if scale is None else (int(scale[0]), int(scale[1]))
        n = int(meta.get("num_classes", 0)) or len(meta.get("class_names", []))
        self.class_names = list(meta.get("class_names") or [str(i) for i in range(n)])
        mapping = meta.get("label_to_cat_id")
        if isinstance(mapping, dict):
            self.label_to_cat_id = {int(k): int(v) for k, v in mapping.items()}
        elif isinstance(mapping, list):
            self.label_to_cat_id = {i: int(v) for i, v in enumerate(mapping)}
        else:
            self.label_to_cat_id = {i: i + 1 for i in range(n)}

    def _graph_predict(self, image: Union[np.ndarray, Tensor]) -> dict[str, Tensor]:
        """``model.predict`` of one image with the exported graph: the same test resize (uint8 bilinear,
        mmdet's rounding), box rescaling and mask pasting as the torch path, the network in the graph."""
        from ..modeling.postprocess import paste_masks, rescale_boxes
        from ..modeling.preprocess import resize_keep_ratio, to_chw_255

        assert self.graph is not None
        orig = to_chw_255(image)
        h0, w0 = int(orig.shape[1]), int(orig.shape[2])
        net = resize_keep_ratio(orig, self.scale) if self.scale is not None else orig
        net_u8 = net.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
        raw = self.graph.raw(net_u8)
        boxes = rescale_boxes(torch.from_numpy(raw["boxes"]), (int(net.shape[1]), int(net.shape[2])), (h0, w0))
        masks = paste_masks(torch.from_numpy(raw["mask_probs"]), boxes, h0, w0, self.graph.mask_thr)
        return {"boxes": boxes, "scores": torch.from_numpy(raw["scores"]), "labels": torch.from_numpy(raw["labels"]),
                "masks": masks}

    # --------------------------------------------------------------------------------------------
    def _as_array(self, item: ImageInput) -> tuple[Union[np.ndarray, Tensor], Optional[str]]:
        if isinstance(item, (str, os.PathLike)):
            return load_rgb_image(item, max_pixels=self.max_image_pixels), str(item)
        if isinstance(item, (np.ndarray, Tensor)):
            return item, None
        if hasattr(item, "mode") and hasattr(item, "size"):  # a PIL image: the file reader's conversion
            from PIL import ImageOps

            return pil_to_rgb_uint8(ImageOps.exif_transpose(item)), None
        raise TypeError(f"expected an image path, array, tensor or PIL image, got {type(item).__name__}")

    def _run_large(self, images: list[Union[np.ndarray, Tensor]]) -> list[dict[str, Any]]:
        """Sliced and / or augmented prediction, one image at a time (masks as crops)."""
        from ..inference import predict_instances

        outs = []
        for im in images:
            inst = predict_instances(self.runner, im, self.slicing, self.tta, test_scale=self.scale,
                                     precision=self.precision, progress=self.progress)
            thr = float(self.model.cfg.roi.mask_thr)
            size = (int(im.shape[0]), int(im.shape[1])) if isinstance(im, np.ndarray) else (int(im.shape[1]), int(im.shape[2]))
            outs.append({"boxes": inst.boxes, "scores": inst.scores, "labels": inst.labels,
                         "mask_crops": inst.binary_crops(thr), "mask_windows": inst.windows, "image_size": size})
        return outs

    def _run(self, images: list[Union[np.ndarray, Tensor]], names: list[Optional[str]],
             keep_images: bool = False) -> list[dict[str, Any]]:
        if self.slicing is not None or self.tta is not None:
            outs = self._run_large(images)
        elif self.graph is not None:
            outs = [self._graph_predict(im) for im in images]
        else:
            outs = self.runner.predict(images, resize=self.scale is not None, scale=self.scale)
        results = []
        for out, name, arr in zip(outs, names, images):
            r = {k: (v.detach().cpu() if isinstance(v, Tensor) else v) for k, v in out.items()}
            labels = r["labels"].tolist()
            r["category_ids"] = torch.tensor([self.label_to_cat_id[lab] for lab in labels], dtype=torch.int64)
            r["class_names"] = [self.class_names[lab] for lab in labels]
            r["image"] = name
            if keep_images:
                r["image_array"] = arr
            results.append(r)
        return results

    def iter_predict(
        self, items: Iterable[ImageInput], keep_images: bool = False
    ) -> Iterator[tuple[int, Union[dict[str, Any], Exception]]]:
        """(index, result) per input in order; an input that cannot be read yields (index, the error).

        ``keep_images`` adds ``image_array``, the image as it was read (for drawing)."""
        batch: list[Union[np.ndarray, Tensor]] = []
        names: list[Optional[str]] = []
        idx: list[int] = []
        for i, item in enumerate(items):
            try:
                arr, name = self._as_array(item)
            except (OSError, ValueError) as e:
                yield i, e
                continue
            batch.append(arr)
            names.append(name)
            idx.append(i)
            if len(batch) == self.batch_size:
                yield from self._run_each(batch, names, idx, keep_images)
                batch, names, idx = [], [], []
        if batch:
            yield from self._run_each(batch, names, idx, keep_images)

    def _run_each(self, batch: list[Union[np.ndarray, Tensor]], names: list[Optional[str]], idx: list[int],
                  keep_images: bool) -> list[tuple[int, Union[dict[str, Any], Exception]]]:
        """``_run`` with per-image failures: a batch that fails is predicted again image by image,
        and an image that fails alone yields (index, PredictionError) (e.g. masks that do not fit in memory)."""
        try:
            return list(zip(idx, self._run(batch, names, keep_images)))
        except Exception as e:  # noqa: BLE001 - any failure is one image's error line, the others go on
            if len(batch) > 1:
                return [r for one in zip(batch, names, idx) for r in self._run_each([one[0]], [one[1]], [one[2]], keep_images)]
            log.debug("prediction of %s failed", names[0], exc_info=True)
            return [(idx[0], PredictionError(names[0], e))]

    def predict(self, images_or_paths: Union[ImageInput, Sequence[ImageInput]]) -> list[dict[str, Any]]:
        """Predictions for image paths, uint8 (H, W, 3) arrays, (3, H, W) tensors or PIL images, in order.

        An unreadable file raises (FileNotFoundError / ValueError naming it)."""
        if isinstance(images_or_paths, (str, os.PathLike, np.ndarray, Tensor)) or hasattr(images_or_paths, "mode"):
            images_or_paths = [images_or_paths]
        results = []
        for _, r in self.iter_predict(images_or_paths):
            if isinstance(r, Exception):
                raise r
            results.append(r)
        return results


class PredictionError(RuntimeError):
    """One image's prediction failed (out of memory, ...); the message names the image and the cause."""

    def __init__(self, image: Optional[str], cause: BaseException) -> None:
        text = str(cause).strip().splitlines()[0][:300] if str(cause).strip() else ""
        super().__init__(f"{image or 'image'}: prediction failed ({type(cause).__name__}{': ' + text if text else ''})")
        self.image, self.cause = image, cause


def image_error_line(exc: BaseException) -> str:
    """The one error line of an image that could not be predicted; a too-large image names the limit
    and the option that raises it."""
    if isinstance(exc, ImageTooLargeError):
        need = exc.width * exc.height
        how = "raise" if exc.explicit else "if the image is legitimate (a scan, a satellite tile), set"
        return f"{exc}; {how} the limit with --max-image-pixels {need} (Predictor(max_image_pixels=...)){SLICING_HINT}"
    return str(exc)


#: appended to the too-large line: the options for predicting large images in tiles
SLICING_HINT = "; --slice H W predicts it in tiles (docs/large_images.md)"


def to_coco_results(result: dict[str, Any], image: Optional[str] = None, file_name: Optional[str] = None) -> list[dict]:
    """One image's :meth:`Predictor.predict` result as COCO result dicts (bbox xywh, RLE masks).

    Imports pycocotools.mask (for the RLE encoding)."""
    from ..coco_results import detection_results

    entries = detection_results(result["boxes"], result["scores"], result["category_ids"], result.get("masks"),
                                where=image or "image")
    if "mask_crops" in result:  # sliced / TTA results: each RLE from its crop, no full-image mask
        from ..inference import crop_rle

        h, w = result["image_size"]
        for e, crop, win in zip(entries, result["mask_crops"], result["mask_windows"].tolist()):
            e["segmentation"] = crop_rle(crop, win, h, w)
    head = {}
    if image is not None:
        head["image"] = image
    if file_name is not None:
        head["file_name"] = file_name
    return [{**head, **e} for e in entries]


# ------------------------------------------------------------------------------------------------
# command line (plugged into swin_maskrcnn.apps.cli)
# ------------------------------------------------------------------------------------------------
def register_subcommand(sub: Any) -> None:
    p = sub.add_parser(
        "predict",
        help="detect and segment objects in image files and folders",
        description=(
            "Predict with a checkpoint (ours .pt/.safetensors, a Lightning .ckpt from 'train', or an mmdet .pth) on "
            "image files and folders (searched recursively). Writes a COCO results JSON (image, file_name, "
            "category_id, bbox xywh, score, RLE segmentation) and, with --viz, one PNG per image."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and folders")
    p.add_argument("--checkpoint", required=True, help="checkpoint file")
    p.add_argument("--out", required=True, help="COCO results JSON to write")
    p.add_argument("--viz", metavar="DIR", default=None, help="write one PNG per image with masks, boxes, names, scores")
    p.add_argument("--display-thr", type=float, default=0.3, metavar="T",
                   help="--viz draws detections scoring at least T (the JSON keeps all); small images are drawn "
                        "upscaled to >= 512 px")
    add_inference_arguments(p)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--scale", type=int, nargs=2, default=None, metavar=("LONG", "SHORT"),
                      help="keep-ratio test resize (default: the checkpoint's test scale)")
    size.add_argument("--no-resize", action="store_true", help="feed images at their own size")
    p.add_argument("--max-image-pixels", type=int, default=None, metavar="N",
                   help="decompression-bomb limit in pixels (width x height): larger files are an error line, files up "
                        "to N are predicted (default: PIL's, 178956970)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from OUT.partial (the images it holds are not predicted again)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="bf16: a bf16 copy of the model (torch) or OpenVINO's bf16 inference precision; auto: bf16 on a CPU with "
                        "AMX-BF16 / AVX512-BF16 or a CUDA GPU with bf16, fp32 elsewhere (logged); onnxruntime: fp32")
    p.add_argument("--backend", choices=list(BACKENDS), default="torch",
                   help="what runs the network: torch (--checkpoint: any checkpoint), onnxruntime (--checkpoint: a .onnx "
                        "from 'export --format onnx') or openvino (--checkpoint: a .xml from 'export --format openvino')")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    from ..inference import options

    options.add_arguments(p)
    p.set_defaults(func=_cmd_predict)


def _viz_path(viz_dir: Path, file_name: str, used: set[Path]) -> Path:
    path = viz_dir / Path(file_name).with_suffix(".png")
    n = 1
    while path in used:
        path = viz_dir / Path(file_name).with_name(f"{Path(file_name).stem}_{n}.png")
        n += 1
    used.add(path)
    return path


def _cmd_predict(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..errors import ConfigError
    from ..signals import DEFAULT_STOP_SIGNALS, StopSignals, exit_code
    from .partial_results import PartialResults

    if args.max_image_pixels is not None and args.max_image_pixels < 1:
        raise ConfigError(f"--max-image-pixels must be >= 1, got {args.max_image_pixels}")

    roi = roi_overrides(args)
    scale: Union[str, tuple[int, int], None] = None if args.no_resize else (tuple(args.scale) if args.scale else "model")
    from ..inference import options

    slicing, tta = options.from_args(args)
    if args.backend != "torch" and (roi or slicing is not None or tta is not None):
        raise ConfigError(f"--score-thr / --max-per-img / --slice / --tta apply to --backend torch; the exported graph "
                          f"{args.checkpoint} has its thresholds baked in")
    try:
        predictor = Predictor(args.checkpoint, device=args.device, batch_size=args.batch_size, scale=scale,
                              slicing=slicing, tta=tta, progress=not args.no_progress,
                              max_image_pixels=args.max_image_pixels, precision=args.precision, backend=args.backend,
                              **({"roi": roi} if roi else {}))
    except ImportError as e:  # the backend's package is missing
        raise ConfigError(f"--backend {args.backend}: {e}") from None
    sources, errors = collect_images(args.inputs)
    for line in errors:
        print(f"swin-maskrcnn predict: error: {line}", file=sys.stderr)
    log.info("predicting %d images with %s (backend %s, %s, test scale %s, device %s)", len(sources), args.checkpoint,
             predictor.backend, predictor.precision, predictor.scale or "none", predictor.device)
    viz_dir = Path(args.viz) if args.viz else None
    used: set[Path] = set()
    settings = {"score_thr": args.score_thr, "max_per_img": args.max_per_img, "scale": predictor.scale,
                "batch_size": args.batch_size, "max_image_pixels": args.max_image_pixels,
                "slicing": None if slicing is None else repr(slicing), "tta": None if tta is None else repr(tta)}
    partial = PartialResults(args.out, str(args.checkpoint), json.loads(json.dumps(settings)))
    done = partial.start(resume=args.resume)
    todo = [s for s in sources if str(s.path) not in done]
    for s in sources:  # the resumed images keep their visualisation file names
        if str(s.path) in done and viz_dir is not None:
            _viz_path(viz_dir, s.file_name, used)
    failed = len(errors)
    stop = StopSignals(DEFAULT_STOP_SIGNALS, what="predict",
                       force_message=lambda: f"the results so far are in {partial.path} (continue with --resume)")
    stop.install()
    try:
        with tqdm(total=len(sources), initial=len(sources) - len(todo), desc="predict", unit="img",
                  disable=args.no_progress, file=sys.stderr) as bar:
            for i, r in predictor.iter_predict((s.path for s in todo), keep_images=viz_dir is not None):
                src = todo[i]
                bar.update(1)
                if not isinstance(r, Exception):
                    try:
                        entries = to_coco_results(r, str(src.path), src.file_name)
                        if viz_dir is not None:
                            _write_viz(predictor, r, _viz_path(viz_dir, src.file_name, used), args.display_thr)
                    except Exception as e:  # noqa: BLE001 - e.g. RLE-encoding masks too large for memory
                        r = PredictionError(str(src.path), e)
                    else:
                        partial.add(str(src.path), src.file_name, entries)
                if isinstance(r, Exception):
                    failed += 1
                    tqdm.write(f"swin-maskrcnn predict: error: {image_error_line(r)}", file=sys.stderr)
                if stop.requested:
                    break
    finally:
        stop.restore()
        partial.close()
    n_ok = sum(1 for s in sources if str(s.path) in partial.done)
    if stop.requested:
        argv = list(getattr(args, "argv", None) or sys.argv[1:])
        again = " ".join(shlex.quote(a) for a in ["swin-maskrcnn", *argv, *([] if "--resume" in argv else ["--resume"])])
        print(f"stopped by {stop.name} after {n_ok} of {len(sources)} images: their results are kept in "
              f"{partial.path}; continue with:\n  {again}", file=sys.stderr, flush=True)
        return exit_code(stop.signum)  # type: ignore[arg-type]
    results = partial.finish([str(s.path) for s in sources])
    print(f"{len(results)} detections on {n_ok} images written to {args.out}"
          + (f"; {failed} inputs failed" if failed else ""))
    return 1 if failed else 0


def _write_viz(predictor: Predictor, result: dict[str, Any], path: Path, display_thr: float = 0.3) -> None:
    from .visualize import draw_detections, save_png

    if "mask_crops" in result:  # sliced / TTA: full resolution, downscaled when huge
        from ..inference.sliced import as_uint8_chw
        from ..inference.viz import draw_crops

        save_png(draw_crops(as_uint8_chw(result["image_array"]), result["boxes"], result["labels"],
                            predictor.class_names, result["mask_crops"], result["mask_windows"], result["scores"],
                            score_thr=display_thr), path)
        return
    picture = draw_detections(result["image_array"], result["boxes"], result["labels"], predictor.class_names,
                              masks=result["masks"], scores=result["scores"], score_thr=display_thr)
    save_png(picture, path)
