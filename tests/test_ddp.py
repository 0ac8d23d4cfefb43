"""DDP on CPU (gloo): 2 processes with batch B optimise the same objective as 1 process with batch 2B.
(``FAIRCLIP_DDP_DEVICE=cuda`` runs the same checks on 2 GPUs with NCCL: tools/gpu_check.sh does.)

Each process builds the real trainer (FAIR, MUST and LaFTer; tiny CLIP, miniature tree) and runs one
``forward_backward`` on its half of a fixed batch; the single process runs the whole batch. Same loss (mean
over ranks), same gradients, same parameters after the step; evaluation counts every test image once. Then
``torchrun`` end to end: rank 0 alone writes the log, checkpoints and results.
"""
import json
import os
import socket
import sys

import pytest
import torch
import torch.multiprocessing as mp

from tests.conftest import REPO, run_cli, trainer_cfg

B = 4  # per-process batch
N_CROPS = 3
CUDA = os.environ.get("FAIRCLIP_DDP_DEVICE", "cpu") == "cuda"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TRAINER_OPTS = {
    # a softer softmax: both loss terms matter; the self-trained LAS term on (its grad-carrying crop forward
    # goes through DDP too) on the selected crops as they are: the strong re-cut draws random numbers in
    # each process, as the views do, which a fixed batch cannot split between ranks
    "FAIR": ["TRAINER.FAIR.N_CROPS", str(N_CROPS), "TRAINER.FAIR.TOP_K", "2", "TRAINER.FAIR.LOGIT_SCALE", "10.0",
             "TRAINER.FAIR.LAS_LOSS_WEIGHT", "1.0", "TRAINER.FAIR.LAS_CROP_VIEW", "weak"],
    # every sample confident (the CE term is non-zero), softer softmax
    "MUST": ["TRAINER.MUST.CONF_THRESHOLD", "0.0", "TRAINER.MUST.LOGIT_SCALE", "10.0"],
    # prompts, visual norms and the classifier train on the strong view against the teacher's labels
    "LaFTer": ["TRAINER.LAFTER.N_PROMPTS", "2", "TRAINER.LAFTER.TEXT_STEPS", "2"],
}


def _cfg(root, clip_path, out, batch, *opts, trainer="FAIR"):
    return trainer_cfg(
        trainer, "oxford_pets", root, out, "MODEL.BACKBONE.PATH", clip_path, "DATALOADER.NUM_WORKERS", "0",
        "DATALOADER.TRAIN_X.BATCH_SIZE", str(batch), "OPTIM.MAX_EPOCH", "1", "VERBOSE", "False", "USE_CUDA", str(CUDA),
        *TRAINER_OPTS[trainer], *opts)


def _fixed_batch(n):
    g = torch.Generator().manual_seed(0)
    return {"img": torch.randn(n, 3, 224, 224, generator=g), "img2": torch.randn(n, 3, 224, 224, generator=g),
            "img3": torch.randn(n, N_CROPS, 3, 224, 224, generator=g), "label": torch.randint(0, 3, (n,), generator=g)}


def _one_step(cfg, rows):
    """Build FAIR, one training step on ``rows`` of the fixed batch, then evaluate."""
    from fairclip.toolbox import build_trainer, set_random_seed

    set_random_seed(cfg.SEED)
    trainer = build_trainer(cfg)
    batch = {k: v[rows] for k, v in _fixed_batch(2 * B).items()}
    trainer.epoch, trainer.batch_idx, trainer.num_batches = 0, 0, len(trainer.train_loader_x)
    trainer.before_epoch()
    out = trainer.forward_backward(batch)
    trainable = [(n, p) for n, p in trainer.model.named_parameters() if p.requires_grad]
    evaluation = trainer.evaluate()
    return {"loss": out["loss"].item(), "grads": {n: p.grad.cpu().clone() for n, p in trainable},
            "params": {n: p.detach().cpu().clone() for n, p in trainable}, "n_eval": evaluation["n_images"],
            "acc": evaluation["results"]["accuracy"], "train_batches": len(trainer.train_loader_x),
            "world_size": trainer.world_size}


