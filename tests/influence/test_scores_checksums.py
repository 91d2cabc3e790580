"""A damaged scores part file is refused with its name and the way out, not read (issue 18)."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra_pl.checksum import CorruptFileError
from infra_pl.scores_store import PartWriter, done_indices, read_parts


def write_parts(directory: Path) -> list[Path]:
    writer = PartWriter(directory, "k1", flush_rows=4)
    for start in (0, 4, 8):  # parts of 4, 4 and 2 rows
        writer.add({"index": i, "score": float(i) * 0.25} for i in range(start, min(start + 4, 10)))
    writer.flush()
    return sorted(directory.glob("part-*.parquet"))


def flip_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage", [flip_middle, truncate])
def test_damaged_part_names_the_file_and_the_way_out(tmp_path, damage):
    parts = write_parts(tmp_path)
    assert len(parts) == 3 and all(Path(str(p) + ".sha256").exists() for p in parts)
    assert read_parts(tmp_path, "k1").column("score").to_pylist() == [i * 0.25 for i in range(10)]
    damage(parts[1])
    for read in (read_parts, done_indices):  # the final merge and a resuming pass
        with pytest.raises(CorruptFileError) as err:
            read(tmp_path, "k1")
        assert str(parts[1]) in str(err.value) and "Delete" in str(err.value)
    # The way out works: without that part, a resumed pass scores again only its examples.
    parts[1].unlink()
    assert done_indices(tmp_path, "k1") == set(range(10)) - {4, 5, 6, 7}


def test_parts_without_checksums_read_with_a_notice(tmp_path, capsys):
    parts = write_parts(tmp_path)
    for part in parts:
        Path(str(part) + ".sha256").unlink()  # as written before checksums existed
    assert done_indices(tmp_path, "k1") == set(range(10))
    assert "no recorded checksum" in capsys.readouterr().err
    truncate(parts[0])
    with pytest.raises(CorruptFileError, match=parts[0].name):  # not a bare ArrowInvalid
        read_parts(tmp_path, "k1")


def test_a_new_key_drops_old_parts_and_their_checksums(tmp_path):
    write_parts(tmp_path)
    PartWriter(tmp_path, "k2")
    assert not list(tmp_path.glob("part-*"))
