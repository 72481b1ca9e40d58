"""A corrupt or incompatible bundle fails at load with a message naming the file and the problem."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from model.bundle_format import file_sha256
from service.bundle import load_bundle
from service.errors import BundleError
from service.runtime import load_engine


@pytest.fixture
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_bundle, tmp_path / "b"))


def _edit_manifest(bundle: Path, **changes: object) -> None:
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def test_a_good_bundle_loads_from_a_copied_location(bundle_copy: Path) -> None:
    engine = load_engine(bundle_copy, device="cpu")  # paths are relative: a moved bundle still loads
    assert engine.bundle.version == json.loads((bundle_copy / "manifest.json").read_text())["version"]
    assert engine.device == "cpu"


def test_a_bundle_is_readable_by_every_user(tiny_bundle: Path) -> None:
    """A serving container runs as another user than the one who exported the bundle."""
    assert tiny_bundle.stat().st_mode & 0o777 == 0o755
    assert {f.stat().st_mode & 0o777 for f in tiny_bundle.iterdir()} == {0o644}


def test_a_bundle_of_the_previous_format_is_refused_with_what_to_do(bundle_copy: Path) -> None:
    _edit_manifest(bundle_copy, format_version=1)
    with pytest.raises(BundleError, match="bundle format 1, this service reads format 2"):
        load_bundle(bundle_copy)


def test_missing_file(bundle_copy: Path) -> None:
    (bundle_copy / "history.onnx").unlink()
    with pytest.raises(BundleError, match=r"history\.onnx: missing"):
        load_bundle(bundle_copy)


def test_corrupt_graph_fails_its_checksum(bundle_copy: Path) -> None:
    with (bundle_copy / "encoder.onnx").open("r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00\x01\x02\x03")
    with pytest.raises(BundleError, match=r"encoder\.onnx: checksum does not match"):
        load_bundle(bundle_copy)


def test_wrong_opset(bundle_copy: Path) -> None:
    _edit_manifest(bundle_copy, opset=9)
    with pytest.raises(BundleError, match="opset 9 not supported"):
        load_bundle(bundle_copy)


def test_newer_format(bundle_copy: Path) -> None:
    _edit_manifest(bundle_copy, format_version=99)
    with pytest.raises(BundleError, match="bundle format 99"):
        load_bundle(bundle_copy)


def test_manifest_disagrees_with_catalog(bundle_copy: Path) -> None:
    _edit_manifest(bundle_copy, num_items=5)
    with pytest.raises(BundleError, match="manifest says 5"):
        load_bundle(bundle_copy)


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"manifest\.json: missing"):
        load_bundle(tmp_path)


def test_garbage_manifest(bundle_copy: Path) -> None:
    (bundle_copy / "manifest.json").write_text('{"version": 3}')
    with pytest.raises(BundleError, match="invalid manifest"):
        load_bundle(bundle_copy)


def test_a_memory_bundle_carries_the_fold_graph_and_its_initial_memory(memory_bundle: Path) -> None:
    manifest = json.loads((memory_bundle / "manifest.json").read_text())
    assert (manifest["compressor"], manifest["num_buckets"], manifest["segment_len"]) == ("memory", 4, 4)
    assert manifest["bucket_size"] == 0  # the store keeps the whole history, not buckets
    assert {"fold.onnx", "memory_init.npy"} <= set(manifest["files"])
    assert "history.onnx" not in manifest["files"]
    engine = load_engine(memory_bundle, device="cpu")
    assert engine.folder is not None
    assert engine.initial_memory.shape == (4, manifest["d_model"])


def test_a_memory_bundle_without_its_fold_graph_is_refused(memory_bundle: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(memory_bundle, tmp_path / "m"))
    files = json.loads((copy / "manifest.json").read_text())["files"]
    del files["fold.onnx"]
    _edit_manifest(copy, files=files)
    with pytest.raises(BundleError, match=r"does not list fold\.onnx"):
        load_bundle(copy)


def test_an_initial_memory_of_the_wrong_shape_is_refused(memory_bundle: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(memory_bundle, tmp_path / "m"))
    np.save(copy / "memory_init.npy", np.zeros((3, 5), np.float32))
    files = json.loads((copy / "manifest.json").read_text())["files"]
    _edit_manifest(copy, files={**files, "memory_init.npy": file_sha256(copy / "memory_init.npy")})
    with pytest.raises(BundleError, match=r"memory_init\.npy: float32\[3, 5\], expected float32\[4, "):
        load_engine(copy, device="cpu")
