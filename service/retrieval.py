"""Top-k from an approximate index of the catalogue (export.index), with exact exclusions.

The index returns candidates by inner product of unit vectors, the model's cosine; scores are
divided by the temperature like the scorer graph's, so both paths answer on the same scale. Seen
items are removed from the candidates exactly: k + (the most seen items of any query) candidates
are asked for, so k remain after the removal.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("causerec.retrieval")


class ItemIndex:
    def __init__(self, path: Path, temperature: float, ef_search: int, threads: int = 1) -> None:
        import faiss  # optional dependency (extra "index"): only bundles with an index need it

        faiss.omp_set_num_threads(threads)
        self.index = faiss.read_index(str(path))
        faiss.ParameterSpace().set_index_parameter(self.index, "efSearch", ef_search)
        self.ef_search, self.temperature = ef_search, temperature

    def top_k(
        self, queries: np.ndarray, seen: list[np.ndarray | None], k: int
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """(internal ids, scores) per query, best first, seen items never returned."""
        extra = max([len(s) for s in seen if s is not None] + [0])
        ask = min(k + extra, self.index.ntotal)
        out: list[tuple[np.ndarray, np.ndarray]] = []
        ips, ids = self.index.search(np.ascontiguousarray(queries, np.float32), ask)
        for row, (ip, found) in enumerate(zip(ips, ids, strict=True)):
            internal = found + 1  # row i of the index is item i + 1; -1 (no result) becomes 0
            keep = internal > 0
            if seen[row] is not None and len(seen[row]):  # type: ignore[arg-type]
                keep &= ~np.isin(internal, seen[row])  # type: ignore[arg-type]
            out.append((internal[keep][:k], (ip[keep][:k] / self.temperature).astype(np.float32)))
        return out
