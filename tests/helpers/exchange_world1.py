"""Run under ``torchrun --nproc-per-node 1``: join a one-rank process group (NCCL on a GPU,
gloo on CPU), pass window results through lleval's `DistContext`, write what came back."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch
import torch.distributed as dist

from lleval.engine.distributed import DistContext

backend = "nccl" if torch.cuda.is_available() else "gloo"
if backend == "nccl":
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
dist.init_process_group(backend=backend)
ctx = DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ["LOCAL_RANK"]), backend)
merged = ctx.exchange({3: np.array([0.5, -1.25]), 7: np.array([2.0])})
shared = ctx.broadcast({"rank0": ctx.is_main})
dist.destroy_process_group()
with open(sys.argv[1], "w") as out:
    json.dump({"backend": backend, "exchanged": {str(k): v.tolist() for k, v in sorted(merged.items())},
               "broadcast": shared}, out)
