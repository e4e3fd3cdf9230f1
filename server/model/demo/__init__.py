"""The demo Kimi-VL: a small model trained from scratch on synthetic shape/colour/motion
questions, shipped as a real-format checkpoint in `weights/` and served as `kimi-vl-demo`.

tasks.py (the task contract and generator) -> prompt.py (exact served token layout) ->
model.py (plain-PyTorch Kimi-VL) -> train.py (CLI) -> checkpoint.py (export / load).
Nothing here imports vLLM.
"""

from pathlib import Path

CHECKPOINT_DIR = Path(__file__).with_name("weights")
