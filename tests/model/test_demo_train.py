"""Training smoke test: a few steps from scratch lower the loss, and the export is a checkpoint
that the served class loads (through vLLM) and that agrees with the training implementation."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from server.model.checkpoint import check_model_dir
from server.model.demo import checkpoint
from server.model.demo.data import (
    COUNT_SINK_WEIGHTS,
    FOCUS_HEADS,
    Draw,
    collate,
    encode_draws,
    picture,
    token_labels,
)
from server.model.demo.evaluate import heldout_samples, mean_loss
from server.model.demo.model import MLA, KimiVL
from server.model.demo.prompt import Encoded, PromptBuilder
from server.model.demo.tasks import make_sample
from server.model.demo.train import (
    COUNT_HEAD,
    COUNT_LAYER,
    COUNT_RATIO_SCALE,
    FOCUS_LAYER,
    TokenProbe,
    centring_loss,
    count_heads_loss,
    count_shortcut_loss,
    forward,
    load_builder,
    parse_args,
    question_words,
    ratio_loss,
    sha256,
    train,
    train_count_heads,
    train_readout,
    train_step,
)
from server.model.image_processing import preprocess_images

REPO = Path(__file__).resolve().parents[2]
STEPS = ["--steps", "14", "--batch-size", "8", "--warmup", "2", "--lr", "3e-3",
         "--vision-pretrain", "20", "--pretrain-batch", "8",
         "--vision-pictures", "6", "--picture-batch", "4",
         "--count-heads-steps", "3", "--readout-steps", "3"]  # fmt: skip


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo-smoke") / "ckpt"
    args = parse_args(
        ["--out", str(out), *STEPS, "--threads", "1", "--eval-every", "0", "--final-n", "1"]
    )
    threads = torch.get_num_threads()
    try:
        info = train(args)
    finally:
        torch.set_num_threads(threads)
    return out, info


def test_a_few_steps_lower_the_heldout_loss(smoke: tuple[Path, dict]) -> None:
    out, info = smoke
    builder = load_builder(out)
    encoded = [builder.encode(s) for s in heldout_samples(2, offset=5)]
    torch.manual_seed(info["seed"])  # the training run's initial weights
    initial = KimiVL(json.loads((out / "config.json").read_text())).eval()
    before = mean_loss(initial, encoded)
    after = mean_loss(checkpoint.load(out), encoded)
    assert after < 0.8 * before, (before, after)


def test_export_is_a_complete_checkpoint_with_a_manifest(smoke: tuple[Path, dict]) -> None:
    out, info = smoke
    check_model_dir(str(out))
    manifest = json.loads((out / "manifest.json").read_text())
    names = {p.name for p in out.iterdir()} - {"manifest.json"}
    assert set(manifest["files"]) == names
    assert all(sha256(out / n) == h for n, h in manifest["files"].items())
    for name in ("config.json", "tiktoken.model", "tokenizer_config.json", "chat_template.jinja",
                 "preprocessor_config.json", "generation_config.json",
                 "model.safetensors.index.json"):  # fmt: skip
        assert name in names
    assert manifest["steps"] == 14 and manifest["seed"] == 0
    assert manifest["command"].startswith("python -m server.model.demo.train ")
    # the recipe's commit (this checkout's, marked when server/model/demo has local changes)
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    assert manifest["commit"].split("+")[0] == head.stdout.strip()
    assert set(manifest["heldout"]["tasks"]) == set(info["heldout"]["tasks"])


def test_training_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    def run(name: str) -> Path:
        out = tmp_path / name
        train(parse_args(["--out", str(out), "--steps", "2", "--batch-size", "4", "--threads", "1",
                          "--vision-pretrain", "2", "--pretrain-batch", "4",
                          "--vision-pictures", "2", "--picture-batch", "2",
                          "--count-heads-steps", "2", "--readout-steps", "2",
                          "--eval-every", "0", "--final-n", "1"]))  # fmt: skip
        return out

    threads = torch.get_num_threads()
    try:
        first, again = run("first"), run("again")
    finally:
        torch.set_num_threads(threads)
    shards = sorted(p.name for p in first.glob("*.safetensors"))
    assert shards and all(sha256(first / s) == sha256(again / s) for s in shards)


@pytest.mark.slow
def test_export_loads_in_our_class_through_vllm(smoke: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = smoke
    result = tmp_path / "parity.json"
    cmd = [sys.executable, "-m", "server.model.demo.parity", "--model", str(out), "--n", "7",
           "--json", str(result)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    parity = json.loads(result.read_text())
    assert parity["prompt_ids_identical"] == 1.0
    assert parity["max_first_token_logprob_diff"] < 1e-3
    assert parity["max_chosen_token_logprob_diff"] <= parity["max_first_token_logprob_diff"]
    assert 0 <= parity["worst_first_token"]["index"] < 7
    assert parity["answers_agree"] >= 6 / 7


@pytest.fixture(scope="module")
def demo_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, PromptBuilder]:
    """The demo tokenizer (written once) and a prompt builder on it."""
    tok_dir = tmp_path_factory.mktemp("demo-tok")
    return checkpoint.write_tokenizer(tok_dir), load_builder(tok_dir)


def _model_and_batch(
    demo_setup: tuple[dict, PromptBuilder], task: str
) -> tuple[KimiVL, list[Encoded], dict[int, int], int]:
    """A fresh seed-0 demo model and one held-out-style training encoding of `task` (no
    follow-ups), with the question words and turn id the focus losses need."""
    tok, builder = demo_setup
    torch.manual_seed(0)
    model = KimiVL(checkpoint.demo_config(tok))
    items = encode_draws(builder, [Draw(make_sample(task, 2 * 11), False, False)])
    return model, items, question_words(builder), builder.ids["<|im_user|>"]


@pytest.mark.parametrize(
    ("task", "count_through", "other_through", "reaches"),
    [("count", 0.0, 1.0, False), ("color", 0.0, 1.0, True), ("count", 1.0, 0.0, True),
     ("color", 0.0, 0.0, False)],
)  # fmt: skip
def test_decoder_losses_reach_the_vision_tower_only_where_let_through(
    demo_setup: tuple[dict, PromptBuilder],
    task: str,
    count_through: float,
    other_through: float,
    reaches: bool,
) -> None:
    model, items, words, turn = _model_and_batch(demo_setup, task)
    train_step(
        model, items, 4096, focus_weight=1.0, detach_vision=True, words=words, turn_id=turn,
        count_through=count_through, other_through=other_through,
    )  # fmt: skip
    vision = [p.grad for p in model.vision_tower.parameters()]
    got = any(g is not None and bool(g.abs().sum() > 0) for g in vision)
    assert got == reaches
    attn = model.language_model.model.layers[0].self_attn
    assert isinstance(attn, MLA)
    decoder = attn.q_proj.weight.grad
    assert decoder is not None and bool(decoder.abs().sum() > 0)


def _by_hand(
    demo_setup: tuple[dict, PromptBuilder], task: str, loss: Callable, per_head: Callable
) -> tuple[float, float]:
    """`loss`(model, batch) on one `task` encoding, and the same sum written out by hand:
    `per_head`(logits, share, sink, col, head) over the focus heads of each count answer,
    from the heads' captured q and k (0 where the question is not the count); `share` is
    the answer's focus_share."""
    model, items, words, turn = _model_and_batch(demo_setup, task)
    attn = model.language_model.model.layers[FOCUS_LAYER].self_attn
    assert isinstance(attn, MLA)
    tb = collate(items, 0, model.media_pad_id, words, turn)
    attn.capture = True
    try:
        with torch.no_grad():
            forward(model, tb)
            got = float(loss(model, tb))
            assert attn.captured is not None
            q, k, _ = attn.captured
            want = 0.0
            for j in range(len(tb.focus_rows)):
                if not (tb.focus_uniform[j] and tb.focus_sink[j] >= 0):
                    continue
                row, col, sink = int(tb.focus_rows[j]), int(tb.focus_cols[j]), int(tb.focus_sink[j])
                for head in range(FOCUS_HEADS):
                    logits = k[row, head] @ q[row, head, col] / q.shape[-1] ** 0.5
                    want += per_head(logits, tb.focus_share[j], sink, col, head)
    finally:
        attn.capture, attn.captured = False, None
    return got, want


