"""The batch transform: the layout it is asked for, the pixels it should make, seeded draws."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedper.data.transforms import BatchTransform

MEAN, STD = [0.5, 0.4, 0.3], [0.25, 0.2, 0.15]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def images(n: int = 6, size: int = 12, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=generator)


def reference(batch: torch.Tensor, image_size: int) -> torch.Tensor:
    """The textbook order: scale to [0, 1], resize, then normalize."""
    x = batch.permute(0, 3, 1, 2).float() / 255
    if x.shape[-1] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("image_size", [12, 40])
@pytest.mark.parametrize("augment", [False, True])
def test_batches_have_the_layout_asked_for(channels_last, image_size, augment):
    transform = BatchTransform(image_size, MEAN, STD, 2, augment, channels_last=channels_last)
    batch = images()
    draws = transform.draw(6, torch.Generator().manual_seed(1), torch.device("cpu"))
    x = transform(batch, draws if augment else None)
    assert x.shape == (6, 3, image_size, image_size) and x.dtype == torch.float32
    if channels_last:
        assert x.is_contiguous(memory_format=torch.channels_last)
        assert x.stride()[1] == 1
    else:
        # the old permute(...).float() gave channels_last strides here even when off
        assert x.is_contiguous() and x.stride()[-1] == 1 and x.stride()[1] == image_size**2


@pytest.mark.parametrize("image_size", [12, 40])
def test_normalized_pixels_match_the_textbook_order(image_size):
    batch = images()
    x = BatchTransform(image_size, MEAN, STD)(batch)
    # normalizing before the resize commutes with it (bilinear weights sum to one)
    torch.testing.assert_close(x, reference(batch, image_size), atol=2e-5, rtol=0)


def test_crop_and_flip_are_shifts_of_the_zero_padded_image():
    p, batch = 3, images(n=8)
    transform = BatchTransform(12, MEAN, STD, crop_padding=p, flip=True)
    draws = transform.draw(8, torch.Generator().manual_seed(5), torch.device("cpu"))
    x = transform(batch, draws)
    padded = F.pad(batch.permute(0, 3, 1, 2), (p, p, p, p))  # black borders
    flipped = 0
    for i in range(8):
        top, left = int(draws.rows[i, 0]), int(draws.cols[i].min())
        assert 0 <= top <= 2 * p and 0 <= left <= 2 * p
        assert torch.equal(draws.rows[i], torch.arange(top, top + 12))
        mirrored = bool(draws.cols[i, 0] > draws.cols[i, -1])
        flipped += mirrored
        crop = padded[i : i + 1, :, top : top + 12, left : left + 12]
        expected = reference(
            crop.permute(0, 2, 3, 1).flip(2) if mirrored else crop.permute(0, 2, 3, 1), 12
        )
        torch.testing.assert_close(x[i : i + 1], expected, atol=2e-5, rtol=0)
    assert 0 < flipped < 8  # both branches were exercised with this seed


@pytest.mark.parametrize("channels_last", [False, True])
def test_a_resized_batch_is_shifted_by_at_most_the_padding_in_output_pixels(channels_last):
    p, size, batch = 4, 40, images(n=8)
    transform = BatchTransform(size, MEAN, STD, crop_padding=p, flip=True,
                               channels_last=channels_last)  # fmt: skip
    draws = transform.draw(8, torch.Generator().manual_seed(2), torch.device("cpu"))
    assert draws.rows.shape == (8, size)  # drawn on the output grid, not the 12-pixel source
    x = transform(batch, draws)
    plain = reference(batch, size)
    black = (-torch.tensor(MEAN) / torch.tensor(STD)).view(1, 3, 1, 1)
    padded = F.pad(plain - black, (p, p, p, p)) + black  # borders as black normalizes to
    shifts = set()
    for i in range(8):
        top, left = int(draws.rows[i, 0]), int(draws.cols[i].min())
        assert 0 <= top <= 2 * p and 0 <= left <= 2 * p
        shifts.add((top - p, left - p))
        crop = padded[i : i + 1, :, top : top + size, left : left + size]
        if bool(draws.cols[i, 0] > draws.cols[i, -1]):
            crop = crop.flip(-1)
        torch.testing.assert_close(x[i : i + 1], crop, atol=2e-5, rtol=0)
    # a shift of p source pixels would have moved the image by up to p * 40 / 12 output pixels
    assert max(max(abs(dy), abs(dx)) for dy, dx in shifts) <= p and len(shifts) > 1


def test_draws_are_a_pure_function_of_the_generator_and_epoch_sized():
    transform = BatchTransform(12, MEAN, STD, crop_padding=2, flip=True)
    first = transform.draw(50, torch.Generator().manual_seed(9), torch.device("cpu"))
    again = transform.draw(50, torch.Generator().manual_seed(9), torch.device("cpu"))
    other = transform.draw(50, torch.Generator().manual_seed(10), torch.device("cpu"))
    assert first.rows.shape == (50, 12) and first.cols.shape == (50, 12)
    assert torch.equal(first.rows, again.rows) and torch.equal(first.cols, again.cols)
    assert not torch.equal(first.cols, other.cols)
    part = first[10:20]
    assert torch.equal(part.rows, first.rows[10:20])
    assert BatchTransform(12, MEAN, STD).draw(5, None, torch.device("cpu")) is None


def test_normalization_constants_are_made_once_per_device():
    transform = BatchTransform(12, MEAN, STD)
    scale, shift = transform.affine(torch.device("cpu"))
    transform(images())
    assert transform.affine(torch.device("cpu"))[0] is scale
    assert transform.affine(torch.device("cpu"))[1] is shift


@pytest.mark.cuda
@needs_cuda
def test_the_same_draws_give_the_same_batch_on_cuda_and_cpu():
    cuda = torch.device("cuda")
    transform = BatchTransform(40, MEAN, STD, crop_padding=2, flip=True, device=cuda)
    batch = images()
    on_cpu = transform(batch, transform.draw(6, torch.Generator().manual_seed(3), "cpu"))
    draws = transform.draw(6, torch.Generator().manual_seed(3), cuda)
    assert draws.rows.device.type == "cuda"
    on_gpu = transform(batch.to(cuda), draws)
    assert on_gpu.device.type == "cuda" and on_gpu.is_contiguous()
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, atol=1e-5, rtol=0)
