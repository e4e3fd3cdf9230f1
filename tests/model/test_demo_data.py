"""Training-only supervision of the demo model: follow-up questions and per-token labels are
right about the pictures they describe."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from server.model.demo.checkpoint import preprocessor_config
from server.model.demo.data import (
    _TEMPLATE_PATTERNS,
    ASK_HEADS,
    CANVAS_MAX_SHAPES,
    CANVAS_MIN_SHAPE,
    CANVAS_SIDES,
    FOCUS_HEADS,
    SIDE_LEFT,
    SIDE_RIGHT,
    VALUE_FIELDS,
    VERTICAL_QUESTION,
    Draw,
    _questions,
    canvas,
    collate,
    draw,
    encode_draws,
    focus_mask,
    focus_values,
    follow_ups,
    token_class,
    token_labels,
)
from server.model.demo.prompt import PromptBuilder
from server.model.demo.tasks import (
    COLORS,
    QUESTIONS,
    SHAPES,
    TASKS,
    Sample,
    Shape,
    heldout_seed,
    make_sample,
)
from server.model.image_processing import ImageProcessorConfig, grid_size, resized_size

CFG = ImageProcessorConfig.from_dict(preprocessor_config())


@pytest.mark.parametrize("task", TASKS)
def test_questions_include_the_samples_own_and_follow_templates(task: str) -> None:
    for i in range(15):
        sample = make_sample(task, heldout_seed(i))
        qs = _questions(sample)
        assert (sample.question, sample.answer) in qs
        assert len({q for q, _ in qs}) == len(qs)  # one answer per question
        assert all(any(p.match(q) for p in _TEMPLATE_PATTERNS.values()) for q, _ in qs)


def test_follow_up_answers_follow_from_the_scene() -> None:
    rng = np.random.default_rng(0)
    checked = vertical = 0
    for i in range(40):
        sample = make_sample("count", heldout_seed(i))
        scene = sample.scenes[0]
        for q, a in follow_ups(sample, rng):
            assert q != sample.question
            if q.startswith("What color is the "):
                kind = q.removeprefix("What color is the ").removesuffix("?")
                assert [s.color for s in scene if s.kind == kind] == [a]
            elif q.startswith("What shape is "):
                color = q.removeprefix("What shape is ").removesuffix("?")
                assert [s.kind for s in scene if s.color == color] == [a]
            elif q.endswith(" up or down?"):
                color, kind = q.split()[2:4]
                [shape] = [s for s in scene if (s.color, s.kind) == (color, kind)]
                gaps = [o.cy - shape.cy for o in scene if o is not shape]
                height = sample.images[0].height
                assert (min(gaps) >= 0.3 * height and a == "up") or (
                    max(gaps) <= -0.3 * height and a == "down"
                )
                vertical += 1
            checked += 1
    assert checked > 20
    assert vertical > 2


def test_vertical_follow_up_is_asked_only_of_a_shape_clearly_above_or_below_the_others() -> None:
    image = Image.new("RGB", (100, 100))
    question = VERTICAL_QUESTION.format(color="red", shape="circle")

    def asked(*shapes: Shape) -> dict[str, str]:
        scene = list(shapes)
        sample = Sample("color", "", "", "", [image], scenes=[scene])
        return {q: a for q, a in _questions(sample) if q.endswith(" up or down?")}

    red = Shape("circle", "red", 40, 70, 10)  # centre y 75
    assert asked(red) == {}  # nothing to be above or below
    assert asked(red, Shape("square", "blue", 10, 50, 10)) == {}  # 20 px apart: not clearly
    two = asked(red, Shape("square", "blue", 10, 10, 10))  # 60 px apart
    assert two == {question: "down", VERTICAL_QUESTION.format(color="blue", shape="square"): "up"}
    # with a third shape between them, only the red circle is below every other one
    three = asked(red, Shape("square", "blue", 10, 10, 10), Shape("triangle", "green", 70, 30, 10))
    assert three == {question: "down"}


def test_motion_follow_up_asks_the_colour_at_the_end() -> None:
    sample = make_sample("motion", heldout_seed(1))
    qa = dict(_questions(sample))
    assert qa[QUESTIONS["color_change"].format(shape=sample.scenes[0][0].kind)] == (
        sample.scenes[-1][0].color
    )


def test_thinking_draws_have_no_follow_ups() -> None:
    draws = [draw(0, i) for i in range(60)]
    assert any(d.follow_ups for d in draws)
    assert all(not d.follow_ups for d in draws if d.thinking)


def test_token_labels_mark_the_shapes_where_they_are() -> None:
    sample = make_sample("color", heldout_seed(5))
    labels = token_labels(sample, CFG)
    image = sample.images[0]
    gh, gw = grid_size(image.width, image.height, CFG)
    rows, cols = gh // 2, gw // 2
    assert labels.shape == (rows * cols, 7)
    cls = labels[:, 0].reshape(rows, cols)
    assert (cls == 0).any()  # background
    for s in sample.scenes[0]:
        want = 1 + list(COLORS).index(s.color) * len(SHAPES) + SHAPES.index(s.kind)
        w, h = resized_size(image.width, image.height, CFG)
        r = min(rows - 1, int((s.y + s.size / 2) * h / image.height // 28))
        c = min(cols - 1, int((s.x + s.size / 2) * w / image.width // 28))
        assert cls[r, c] == want
    # each shape's centre, shared out over the tokens around it, counts one
    assert labels[:, 1].sum() == pytest.approx(len(sample.scenes[0]))
    fx, fy = labels[:, 2].reshape(rows, cols), labels[:, 3].reshape(rows, cols)
    own = (np.arange(cols) + 0.5) * 28 * image.width / w / image.width  # token centres
    assert np.allclose(fx[cls == 0], np.broadcast_to(own, (rows, cols))[cls == 0])
    for s in sample.scenes[0]:  # a shape's tokens say where the shape is
        mine = cls == token_class(s.color, s.kind)
        assert mine.any() and np.allclose(fx[mine], s.cx / image.width)
        assert np.allclose(fy[mine], (s.y + s.size / 2) / image.height)
    assert (labels[:, 4] == 0).all()
    assert (labels[:, 5] == len(sample.scenes[0])).all()  # shapes in the picture, every token


def test_canvases_are_small_pictures_of_the_task_domain_and_deterministic() -> None:
    sizes, kinds = set(), set()
    for i in range(60):
        sample = canvas(0, i)
        image, scene = sample.images[0], sample.scenes[0]
        assert image.width in CANVAS_SIDES and image.height in CANVAS_SIDES
        assert 0 < len(scene) <= CANVAS_MAX_SHAPES
        for s in scene:
            assert s.size >= CANVAS_MIN_SHAPE
            assert s.x + s.size <= image.width and s.y + s.size <= image.height
            # the shape's own colour at its centre, exactly (the contract's palette)
            assert image.getpixel((int(s.cx), s.y + s.size // 2)) == COLORS[s.color]
            kinds.add(s.kind)
        sizes.add(image.size)
        labels = token_labels(sample, CFG)
        assert {int(c) for c in labels[:, 0] if c} <= {token_class(s.color, s.kind) for s in scene}
    assert kinds == set(SHAPES) and len(sizes) > 10
    again = canvas(0, 7)
    assert again.scenes == canvas(0, 7).scenes and again.scenes != canvas(1, 7).scenes
    assert again.images[0].tobytes() == canvas(0, 7).images[0].tobytes()


def test_token_labels_number_the_images_of_a_request() -> None:
    sample = make_sample("multi_image", heldout_seed(6))
    labels = token_labels(sample, CFG)
    counts = [grid_size(im.width, im.height, CFG) for im in sample.images]
    sizes = [(h // 2) * (w // 2) for h, w in counts]
    want = np.repeat(np.arange(len(sizes)), sizes)
    assert (labels[:, 4] == want).all()


def test_token_labels_say_which_side_each_shape_of_a_position_picture_is_on() -> None:
    sample = make_sample("position", heldout_seed(7))
    labels = token_labels(sample, CFG)
    cls, side = labels[:, 0], labels[:, 6]
    a, b = sample.scenes[0]
    left, right = (a, b) if a.cx < b.cx else (b, a)
    assert (side[cls == token_class(left.color, left.kind)] == SIDE_LEFT).all()
    assert (side[cls == token_class(right.color, right.kind)] == SIDE_RIGHT).all()
    assert (side[cls == 0] == 0).all()
    want = (
        "left"
        if sample.question == QUESTIONS["position"].format(color=left.color, shape=left.kind)
        else "right"
    )
    assert sample.answer == want


def test_focus_heads_see_both_ends_of_a_motion() -> None:
    sample = make_sample("motion", heldout_seed(8))
    labels = token_labels(sample, CFG)
    heads = focus_mask(sample.question, labels)
    frame, last = labels[:, 4], labels[:, 4].max()
    assert heads.shape == (FOCUS_HEADS, len(labels))
    assert heads[0].any() and (frame[heads[0]] == last).all()
    assert heads[1].any() and (frame[heads[1]] == 0).all()
    color = make_sample("color", heldout_seed(8))
    both = focus_mask(color.question, token_labels(color, CFG))
    assert (both[0] == both[1]).all() and both[0].any()


def test_sides_are_read_against_the_other_shape() -> None:
    # left or right, up or down: head 0 on the named shape, head 1 on the other one
    sample = make_sample("position", heldout_seed(8))
    labels = token_labels(sample, CFG)
    a, b = sample.scenes[0]
    for question in (
        sample.question,
        VERTICAL_QUESTION.format(color=a.color, shape=a.kind),
    ):
        heads = focus_mask(question, labels)
        named, other = (a, b) if f" {a.color} {a.kind} " in question else (b, a)
        assert heads[0].any() and heads[1].any()
        assert (heads[0] == (labels[:, 0] == token_class(named.color, named.kind))).all()
        assert (heads[1] == (labels[:, 0] == token_class(other.color, other.kind))).all()


def test_focus_values_say_where_and_what_each_focus_head_looks_at() -> None:
    sample = make_sample("motion", heldout_seed(8))
    labels = token_labels(sample, CFG)
    values = focus_values(labels, focus_mask(sample.question, labels), sink=False)
    field = {name: i for i, name in enumerate(VALUE_FIELDS)}
    last, first = sample.scenes[-1][0], sample.scenes[0][0]
    frame = sample.frames[0]
    for head, shape, index in ((0, last, len(sample.frames) - 1), (1, first, 0)):
        x, y = values[head, field["x"]], values[head, field["y"]]
        assert x == pytest.approx(shape.cx / frame.width)
        assert y == pytest.approx((shape.y + shape.size / 2) / frame.height)
        assert values[head, field["media"]] == index
        assert SHAPES[int(values[head, field["shape"]])] == shape.kind
        assert list(COLORS)[int(values[head, field["color"]])] == shape.color
        assert np.isnan(values[head, field["count"]])
    # the motion is the difference of the two heads' positions
    moved = values[0, :2] - values[1, :2]
    axis = int(np.abs(moved).argmax())
    way = {(0, 1): "right", (0, -1): "left", (1, 1): "down", (1, -1): "up"}
    assert way[axis, int(np.sign(moved[axis]))] == sample.answer

    count = make_sample("count", heldout_seed(8))
    labels = token_labels(count, CFG)
    values = focus_values(labels, focus_mask(count.question, labels), sink=True)
    assert (values[:, field["count"]] == int(count.answer)).all()
    assert np.isnan(values[:, : field["count"]]).all()


@pytest.fixture(scope="module")
def builder(tmp_path_factory: pytest.TempPathFactory) -> PromptBuilder:
    from server.model.demo.checkpoint import write_tokenizer
    from server.model.demo.train import load_builder

    folder = tmp_path_factory.mktemp("tok")
    write_tokenizer(folder)
    return load_builder(folder)


def _decoded(builder: PromptBuilder, ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    return [builder.tok.decode([int(ids[p])]).strip() for p in mask.nonzero()[:, 0]]


def test_ask_heads_read_the_named_colour_and_shape_of_the_current_question(
    builder: PromptBuilder,
) -> None:
    from server.model.demo.train import question_words

    words = question_words(builder)
    sample = make_sample("position", heldout_seed(3))
    asked = sample.question.removeprefix("Is the ").split(" on the")[0].split()
    # A follow-up names other words: each answer's ask mask covers its own question only.
    follow = [(QUESTIONS["color"].format(shape="circle"), "red")]
    d = Draw(sample, thinking=False, text_first=False, follow_ups=follow)
    [e] = encode_draws(builder, [d])
    tb = collate([e], 0, builder.ids["<|media_pad|>"], words, builder.ids["<|im_user|>"])
    ids = tb.batch.input_ids[0]
    assert tb.ask.shape[:2] == (2, ASK_HEADS)
    assert _decoded(builder, ids, tb.ask[0, 0]) == [asked[0]]  # colour word
    assert _decoded(builder, ids, tb.ask[0, 1]) == [asked[1]]  # shape word
    assert (
        _decoded(builder, ids, tb.ask[1, 0]) == ["circle"] == _decoded(builder, ids, tb.ask[1, 1])
    )
    assert int(tb.ask_cols[0]) == int(tb.focus_cols[0])  # the position that predicts the answer
    # each focused answer's first token, as predicted at its focus position
    # (the follow-up's circle is not in the picture: that answer has no focus)
    assert [builder.tok.decode([int(t)]) for t in tb.focus_targets] == [sample.answer]
    assert tb.targets[(tb.rows == 0) & (tb.cols == tb.focus_cols[0])].tolist() == [
        int(tb.focus_targets[0])
    ]


def test_count_focus_spreads_over_shape_centres_and_one_token_before_the_picture(
    builder: PromptBuilder,
) -> None:
    sample = make_sample("count", heldout_seed(5))
    [e] = encode_draws(builder, [Draw(sample, thinking=False, text_first=False)])
    tb = collate([e], 0, builder.ids["<|media_pad|>"])
    assert tb.focus_uniform.tolist() == [True]
    assert tb.focus_values[0, :, -1].tolist() == [int(sample.answer)] * FOCUS_HEADS
    ids = tb.batch.input_ids[0]
    on = tb.focus[0, 0].nonzero()[:, 0]
    centres = token_labels(sample, CFG)[:, 1]
    assert len(on) == 1 + int((centres > 0).sum())
    assert int(ids[on[0]]) == builder.ids["<|media_content|>"]
    assert (ids[on[1:]] == builder.ids["<|media_pad|>"]).all()
    # the spread counts shapes, not tokens: the sink's one share plus one per shape
    assert float(tb.focus_share[0].sum()) == pytest.approx(1 + int(sample.answer))
    assert (tb.focus_share[0] > 0).tolist() == tb.focus[0, 0].tolist()
    color = make_sample("color", heldout_seed(5))
    [e] = encode_draws(builder, [Draw(color, thinking=False, text_first=False)])
    assert collate([e], 0, builder.ids["<|media_pad|>"]).focus_uniform.tolist() == [False]


@pytest.mark.parametrize(
    ("centre", "shares"),
    [
        ((42, 42), {(1, 1): 1.0}),  # a token's own centre: all of it there
        ((56, 42), {(1, 1): 0.5, (1, 2): 0.5}),  # on the border of two tokens: half each
        ((56, 56), {(1, 1): 0.25, (1, 2): 0.25, (2, 1): 0.25, (2, 2): 0.25}),  # a corner
        ((49, 42), {(1, 1): 0.75, (1, 2): 0.25}),  # a quarter token right of a centre
        ((7, 42), {(1, 0): 1.0}),  # beyond the outer tokens' centres: the edge token
    ],
)
def test_a_shape_centre_is_shared_by_the_tokens_around_it(
    centre: tuple[int, int], shares: dict[tuple[int, int], float]
) -> None:
    """The centre column splits each shape's centre over the tokens whose own centres surround
    it, by nearness, so it sums to the number of shapes and moves smoothly across token
    borders (a 112-px picture: 4x4 tokens of 28 px, no resize)."""
    image = Image.new("RGB", (112, 112))
    x, y = centre
    shape = Shape("square", "red", x - 5, y - 5, 10)
    labels = token_labels(Sample("count", "", "", "1", [image], scenes=[[shape]]), CFG)
    got = labels[:, 1].reshape(4, 4)
    want = np.zeros((4, 4))
    for (r, c), share in shares.items():
        want[r, c] = share
    assert np.allclose(got, want)


def test_position_table_starts_with_x_and_y_waves_that_survive_any_resize() -> None:
    from server.model.demo.model import POSITION_FREQUENCIES, position_init
    from server.model.moonvit_math import resize_position_table

    table = position_init(64, 64, 96)
    for grid in ((4, 12), (10, 10), (7, 3)):
        flat = resize_position_table(table, grid).view(*grid, 96)
        x = flat[0, :, 0]  # sin(pi x / 2): rises left to right
        y = flat[:, 0, 2]
        assert (x.diff() > 0).all() and (y.diff() > 0).all()
        assert torch.allclose(flat[:, 0, 0], flat[0, 0, 0].expand(grid[0]), atol=1e-5)
    assert table[..., 4 * len(POSITION_FREQUENCIES) :].abs().max() < 0.2


@pytest.mark.parametrize("shares", [(1, 1, 1), (1, 2, 1)])
def test_count_focus_loss_is_least_when_the_sink_holds_its_weighted_share(
    shares: tuple[int, ...],
) -> None:
    """Per head, the count's attention target gives the sink COUNT_SINK_WEIGHTS[head] times a
    centre token's share, and a token holding two shapes' centres twice the share: the loss is
    smallest exactly there."""
    from server.model.demo.data import COUNT_SINK_WEIGHTS
    from server.model.demo.train import attention_loss

    class Captured:
        captured: tuple[torch.Tensor, torch.Tensor, torch.Tensor]

    length, dim, centres, sink = 6, 8, [1, 3, 4], 0
    shapes = sum(shares)
    mask = torch.zeros(1, FOCUS_HEADS, length, dtype=torch.bool)
    mask[0, :, [sink, *centres]] = True
    share = torch.zeros(1, length)
    share[0, sink] = 1.0
    share[0, centres] = torch.tensor(shares, dtype=torch.float)

    def loss(shift: float) -> float:
        q = torch.zeros(1, FOCUS_HEADS, length, dim)
        k = torch.full((1, FOCUS_HEADS, length, dim), 0.0)
        q[0, :, -1, 0] = dim**0.5  # logits = k[..., 0]
        k[0, :, :, 0] = -30.0
        for head, w in enumerate(COUNT_SINK_WEIGHTS):
            for c, n in zip(centres, shares, strict=True):
                k[0, head, c, 0] = math.log(n / (w + shapes))
            k[0, head, sink, 0] = math.log(w / (w + shapes)) + shift
        attn = Captured()
        attn.captured = (q, k, q)
        return float(
            attention_loss(
                attn,  # type: ignore[arg-type]
                torch.tensor([0]),
                torch.tensor([length - 1]),
                mask,
                torch.tensor([True]),
                torch.tensor([sink]),
                share,
            )
        )

    best = loss(0.0)
    assert best < loss(0.3) and best < loss(-0.3)
    entropy = sum(
        -sum(p * math.log(p) for p in [w / (w + shapes)] + [n / (w + shapes) for n in shares])
        for w in COUNT_SINK_WEIGHTS
    )
    assert best == pytest.approx(entropy, abs=1e-4)


def test_stage_one_pictures_are_task_pictures_drawn_from_their_own_seeds() -> None:
    from server.model.demo.data import PICTURE_TASKS, picture

    a, again = picture(0, 5), picture(0, 5)
    assert a.task in PICTURE_TASKS and not a.is_video and len(a.images) == 1
    assert a.question == again.question
    assert np.array_equal(np.asarray(a.images[0]), np.asarray(again.images[0]))
    drawn = [picture(0, i) for i in range(60)]
    assert {s.task for s in drawn} == set(PICTURE_TASKS)
    assert len({(s.question, s.images[0].size) for s in drawn}) == len(drawn)