def _centre_logits_squared(
    logits: torch.Tensor, share: torch.Tensor, sink: int, col: int, head: int
) -> float:
    share = share.clone()
    share[sink] = 0
    return float((share / share.sum() * logits.pow(2)).sum())


def _ratio_error_squared(
    logits: torch.Tensor, share: torch.Tensor, sink: int, col: int, head: int
) -> float:
    weights = torch.softmax(logits[: col + 1], dim=-1)  # causal
    centres = share[: col + 1].clone()
    centres[sink] = 0
    said = float(weights[centres > 0].sum() / weights[sink])  # in sink units
    shapes = float(centres.sum())
    return (math.log(said) - math.log(shapes / COUNT_SINK_WEIGHTS[head])) ** 2


@pytest.mark.parametrize(
    ("loss", "by_hand"),
    # centring: the share-weighted square of the centre logits; ratio: the squared log error
    # of the count the heads' attention says
    [(centring_loss, _centre_logits_squared), (ratio_loss, _ratio_error_squared)],
    ids=["centring", "ratio"],
)
def test_count_head_losses_match_their_definition_from_the_captured_q_and_k(
    demo_setup: tuple[dict, PromptBuilder], loss: Callable, by_hand: Callable
) -> None:
    got, want = _by_hand(demo_setup, "count", loss, by_hand)
    assert want > 0
    assert got == pytest.approx(want, rel=1e-4)
    # no count answer, nothing to hold
    assert _by_hand(demo_setup, "color", loss, by_hand) == (0.0, 0.0)