def _worker(rank, world, port, root, clip_path, out, result_dir, opts, trainer):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    from fairclip.trainers import _distributed

    _distributed.init_from_env(use_cuda=CUDA)
    try:
        result = _one_step(_cfg(root, clip_path, out, B, *opts, trainer=trainer), slice(rank * B, (rank + 1) * B))
        torch.save(result, os.path.join(result_dir, "rank{}.pt".format(rank)))
    finally:
        _distributed.cleanup()


@pytest.mark.parametrize("trainer,opts", [
    ("FAIR", ()), ("FAIR", ("TRAINER.FAIR.BALANCE", "running", "TRAINER.FAIR.ANCHORS", "description")),
    ("MUST", ("TRAINER.MUST.BALANCE", "batch")), ("LaFTer", ()),
], ids=["fair-batch-balance", "fair-running-balance-description-anchors", "must-batch-balance", "lafter"])
def test_two_processes_with_batch_b_equal_one_process_with_batch_2b(mini_pets, tiny_clip, tmp_path, trainer, opts):
    results = tmp_path / "results"
    results.mkdir()
    mp.spawn(_worker, args=(2, _free_port(), mini_pets, tiny_clip, str(tmp_path / "ddp"), str(results), opts, trainer),
             nprocs=2, join=True)
    ranks = [torch.load(str(results / "rank{}.pt".format(r)), weights_only=True) for r in range(2)]
    single = _one_step(_cfg(mini_pets, tiny_clip, str(tmp_path / "single"), 2 * B, *opts, trainer=trainer),
                       slice(0, 2 * B))

    assert single["world_size"] == 1 and all(r["world_size"] == 2 for r in ranks)
    # the objective: the mean of the ranks' losses (CE over local samples + the shared global-batch term)
    assert sum(r["loss"] for r in ranks) / 2 == pytest.approx(single["loss"], rel=1e-5, abs=1e-6)
    for name, grad in single["grads"].items():
        assert grad.abs().sum() > 0, name
        for r in ranks:
            assert torch.allclose(r["grads"][name], grad, rtol=1e-4, atol=1e-7), name
            assert torch.allclose(r["params"][name], single["params"][name], rtol=1e-5, atol=1e-7), name
    # the data: equal train shards; each test image scored once (shards without padding, predictions gathered)
    assert ranks[0]["train_batches"] == ranks[1]["train_batches"]
    assert all(r["n_eval"] == single["n_eval"] and r["acc"] == single["acc"] for r in ranks)


def test_torchrun_end_to_end_rank0_writes_everything(mini_pets, tiny_clip, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(_free_port()),
           os.path.join(REPO, "train.py"), "--root", mini_pets, "--trainer", "FAIR", "--seed", "1",
           "--output-dir", str(out),
           "--dataset-config-file", os.path.join(REPO, "configs/datasets/oxford_pets.yaml"),
           "--config-file", os.path.join(REPO, "configs/trainers/FAIR/vit_b32.yaml"),
           "MODEL.BACKBONE.PATH", tiny_clip, "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "2",
           "OPTIM.MAX_EPOCH", "1", "TRAINER.FAIR.N_CROPS", "2", "TRAINER.FAIR.TOP_K", "1", "USE_CUDA", str(CUDA)]
    res = run_cli(cmd, env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    logs = [f for f in os.listdir(str(out)) if f.startswith("log.txt")]
    assert logs == ["log.txt"]  # one log: rank 1 wrote none
    log = (out / "log.txt").read_text()
    assert "Distributed: 2 processes, batch 2 per process, global batch 4" in log
    assert log.count("Results written to") == 1
    result = json.loads((out / "results.json").read_text())
    assert result["protocol"]["world_size"] == 2 and result["protocol"]["global_batch"] == 4
    split = json.load(open(os.path.join(mini_pets, "oxford_pets", "split_zhou_OxfordPets.json")))
    assert result["protocol"]["num_eval_images"] == len(split["test"])  # each test image once
    assert os.listdir(str(out / "fair")) and os.path.isfile(str(out / "fair" / "model.pth.tar-1"))
