"""Why ``loss_cls`` on the full Swin-T fixture differs from mmdet's by ~1e-3: proposal order at near-ties.

Two steps, one per environment, on a fixture made with ``make_fixture.py --model swin_t``:

    # 1. ours (this project's venv): our training proposals from our own features
    .venv/bin/python benchmarks/mmdet_proposal_order.py ours FIXTURE_DIR ours.pt
    # 2. mmdet (the mmdet venv): mmdet's own deterministic training loss (make_fixture.py's setup:
    #    DropPath off, evenly spaced sampler) with its RPN training proposals replaced by
    #      mmdet      its own proposals (the fixture's number)
    #      reordered  its own boxes and scores, put in our order (rows matched by IoU > 0.999):
    #                 an equivalent input wherever the swapped rows tie
    #      ours       our proposals
    /work/.mmdet-venv/bin/python benchmarks/mmdet_proposal_order.py mmdet FIXTURE_DIR ours.pt

Step 1 also prints where our proposals differ from mmdet's and the score gap of each differing row.
Measured on swin_t seed 13 (docs/architecture.md, "Parity"): ours 0.248397 vs mmdet 0.2481686;
mmdet itself gives 0.2483965 with its own boxes in our order, i.e. our number.
"""
from __future__ import annotations

import copy
import shlex
import sys
from pathlib import Path

import torch

TOOL = Path(__file__).resolve().parents[2] / "shared" / "tools" / "mmdet_reference"


def ours(fixture: Path, out_path: Path) -> None:
    from torchvision.ops import box_iou

    from swin_maskrcnn import load_model

    out = torch.load(fixture / "outputs.pt", weights_only=True)
    model = load_model(fixture / "checkpoint.pth")
    shapes = [tuple(m["img_shape"]) for m in out["img_metas"]]
    with torch.no_grad():
        feats = model.neck(model.backbone(out["batch_inputs"]))
        rpn = model.rpn_head
        cls, reg = rpn.maps(feats)
        props = rpn.proposals(cls, reg, rpn.anchors(feats), shapes, training=True)
    saved = []
    for i, (p, ref) in enumerate(zip(props, out["train"]["rpn_proposals"])):
        same = (p[:, :4] - ref["bboxes"]).abs().amax(1) < 1e-3
        match = box_iou(p[:, :4], ref["bboxes"]).max(1)
        print(f"image {i}: {int(same.sum())}/{len(same)} rows equal in place; rows that differ:")
        for j in (~same).nonzero().flatten().tolist():
            k = int(match.indices[j]) if match.values[j] > 0.999 else None
            where = f"mmdet row {k}" if k is not None else "no mmdet row"
            print(f"  row {j}: score {p[j, 4]:.7f}, {where}; mmdet's row {j} score {ref['scores'][j]:.7f}")
        saved.append({"bboxes": p[:, :4].clone(), "scores": p[:, 4].clone(),
                      "mmdet_row": torch.where(match.values > 0.999, match.indices, -1)})
    torch.save(saved, out_path)
    print(f"saved {out_path}")


def mmdet(fixture: Path, ours_path: Path) -> None:
    sys.path.insert(0, str(TOOL))
    import make_fixture as mf  # installs the mmcv._ext shim on import
    from mmengine.config import ConfigDict
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    ck = torch.load(fixture / "checkpoint.pth", weights_only=True)
    out = torch.load(fixture / "outputs.pt", weights_only=True)
    our = torch.load(ours_path, weights_only=True)
    register_all_modules()
    cmd = shlex.split(ck["meta"]["command"])
    args = mf.build_parser().parse_args(cmd[cmd.index("--out"):])
    preset = mf.PRESETS[args.model]
    args.sizes = mf.parse_sizes(args.sizes or preset["sizes"])
    args.scale = mf.parse_pair(args.scale) if args.scale else tuple(preset["scale"])
    torch.set_num_threads(args.threads)
    cfg = mf.load_config(args)
    scenes = mf.make_scenes(args, cfg.model.roi_head.bbox_head.num_classes)
    _, train_pipe = mf.pipeline_cfgs(cfg, args)
    data = mf.make_data(scenes, train_pipe, with_gt=True)
    model = MODELS.build(ConfigDict(ck["meta"]["model_config"]))
    model.load_state_dict(ck["state_dict"], strict=True)
    ref = out["train"]["rpn_proposals"]

    def reordered() -> list[dict]:
        """mmdet's rows in our order; a row of ours without an mmdet match keeps mmdet's row there."""
        new = []
        for r, o in zip(ref, our):
            idx = torch.where(o["mmdet_row"] >= 0, o["mmdet_row"], torch.arange(len(o["mmdet_row"])))
            if len(set(idx.tolist())) != len(idx):  # a duplicate match: fall back to identity there
                idx = torch.arange(len(idx))
            new.append({"bboxes": r["bboxes"][idx].clone(), "scores": r["scores"][idx].clone()})
        return new

    variants = {"mmdet": None, "reordered": reordered(), "ours": our}
    roi_loss = type(model.roi_head).loss
    print(f"{'proposals':10s} {'loss_cls':>10s} {'acc':>9s} {'loss_bbox':>10s} {'loss_mask':>10s}")
    for name, props in variants.items():
        def patched(x, rpn_results_list, batch_data_samples, props=props):
            if props is not None:
                for r, p in zip(rpn_results_list, props):
                    r.bboxes, r.scores = p["bboxes"].clone(), p["scores"].clone()
            return roi_loss(model.roi_head, x, rpn_results_list, batch_data_samples)

        model.roi_head.loss = patched  # run_training_losses wraps it, then removes it
        res = mf.run_training_losses(model, copy.deepcopy(data), out["batch_inputs"], verify=False)
        v = res["losses"]
        print(f"{name:10s} {v['loss_cls']:10.7f} {v['acc']:9.5f} {v['loss_bbox']:10.7f} {v['loss_mask']:10.7f}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("ours", "mmdet"):
        sys.exit(__doc__)
    {"ours": ours, "mmdet": mmdet}[sys.argv[1]](Path(sys.argv[2]), Path(sys.argv[3]))
