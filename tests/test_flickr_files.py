"""A FLICKR-AES ratings file that is malformed, not UTF-8, empty, or names a photo outside the
photo folder stops the run in one line naming the file and the line, before any photo is read."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import make_config
from helpers.datasets import MINI_BOUNDS, write_mini_flickr

from fedper.data import prepare_dataset
from fedper.data.flickr import IMAGE_DIR, RATINGS_FILE, read_ratings
from fedper.errors import DatasetNotFoundError

HEADER = b"worker, imagePair, score\n"
GOOD = b"A001, farm1_1_a.jpg, 3\nA002, farm1_2_b.jpg, 5\n"


def refusal(tmp_path: Path, content: bytes) -> str:
    path = tmp_path / RATINGS_FILE
    path.write_bytes(content)
    with pytest.raises(DatasetNotFoundError) as error:
        read_ratings(path)
    return str(error.value)


@pytest.mark.parametrize(
    ("content", "line", "reason"),
    [
        (HEADER + GOOD + b"A003, farm1_3_c.jpg, 4, extra\n", 4, "has 4 fields where the header has 3"),
        (HEADER + GOOD + b"A003, farm1_\xff.jpg, 4\n", 4, "is not UTF-8 text"),
        (HEADER + b"A003, ../../etc/passwd, 4\n" + GOOD, 2, "names the photo '../../etc/passwd', which is not a file name in 40K/"),
        (HEADER + GOOD + b"A003, /etc/passwd, 4\n", 4, "names the photo '/etc/passwd', which is not a file name in 40K/"),
        (HEADER + GOOD + b"A003, sub/../../x.jpg, 4\n", 4, "names the photo 'sub/../../x.jpg', which is not a file name in 40K/"),
    ],
)  # fmt: skip
def test_a_bad_row_is_named_by_file_and_line(tmp_path, content, line, reason):
    message = refusal(tmp_path, content)
    assert message.startswith(f"{tmp_path / RATINGS_FILE} line {line} {reason}: "), message
    assert "\n" not in message and "download it again" in message


@pytest.mark.parametrize("content", [b"", b"\n\n", HEADER])
def test_an_empty_ratings_file_is_one_line(tmp_path, content):
    message = refusal(tmp_path, content)
    assert message.startswith(f"{tmp_path / RATINGS_FILE} has no ratings: download it again")


def test_blank_lines_do_not_shift_the_line_a_bad_row_is_named_by(tmp_path):
    message = refusal(tmp_path, HEADER + b"\nA001, a.jpg, 3\n\nA003, b.jpg, 4, 9\n")
    assert message.startswith(f"{tmp_path / RATINGS_FILE} line 5 has 4 fields"), message


def test_a_photo_outside_the_folder_is_refused_before_any_photo_is_decoded(tmp_path):
    data_dir = tmp_path / "datasets"
    write_mini_flickr(data_dir)
    ratings = data_dir / "flickr" / RATINGS_FILE
    outside = data_dir / "flickr" / "secret.jpg"
    outside.write_bytes((data_dir / "flickr" / IMAGE_DIR).iterdir().__next__().read_bytes())
    with ratings.open("a") as file:
        file.write("A000W00, ../secret.jpg, 3\n")
    cfg = make_config(
        [f"data_dir={data_dir}", "num_clients=5", "clients_per_round=5", "dataset.image_size=16",
         *MINI_BOUNDS],
        config_name="flickr",
    )  # fmt: skip
    with pytest.raises(DatasetNotFoundError, match=r"names the photo '\.\./secret\.jpg'"):
        prepare_dataset(cfg)
    assert not (data_dir / "flickr" / "cache").exists(), "no photo may be decoded"
