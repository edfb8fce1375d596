"""An evaluator in a training script, under torchrun or alone: ``python evaluator_ranks.py MODEL DATA OUT
[ddp|fsdp]``. Under torchrun the script joins the process group itself (as training does), wraps
the model (DDP, or FSDP2's ``fully_shard``) and each rank writes the report it got to
``OUT.RANK`` (alone: ``OUT.0``)."""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM, AutoTokenizer

from lleval import Evaluator

model_dir, data, out = sys.argv[1:4]
wrap = sys.argv[4] if len(sys.argv) > 4 else "ddp"
if "RANK" in os.environ:
    dist.init_process_group("gloo")
model = AutoModelForCausalLM.from_pretrained(model_dir)
if dist.is_initialized() and wrap == "ddp":
    model = torch.nn.parallel.DistributedDataParallel(model)
elif dist.is_initialized() and wrap == "fsdp":
    from torch.distributed.fsdp import fully_shard

    for block in model.transformer.h:
        fully_shard(block)
    fully_shard(model)
evaluator = Evaluator(model, AutoTokenizer.from_pretrained(model_dir), data, max_length=24, stride=8, batch_size=3)
report = evaluator(step=5)
rank = dist.get_rank() if dist.is_initialized() else 0
with open(f"{out}.{rank}", "w") as handle:
    json.dump(report.to_dict(), handle)
if dist.is_initialized():
    dist.destroy_process_group()