def _count_heads_by_hand(
    demo_setup: tuple[dict, PromptBuilder], task: str
) -> tuple[tuple[float, float], tuple[float, float]]:
    """count_heads_loss and count_shortcut_loss on one `task` encoding, and both written out
    by hand from the count heads' captured q, k and v."""
    model, items, words, turn = _model_and_batch(demo_setup, task)
    attn = model.language_model.model.layers[COUNT_LAYER].self_attn
    assert isinstance(attn, MLA)
    lm = model.language_model
    tb = collate(items, 0, model.media_pad_id, words, turn)
    attn.capture = True
    try:
        with torch.no_grad():
            forward(model, tb)
            got = (float(count_heads_loss(model, tb)), float(count_shortcut_loss(model, tb)))
            assert attn.captured is not None
            q, k, v = attn.captured
            spread_and_ratio = answer = 0.0
            for j in range(len(tb.focus_rows)):
                if not (tb.focus_uniform[j] and tb.focus_sink[j] >= 0):
                    continue
                row, col, sink = int(tb.focus_rows[j]), int(tb.focus_cols[j]), int(tb.focus_sink[j])
                image = (tb.batch.input_ids[row] == model.media_pad_id)[: col + 1]
                centres = tb.focus_share[j, : col + 1].clone()
                centres[sink] = 0
                outs = []
                for h, weight in enumerate(COUNT_SINK_WEIGHTS):
                    head = COUNT_HEAD + h
                    logits = k[row, head, : col + 1] @ q[row, head, col] / q.shape[-1] ** 0.5
                    weights = torch.softmax(logits, dim=-1)
                    want = centres.clone()
                    want[sink] = weight
                    want = want / want.sum()
                    on = want > 0
                    spread_and_ratio -= float((want[on] * weights[on].log()).sum())
                    said = float(weights[image].sum() / weights[sink])  # in sink units
                    shapes = float(centres.sum())
                    spread_and_ratio += (
                        COUNT_RATIO_SCALE * (math.log(said) - math.log(shapes / weight)) ** 2
                    )
                    outs.append(weights @ v[row, head, : col + 1])
                columns = slice(COUNT_HEAD * attn.vdim, (COUNT_HEAD + 2) * attn.vdim)
                hidden = attn.o_proj.weight[:, columns] @ torch.cat(outs)
                logp = torch.log_softmax(lm.lm_head(lm.model.norm(hidden)), dim=-1)
                answer -= float(logp[tb.focus_targets[j]])
    finally:
        attn.capture, attn.captured = False, None
    return got, (spread_and_ratio, answer)


def test_count_heads_losses_match_their_definition_from_the_captured_q_k_and_v(
    demo_setup: tuple[dict, PromptBuilder],
) -> None:
    """The count heads (layer COUNT_LAYER): their spread against the centres and the weighted
    sink, their log ratio over all of the picture's tokens, and the answer read from their
    outputs alone."""
    got, want = _count_heads_by_hand(demo_setup, "count")
    assert min(want) > 0
    assert got == pytest.approx(want, rel=1e-4)
    # no count answer, nothing to hold
    assert _count_heads_by_hand(demo_setup, "color") == ((0.0, 0.0), (0.0, 0.0))


