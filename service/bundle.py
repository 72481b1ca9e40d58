"""Load and validate a model bundle (torch-free): manifest, checksums, catalog, id maps."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from pydantic import ValidationError

from model.bundle_format import (
    CATALOG,
    ENCODER_GRAPH,
    FOLD_GRAPH,
    FORMAT_VERSION,
    HISTORY_GRAPH,
    MANIFEST,
    MEMORY_INIT,
    SCORER_GRAPH,
    SUPPORTED_OPSETS,
    Catalog,
    Manifest,
    file_sha256,
)
from service.errors import BundleError


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: Manifest
    catalog: Catalog

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def has_history(self) -> bool:
        return self.manifest.num_buckets > 0

    @property
    def uses_memory(self) -> bool:
        """History tokens are a folded memory (fold graph), not bucket tokens (history graph)."""
        return self.has_history and self.manifest.compressor == "memory"

    @cached_property
    def item_index(self) -> dict[str, int]:
        """External item id -> internal id (1-based)."""
        return {ext: i for i, ext in enumerate(self.catalog.items, start=1)}

    @cached_property
    def action_index(self) -> dict[str, int]:
        return {ext: i for i, ext in enumerate(self.catalog.actions, start=1)}

    @cached_property
    def item_categories(self) -> list[tuple[int, ...]]:
        """Indexed by internal item id; [0] is the padding item."""
        return [(), *(tuple(c) for c in self.catalog.item_categories)]

    def external_item(self, internal: int) -> str:
        return self.catalog.items[internal - 1]

    def title(self, internal: int) -> str | None:
        return self.catalog.titles[internal - 1] or None if self.catalog.titles else None

    def category_names(self, internal: int) -> list[str]:
        return [self.catalog.categories[c - 1] for c in self.catalog.item_categories[internal - 1]]


def load_bundle(path: str | Path) -> Bundle:
    """Read and check a bundle; any problem raises BundleError naming the file and the reason."""
    root = Path(path)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{manifest_path}: missing (is {root} a causerec bundle?)")
    try:
        manifest = Manifest.model_validate_json(manifest_path.read_bytes())
    except ValidationError as exc:
        raise BundleError(
            f"{manifest_path}: invalid manifest: {exc.errors()[0]['msg']} "
            f"at {'.'.join(map(str, exc.errors()[0]['loc']))}"
        ) from None
    if manifest.format_version != FORMAT_VERSION:
        raise BundleError(
            f"{manifest_path}: bundle format {manifest.format_version}, this service reads "
            f"format {FORMAT_VERSION}: export the run again with this version (`causerec export`)"
        )
    if manifest.opset not in SUPPORTED_OPSETS:
        raise BundleError(
            f"{manifest_path}: opset {manifest.opset} not supported "
            f"({SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1})"
        )
    history_files = [FOLD_GRAPH, MEMORY_INIT] if manifest.compressor == "memory" else [HISTORY_GRAPH]
    required = [ENCODER_GRAPH, SCORER_GRAPH, CATALOG] + (history_files if manifest.num_buckets > 0 else [])
    for name in required:
        if name not in manifest.files:
            raise BundleError(f"{manifest_path}: does not list {name}")
    for name, expected in manifest.files.items():
        file = root / name
        if not file.is_file():
            raise BundleError(f"{file}: missing")
        if file_sha256(file) != expected:
            raise BundleError(f"{file}: checksum does not match the manifest (corrupt or modified)")
    try:
        catalog = Catalog.model_validate_json((root / CATALOG).read_bytes())
    except (ValidationError, json.JSONDecodeError) as exc:
        raise BundleError(f"{root / CATALOG}: invalid catalog: {exc}") from None
    if len(catalog.items) != manifest.num_items or len(catalog.actions) != manifest.num_actions:
        raise BundleError(
            f"{root / CATALOG}: {len(catalog.items)} items / {len(catalog.actions)} actions, "
            f"manifest says {manifest.num_items} / {manifest.num_actions}"
        )
    return Bundle(root, manifest, catalog)
