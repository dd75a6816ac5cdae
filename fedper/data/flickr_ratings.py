"""FLICKR-AES's per-worker ratings file, read so that a damaged copy stops the run in one line
naming the file and the line: not UTF-8, empty, a row with extra fields, or a photo name that
is not a plain file name in the photo folder (`../`, `/`, a subfolder), which could make the
run read a file the user never meant as a photo."""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedper.errors import DatasetNotFoundError

if TYPE_CHECKING:  # pandas is imported inside the functions: clients never need it
    import pandas as pd

log = logging.getLogger("fedper")

IMAGE_DIR = "40K"
SOURCE_URL = "https://github.com/alanspike/personalizedImageAesthetics"
NUM_SCORES = 5  # scores 1-5 become classes 0-4
HEADER_LINES = 1  # a row's line in the file is its position + 1 + HEADER_LINES


def damaged(path: Path, line: int, reason: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"{path} line {line} {reason}: fix or remove that row, or download it again from "
        f"{SOURCE_URL}"
    )


def ratings_text(path: Path) -> str:
    """The file as text (a UTF-8 byte-order mark allowed), or the line its first bad byte is on."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise damaged(path, data[: error.start].count(b"\n") + 1, "is not UTF-8 text") from None
    if not text.strip():
        raise no_ratings(path)
    return text


def no_ratings(path: Path) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"{path} has no ratings: download it again from {SOURCE_URL} (the header "
        "'worker, imagePair, score' and one row per rating)"
    )


def parse_table(path: Path, text: str) -> pd.DataFrame:
    """Every field as text; blank lines kept as empty rows, so row i is line i + 2."""
    import pandas as pd

    try:
        # the header is "worker, imagePair, score": skipinitialspace removes the blank after commas
        table = pd.read_csv(
            io.StringIO(text), skipinitialspace=True, dtype=str, skip_blank_lines=False
        )
    except pd.errors.ParserError as error:
        found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(error))
        if found is None:
            raise DatasetNotFoundError(
                f"{path} is not a CSV file ({error}): download it again from {SOURCE_URL}"
            ) from None
        expected, line, saw = found.groups()
        raise damaged(
            path, int(line), f"has {saw} fields where the header has {expected}"
        ) from None
    table.columns = [str(c).strip() for c in table.columns]
    if not {"worker", "imagePair", "score"} <= set(table.columns):
        raise DatasetNotFoundError(
            f"{path} is not the FLICKR-AES ratings file: expected the header "
            f"'worker, imagePair, score', found {', '.join(table.columns)}; download it again "
            f"from {SOURCE_URL}"
        )
    return table


def is_file_name(name: str) -> bool:
    """A name that stays in its folder: no separator, not `.` or `..`, no NUL."""
    return name not in ("", ".", "..") and not any(c in name for c in "/\\\x00")


def read_ratings(path: Path) -> pd.DataFrame:
    """The ratings as a DataFrame (worker, image, score 1-5), one row per worker and photo.

    Rows with a score outside 1-5, a blank field, or a repeated (worker, photo) pair (the first
    rating counts) are dropped with one warning rather than failing a 193,208-row file for a
    few of them; a row that cannot be a rating at all stops the run, naming its line.
    """
    import pandas as pd

    table = parse_table(path, ratings_text(path))
    table = table[table[["worker", "imagePair", "score"]].notna().any(axis=1)]  # blank lines
    if table.empty:
        raise no_ratings(path)
    ratings = pd.DataFrame(
        {
            "worker": table["worker"].str.strip(),
            "image": table["imagePair"].str.strip(),
            "score": pd.to_numeric(table["score"].str.strip(), errors="coerce"),
        }
    )
    outside = ratings["image"].notna() & ~ratings["image"].map(is_file_name, na_action="ignore")
    if outside.any():
        row = outside.idxmax()
        line = row + 1 + HEADER_LINES
        name = ratings["image"][row]
        raise damaged(
            path, line, f"names the photo {name!r}, which is not a file name in {IMAGE_DIR}/"
        )
    valid = ratings["score"].isin(range(1, NUM_SCORES + 1)) & ratings["worker"].notna()
    valid &= ratings["image"].notna()
    kept = ratings[valid].drop_duplicates(["worker", "image"], keep="first")
    if len(kept) < len(ratings):
        log.warning(
            "FLICKR-AES: ignored %d of %d rating rows in %s (a score outside 1-%d, a blank "
            "field, or a worker rating the same photo again)",
            len(ratings) - len(kept), len(ratings), path.name, NUM_SCORES,
        )  # fmt: skip
    return kept.astype({"score": np.int64}).reset_index(drop=True)
