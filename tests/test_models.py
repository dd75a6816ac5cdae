"""The base/head split of both models: coverage, sizes, shapes, and loading."""

import pytest
import torch

from fedper.models import MODELS
from fedper.models.mobilenet import MobileNetV1
from fedper.models.resnet import ResNet34
from fedper.training import batch_slices

CASES = [(MobileNetV1, h) for h in range(1, 5)] + [(ResNet34, h) for h in range(1, 4)]


def small(cls, heads, classes=7):
    options = {"width_multiplier": 0.25} if cls is MobileNetV1 else {}
    return cls(classes, heads, **options)


@pytest.mark.parametrize(("cls", "heads"), CASES)
def test_base_and_head_partition_the_whole_model(cls, heads):
    model = small(cls, heads)
    base, head = set(model.part_keys(("base",))), set(model.part_keys(("head",)))
    assert base and head and not base & head
    assert base | head == set(model.state_dict())
    assert model.part_keys(("base", "head")) == list(model.state_dict())


@pytest.mark.parametrize("cls", [MobileNetV1, ResNet34])
def test_more_head_layers_move_blocks_from_base_to_head(cls):
    sizes = [
        sum(p.numel() for p in small(cls, h).head.parameters())
        for h in range(1, cls.max_head_layers + 1)
    ]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    # one head layer is exactly the classifier, sized for the dataset's classes
    one = small(cls, 1, classes=7)
    linear = [m for m in one.head.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linear) == 1 and linear[0].out_features == 7
    assert not [m for m in one.head.modules() if isinstance(m, torch.nn.Conv2d)]


@pytest.mark.parametrize(("cls", "heads"), [(MobileNetV1, 4), (ResNet34, 3), (MobileNetV1, 1)])
@pytest.mark.parametrize("size", [32, 224])
def test_forward_at_32_and_224_pixels(cls, heads, size):
    model = small(cls, heads).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 7)


def test_full_width_mobilenet_has_all_13_blocks():
    model = MobileNetV1(10, 1)
    blocks = [m for m in model.base.children()]
    assert len(blocks) == 14  # stem + 13 depthwise-separable blocks
    last_conv = [m for m in model.base.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    assert last_conv.out_channels == 1024


@pytest.mark.parametrize("heads", [0, 5])
def test_head_layers_out_of_range_are_refused(heads):
    with pytest.raises(ValueError, match="num_head_layers"):
        MobileNetV1(10, heads)


def test_load_keys_round_trip_and_refuses_misfits():
    a, b = small(MobileNetV1, 2), small(MobileNetV1, 2)
    b.load_keys(a.part_state(("head",)), b.part_keys(("head",)))
    for key, value in a.part_state(("head",)).items():
        assert torch.equal(b.state_dict()[key], value)
    assert not all(
        torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.part_keys(("base",))
    )
    wrong = small(MobileNetV1, 2, classes=3).part_state(("head",))
    with pytest.raises(ValueError, match="shape"):
        b.load_keys(wrong, b.part_keys(("head",)))
    with pytest.raises(ValueError, match="missing"):
        b.load_keys(a.part_state(("base",)), b.part_keys(("head",)))


def test_a_last_batch_of_one_joins_the_previous_batch():
    order = torch.arange(33)
    batches = list(batch_slices(33, 16, order))
    assert [len(b) for b in batches] == [16, 17]
    assert torch.equal(torch.cat(batches), order)
    assert [len(b) for b in batch_slices(34, 16, torch.arange(34))] == [16, 16, 2]


def test_registry_names_match_config_names():
    assert set(MODELS) >= {"mobile", "resnet"}
