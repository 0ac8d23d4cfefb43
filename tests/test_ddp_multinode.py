"""One run over several nodes: torchrun with a c10d rendezvous endpoint, as docs/speed.md documents for Slurm,
here as two 'nodes' of one gloo process each on localhost. Rank 0 alone writes the run's files."""
import json
import os
import subprocess
import sys

from tests.conftest import REPO
from tests.test_ddp import _free_port


def test_two_nodes_meet_at_a_rendezvous_endpoint(mini_pets, tiny_clip, tmp_path):
    out = tmp_path / "run"  # one folder both 'nodes' see, as a shared file system
    endpoint = "127.0.0.1:{}".format(_free_port())
    train = [os.path.join(REPO, "train.py"), "--root", mini_pets, "--trainer", "FAIR", "--seed", "1",
             "--output-dir", str(out), "--dataset-config-file", os.path.join(REPO, "configs/datasets/oxford_pets.yaml"),
             "--config-file", os.path.join(REPO, "configs/trainers/FAIR/vit_b32.yaml"),
             "MODEL.BACKBONE.PATH", tiny_clip, "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "2",
             "OPTIM.MAX_EPOCH", "1", "TRAINER.FAIR.N_CROPS", "2", "TRAINER.FAIR.TOP_K", "1", "USE_CUDA", "False",
             "TRAINER.FAIR.EVAL_EACH_EPOCH", "False"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    nodes = []
    for _ in range(2):  # what `srun torchrun ...` starts on each of two nodes
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "test-sweep",
               "--local-addr", "127.0.0.1", *train]
        nodes.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    try:
        outputs = [node.communicate(timeout=600)[0] for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    assert all(node.returncode == 0 for node in nodes), "\n".join(o[-3000:] for o in outputs)

    assert [f for f in os.listdir(str(out)) if f.startswith("log.txt")] == ["log.txt"]
    log = (out / "log.txt").read_text()
    assert "Distributed: 2 processes, batch 2 per process, global batch 4" in log
    result = json.loads((out / "results.json").read_text())
    assert result["protocol"]["world_size"] == 2 and result["protocol"]["global_batch"] == 4
    split = json.load(open(os.path.join(mini_pets, "oxford_pets", "split_zhou_OxfordPets.json")))
    assert result["protocol"]["num_eval_images"] == len(split["test"])  # each test image scored once
