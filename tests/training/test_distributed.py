"""Lightning DDP with 2 CPU processes (gloo) on a tiny model with frozen backbone stages: the run
ends, each rank trains on its own shard, only rank 0 writes the run's files, the first step's
gradients equal one process's on the same global batch, and the distributed validation equals a
single-process evaluation of the same weights.

One 2-process run (``tests/training/ddp_worker.py``, started the way a user starts ``swin-maskrcnn train``:
Lightning re-runs the command for rank 1) is shared by the tests of this module. In it, rank 1's
loss is NaN at step 1 (rank 0's is finite): both ranks must skip that step together.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddp_worker import Record
from swin_maskrcnn.checkpoint.loader import load_checkpoint
from swin_maskrcnn.data.coco import CocoInstanceDataset
from swin_maskrcnn.data.transforms import build_test_transforms
from swin_maskrcnn.evaluation import evaluate_model
from swin_maskrcnn.training.config import TrainConfig, config_from_dict, save_config
from swin_maskrcnn.training.module import val_shard
from swin_maskrcnn.training.train import RunBatchSampler, train
from conftest import make_tiny_coco, read_metrics_csv, tiny_train_config

WORKER = Path(__file__).resolve().parent / "ddp_worker.py"
STEPS = 3
NAN_STEP = 1  # rank 1's loss is NaN at this (0-based) step
VAL_IMAGES = 5  # val batches of 2: ranks predict 3 and 2 images


def ddp_config(ann: Path, imgs: Path, out: Path, name: str, **changes) -> TrainConfig:
    d = tiny_train_config(ann, imgs, out, name, max_steps=STEPS, probe_every_n_steps=0, checkpoint_every_n_steps=2,
                          val_every_n_steps=STEPS, max_val_images=VAL_IMAGES).model_dump(mode="json")
    d["model"]["frozen_stages"] = 1  # patch embedding, stage 1 and its norm: no gradient, no DDP error
    d["data"]["val_batch_size"] = 2
    d["runtime"].update(accelerator="cpu", devices=2, strategy="ddp")
    for section, values in changes.items():
        d[section].update(values)
    return config_from_dict(d)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    ann, imgs = make_tiny_coco(root / "coco", n_images=8)
    cfg = ddp_config(ann, imgs, root / "runs", "ddp2")
    yaml_path = save_config(cfg, root / "ddp2.yaml")
    rec = root / "record"
    env = dict(os.environ, OMP_NUM_THREADS="1", DDP_TEST_NAN_LOSS=f"1:{NAN_STEP}")
    env.pop("SWIN_MASKRCNN_RUN_DIR", None)
    proc = subprocess.run([sys.executable, str(WORKER), str(yaml_path), str(rec)], capture_output=True, text=True,
                          env=env, timeout=900, cwd=str(root))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return cfg, ann, imgs, root, rec


def test_two_process_run_ends_and_only_rank0_writes(ddp_run):
    cfg, ann, imgs, root, rec = ddp_run
    s0 = json.loads((rec / "summary_rank0.json").read_text())
    s1 = json.loads((rec / "summary_rank1.json").read_text())
    assert s0["world_size"] == s1["world_size"] == 2 and s0["global_step"] == s1["global_step"] == STEPS
    run = Path(s0["run_dir"])
    assert run == root / "runs" / "ddp2" and s1["run_dir"] == s0["run_dir"]
    # one copy of every file: checkpoints, one logger version, one validation record, one config
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt", "step_0000002.ckpt"]
    assert sorted(p.name for p in (run / "csv").iterdir()) == ["version_0"]
    assert sorted(p.name for p in (run / "val").iterdir()) == [f"step_{STEPS:07d}.json"]
    assert sorted(p.name for p in run.glob("config*.yaml")) == ["config.yaml"]
    assert (run / "model_final.pt").is_file()
    rows = read_metrics_csv(run)
    trained = [k for k in range(1, STEPS + 1) if k != NAN_STEP + 1]  # row k: after k steps
    losses = {int(float(r["step"])): float(r["train/loss"]) for r in rows if r.get("train/loss")}
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert [k for k in losses if math.isfinite(losses[k])] == trained  # the skipped step logs NaN


def test_a_nan_loss_on_one_rank_skips_the_step_on_both(ddp_run):
    cfg, ann, imgs, root, rec = ddp_run
    ids = [json.loads((rec / f"batches_rank{r}.json").read_text())[NAN_STEP]["ids"] for r in (0, 1)]
    for r in (0, 1):
        s = json.loads((rec / f"summary_rank{r}.json").read_text())
        assert s["nonfinite"]["skipped_steps"] == 1, r
        (event,) = s["nonfinite"]["events"]
        assert event["step"] == NAN_STEP and event["reason"] == "loss"
        assert event["image_ids"] == ids[0] + ids[1]  # both ranks' images, rank order
        assert list(event["loss_terms"]) == ["loss_cls@rank1"]
        sums = {int(k): v for k, v in json.loads((rec / f"params_rank{r}.json").read_text()).items()}
        before, after = sums[NAN_STEP]
        assert before == after  # no update on either rank
        assert all(sums[k][0] != sums[k][1] for k in sums if k != NAN_STEP)


def test_each_rank_trains_on_its_own_shard(ddp_run):
    cfg, ann, imgs, root, rec = ddp_run
    ds = CocoInstanceDataset(ann, imgs)
    per_rank = [json.loads((rec / f"batches_rank{r}.json").read_text()) for r in (0, 1)]
    for r, batches in enumerate(per_rank):
        expected = RunBatchSampler(ds.aspect_ratios(), cfg.data.batch_size, STEPS, seed=cfg.data.seed,
                                   rank=r, world_size=2)
        assert [b["ids"] for b in batches] == [[ds.img_ids[i] for i, _ in b] for b in expected]
    for b0, b1 in zip(*per_rank):  # the same step on both ranks, disjoint images
        assert b0["step"] == b1["step"] and not set(b0["ids"]) & set(b1["ids"])
    first_epoch = {i for batches in per_rank for b in batches[:2] for i in b["ids"]}
    assert first_epoch == set(ds.img_ids)  # 8 images, 4 batches: two per rank cover the data once


def test_first_step_gradients_equal_one_process_on_the_same_global_batch(ddp_run, tmp_path):
    """Rank r's micro-batch is batch r of the run's stream; one process with
    accumulate_grad_batches=2 sees the same two batches (and draws the same sampler numbers), so the
    averaged DDP gradients must equal its accumulated ones."""
    cfg, ann, imgs, root, rec = ddp_run
    g0 = torch.load(rec / "grads_rank0.pt", weights_only=True)
    g1 = torch.load(rec / "grads_rank1.pt", weights_only=True)
    single_cfg = ddp_config(ann, imgs, tmp_path, "single", runtime=dict(devices=1, strategy="auto"),
                            optim=dict(accumulate_grad_batches=2))
    one = Record(tmp_path / "record")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(single_cfg, callbacks=[one])
    finally:
        torch.set_num_threads(threads)
    ref = one.first_grads
    assert [b["ids"] for b in one.batches[:2]] == [
        json.loads((rec / f"batches_rank{r}.json").read_text())[0]["ids"] for r in (0, 1)]
    assert sorted(g0) == sorted(ref) and not any(k.startswith("backbone.patch_embed") for k in ref)
    for k in ref:
        assert torch.equal(g0[k], g1[k]), k  # all-reduced: identical on both ranks
        torch.testing.assert_close(g0[k], ref[k], rtol=1e-4, atol=1e-7, msg=k)
    assert max(float(v.abs().max()) for v in ref.values()) > 0


def test_distributed_validation_equals_a_single_process_evaluation(ddp_run):
    cfg, ann, imgs, root, rec = ddp_run
    run = root / "runs" / "ddp2"
    dist = json.loads((run / "val" / f"step_{STEPS:07d}.json").read_text())
    model, _, meta = load_checkpoint(run / "model_final.pt")
    assert meta["global_step"] == STEPS  # the weights the final validation used
    ds = CocoInstanceDataset(ann, imgs, transforms=build_test_transforms(cfg.model.test_scale))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single, _ = evaluate_model(model, ds, batch_size=cfg.data.val_batch_size, max_images=VAL_IMAGES,
                                   max_dets=cfg.runtime.val_max_dets, progress=False, score_thr=float(model.cfg.roi.score_thr))
    finally:
        torch.set_num_threads(threads)
    assert dist["num_images"] == single["num_images"] == VAL_IMAGES
    assert dist["mean_num_predictions"] == pytest.approx(single["mean_num_predictions"], abs=1e-9)
    for t in ("bbox", "segm"):
        for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR@1", "AR@10", "AR@100"):
            assert dist[t][k] == pytest.approx(single[t][k], abs=1e-9), (t, k)
    assert single["mean_num_predictions"] > 0  # there is something to compare


def test_val_shard_gives_whole_batches_to_the_ranks_in_turn():
    assert val_shard(5, 2, 0, 2) == [0, 1, 4] and val_shard(5, 2, 1, 2) == [2, 3]
    assert val_shard(7, 1, 2, 3) == [2, 5]
    for n, b, w in ((5, 2, 2), (11, 3, 4), (2, 4, 3), (0, 1, 2)):
        shards = [val_shard(n, b, r, w) for r in range(w)]
        assert sorted(i for s in shards for i in s) == list(range(n))


def test_ranks_started_by_torchrun_or_slurm_need_a_run_name(tmp_path, monkeypatch):
    from swin_maskrcnn.training.config import ConfigError
    from swin_maskrcnn.training.train import RUN_DIR_ENV, resolve_run_dir

    ann = tmp_path / "a.json"
    cfg = tiny_train_config(ann, tmp_path, tmp_path, None)
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)
    for key in ("WORLD_SIZE", "SLURM_NTASKS"):
        monkeypatch.delenv("WORLD_SIZE", raising=False)
        monkeypatch.delenv("SLURM_NTASKS", raising=False)
        assert resolve_run_dir(cfg).parent == tmp_path  # one process: a timestamped name
        monkeypatch.setenv(key, "4")
        with pytest.raises(ConfigError, match="one of 4 ranks .*set runtime.run_name"):
            resolve_run_dir(cfg)
        named = tiny_train_config(ann, tmp_path, tmp_path, "shared")
        assert resolve_run_dir(named) == tmp_path / "shared"
