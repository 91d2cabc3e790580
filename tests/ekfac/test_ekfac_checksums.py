"""Damaged factor files and phase partials are refused with the file's name and the way out (issue 18).

A byte flipped inside a `.safetensors` file (size and header unchanged) still parses, and scores
from it were wrong with exit 0; a truncated file raised a bare SafetensorError."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from ekfac_helpers import tiny_llama

from infra_pl.checksum import CorruptFileError
from infra_pl.ekfac import Factors, fit_factors, phase_store
from infra_pl.ekfac.lambdas import LambdaState
from infra_pl.ekfac.modules import LayerShape


def flip_middle(path: Path) -> None:
    """Flip one byte in the middle of the tensor data: size and safetensors header stay the same."""
    data = bytearray(path.read_bytes())
    header_end = 8 + struct.unpack("<Q", bytes(data[:8]))[0]
    at = (header_end + len(data)) // 2
    data[at] ^= 0x40
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


@pytest.fixture(scope="module")
def factors(batches):
    return fit_factors(tiny_llama(), batches, fisher="empirical", train_ids=["a", "b", "c"])


@pytest.mark.parametrize("damage", [flip_middle, truncate])
@pytest.mark.parametrize("name", ["covariance.safetensors", "eigen.safetensors", "lambda.safetensors"])
def test_damaged_factor_file_names_the_file_and_refit(factors, tmp_path, damage, name):
    out = factors.save(tmp_path / "factors")
    assert set(json.loads((out / "manifest.json").read_text())["checksums"]["sha256"]) == {
        "covariance.safetensors", "eigen.safetensors", "lambda.safetensors"}
    Factors.load(out)  # whole: loads
    damage(out / name)
    with pytest.raises(CorruptFileError) as err:
        Factors.load(out)
    assert str(out / name) in str(err.value) and "refit: true" in str(err.value)
    with pytest.raises(CorruptFileError, match=name):  # also when only some modules are read
        Factors.load(out, modules=[next(iter(factors.modules))])


def test_manifest_without_checksums_loads_with_a_notice_and_a_truncated_file_is_still_named(factors, tmp_path, capsys):
    out = factors.save(tmp_path / "old")
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["checksums"]  # as written before checksums existed
    (out / "manifest.json").write_text(json.dumps(manifest))
    loaded = Factors.load(out)
    assert "no recorded checksum" in capsys.readouterr().err
    name = next(iter(factors.modules))
    assert torch.equal(loaded.modules[name].lambdas, factors.modules[name].lambdas)
    truncate(out / "eigen.safetensors")
    with pytest.raises(CorruptFileError) as err:  # not a bare SafetensorError
        Factors.load(out)
    assert str(out / "eigen.safetensors") in str(err.value) and "refit: true" in str(err.value)


KEY = {"modules": {"mlp": {"out_features": 3, "in_features": 4, "has_bias": False}}, "fisher": "true"}


def lambda_state() -> LambdaState:
    return LambdaState(shapes={"mlp": LayerShape(3, 4, False)}, sums={"mlp": torch.arange(12.0).reshape(3, 4) + 1},
                       n_sequences=torch.tensor(5))


@pytest.mark.parametrize("damage", [flip_middle, truncate])
def test_damaged_phase_partial_names_the_file_and_the_way_out(tmp_path, damage):
    phase_store.save_lambda(tmp_path, lambda_state(), KEY)
    state, why = phase_store.load_lambda(tmp_path, KEY)
    assert why == "reused" and torch.equal(state.sums["mlp"], lambda_state().sums["mlp"])
    partial = tmp_path / phase_store.PARTIAL / "lambda.safetensors"
    damage(partial)
    with pytest.raises(CorruptFileError) as err:
        phase_store.load_lambda(tmp_path, KEY)
    assert str(partial) in str(err.value) and "refit: true" in str(err.value) and "Delete" in str(err.value)


def test_phase_partial_without_checksum_loads_with_a_notice(tmp_path, capsys):
    phase_store.save_lambda(tmp_path, lambda_state(), KEY)
    key_file = tmp_path / phase_store.PARTIAL / "lambda.json"
    stored = json.loads(key_file.read_text())
    del stored[phase_store.CHECKSUM]
    key_file.write_text(json.dumps(stored))
    state, why = phase_store.load_lambda(tmp_path, KEY)
    assert why == "reused" and state is not None
    assert "no recorded checksum" in capsys.readouterr().err
    assert phase_store.load_lambda(tmp_path, {**KEY, "fisher": "empirical"})[1].startswith("stored lambda was computed")