def _changed(before: dict[str, torch.Tensor], model: KimiVL) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}


def test_count_heads_stage_trains_the_count_layers_attention_and_vision_the_readout_decoder_and_vision(
    demo_setup: tuple[dict, PromptBuilder],
) -> None:
    tok, builder = demo_setup
    torch.manual_seed(0)
    model = KimiVL(checkpoint.demo_config(tok))
    words = question_words(builder)
    attention = f"language_model.model.layers.{COUNT_LAYER}.self_attn."
    vision = ("vision_tower.", "multi_modal_projector.")
    fixed = parse_args(["--out", "unused", "--count-heads-steps", "2", "--batch-size", "2",
                        "--count-heads-vision-lr", "0"])  # fmt: skip
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_count_heads(model, builder, words, fixed)
    changed = _changed(start, model)
    assert changed and all(n.startswith(attention) for n in changed)
    args = parse_args(["--out", "unused", "--count-heads-steps", "2", "--readout-steps", "2",
                       "--batch-size", "2"])  # fmt: skip
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_count_heads(model, builder, words, args)
    changed = _changed(start, model)
    assert any(n.startswith(attention) for n in changed)
    assert any(n.startswith(vision[0]) for n in changed)
    assert any(n.startswith(vision[1]) for n in changed)
    assert all(n.startswith((attention, *vision)) for n in changed)
    assert all(p.requires_grad for p in model.parameters())  # given back
    decoder_only = parse_args(["--out", "unused", "--readout-steps", "2", "--batch-size", "2",
                               "--readout-vision-lr", "0"])  # fmt: skip
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_readout(model, builder, words, decoder_only)
    changed = _changed(start, model)
    assert changed and all(n.startswith("language_model.") for n in changed)
    assert all(p.requires_grad for p in model.parameters())
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_readout(model, builder, words, args)
    changed = _changed(start, model)
    assert any(n.startswith("language_model.") for n in changed)
    assert any(n.startswith(vision[0]) for n in changed)
    assert any(n.startswith(vision[1]) for n in changed)
    assert all(n.startswith(("language_model.", *vision)) for n in changed)
    assert all(p.requires_grad for p in model.parameters())


def _count_probe_batch(
    builder: PromptBuilder, seeds: range
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    samples = [picture(0, i) for i in seeds]
    batch = preprocess_images([s.images[0] for s in samples], builder.cfg)
    grids = [(int(h), int(w)) for h, w in batch["image_grid_hws"]]
    labels = torch.from_numpy(
        np.concatenate([token_labels(s, builder.cfg) for s in samples])
    ).float()
    return batch["pixel_values"], labels, grids


def test_count_probe_teaches_the_vision_tower_to_count_on_pictures_it_never_saw(
    demo_setup: tuple[dict, PromptBuilder],
) -> None:
    """A few steps of the count probe alone (vision tower, projector and probe) lower its
    loss on pictures it was not trained on."""
    tok, builder = demo_setup
    torch.manual_seed(0)
    config = checkpoint.demo_config(tok)
    model = KimiVL(config)
    probe = TokenProbe(config["text_config"]["hidden_size"], config["text_config"]["v_head_dim"])
    params = [*model.vision_tower.parameters(), *model.multi_modal_projector.parameters(),
              *probe.parameters()]  # fmt: skip
    opt = torch.optim.AdamW(params, lr=2e-3)
    held = _count_probe_batch(builder, range(1000, 1016))

    def held_out() -> float:
        pixels, labels, grids = held
        with torch.no_grad():
            feats = model.multi_modal_projector(model.vision_tower(pixels, grids))
            sizes = model.vision_tower.merged_tokens(grids)
            return float(probe.count_loss(feats, labels, sizes)) / len(grids)

    before = held_out()
    for step in range(25):
        pixels, labels, grids = _count_probe_batch(builder, range(8 * step, 8 * step + 8))
        feats = model.multi_modal_projector(model.vision_tower(pixels, grids))
        sizes = model.vision_tower.merged_tokens(grids)
        (probe.count_loss(feats, labels, sizes) / len(grids)).backward()
        opt.step()
        opt.zero_grad()
    assert held_out() < 0.7 * before
