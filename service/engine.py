"""ONNX Runtime inference for a bundle: the encoder (a user's inputs -> query vector) and scorer
(query vectors -> top-k) graphs, and the store's history-token graph (bucket tokens) or fold graph
(memory compressor). No torch.

CUDA is used when the CUDA execution provider is available *and* active after the session is
created (ONNX Runtime silently falls back to the CPU when the CUDA libraries are missing), else CPU.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from model.bucketing import Event
from model.bundle_format import (
    ENCODER_GRAPH,
    ENCODER_OUTPUTS,
    FOLD_GRAPH,
    FOLD_OUTPUTS,
    HISTORY_GRAPH,
    INDEX_FILE,
    MEMORY_INIT,
    SCORER_GRAPH,
)
from model.segments import segment_arrays
from service.bundle import Bundle
from service.errors import BundleError
from service.retrieval import ItemIndex

log = logging.getLogger("causerec.engine")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def make_session(path: str, device: str, intra_op_threads: int) -> ort.InferenceSession:
    """device: "auto" (CUDA if it really runs, else CPU), "cuda" (fail without it) or "cpu"."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    # Spinning threads burn the cores uvicorn and Redis need between requests.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    want_cuda = device in ("auto", "cuda") and CUDA in ort.get_available_providers()
    if want_cuda:
        _preload_cuda()
    providers = [CUDA, CPU] if want_cuda else [CPU]
    try:
        session = ort.InferenceSession(path, options, providers=providers)
    except Exception as exc:  # ORT raises its own untyped errors for unreadable graphs
        raise BundleError(f"{path}: ONNX Runtime cannot load it: {exc}") from None
    if want_cuda and CUDA not in session.get_providers():
        if device == "cuda":
            raise BundleError(f"{path}: CUDA was requested but the CUDA execution provider is not active")
        log.warning("onnxruntime-gpu installed but CUDA is not active (no GPU visible?): running on the CPU")
    return session


@functools.cache
def _preload_cuda() -> None:
    """The GPU image carries CUDA and cuDNN as NVIDIA's pip wheels, not in a system path: ONNX
    Runtime (>= 1.21) loads them from site-packages when asked to."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:
            preload()
        except Exception as exc:  # missing wheels: CUDA may still come from the system libraries
            log.info("onnxruntime.preload_dlls: %s", exc)


@dataclass
class UserFeatures:
    """Everything the encoder needs for one user (the bundle's internal ids, numpy)."""

    user_hash: int
    items: np.ndarray  # (n,) int64, oldest first, n <= L
    actions: np.ndarray  # (n,) int64
    ts: np.ndarray  # (n,) int64
    hist_tokens: np.ndarray | None = None  # (V, D) float32
    hist_mask: np.ndarray | None = None  # (V,) bool
    hist_ts: np.ndarray | None = None  # (V,) int64


@dataclass
class Ranked:
    items: np.ndarray  # (<= k,) int64 internal ids, best first
    scores: np.ndarray  # (<= k,) float32


class Engine:
    def __init__(
        self,
        bundle: Bundle,
        device: str = "auto",
        intra_op_threads: int = 1,
        io_binding: bool | None = None,
        retrieval: str = "auto",
        index_ef: int | None = None,
    ) -> None:
        self.bundle = bundle
        m = bundle.manifest
        self.encoder = make_session(str(bundle.path / ENCODER_GRAPH), device, intra_op_threads)
        self.scorer = make_session(str(bundle.path / SCORER_GRAPH), device, intra_op_threads)
        self.history = self.folder = None
        self.initial_memory = np.zeros((0, m.d_model), np.float32)
        if bundle.uses_memory:
            self.folder = make_session(str(bundle.path / FOLD_GRAPH), device, intra_op_threads)
            self.initial_memory = self._load_initial_memory()
        elif bundle.has_history:
            self.history = make_session(str(bundle.path / HISTORY_GRAPH), device, intra_op_threads)
        self.device = "cuda" if CUDA in self.scorer.get_providers() else "cpu"
        # On CUDA, inputs are copied to the device once at bind time and only the k ids and scores
        # come back; the (batch, num_items) score matrix never leaves the GPU. Default: on for CUDA.
        self.io_binding = self.device == "cuda" if io_binding is None else io_binding
        self.encoder_inputs = {i.name for i in self.encoder.get_inputs()}
        self.index = self._load_index(retrieval, index_ef, intra_op_threads)
        self.length_buckets = m.length_buckets
        self.num_buckets, self.d_model = m.num_buckets, m.d_model
        log.info(
            "bundle %s loaded on %s (providers %s)", bundle.version, self.device, self.scorer.get_providers()
        )

    def _load_index(self, retrieval: str, ef: int | None, threads: int) -> ItemIndex | None:
        """The approximate item index: with retrieval "auto" on the CPU when the bundle has one,
        always with "index"; exact scoring otherwise (small catalogues, the GPU)."""
        m = self.bundle.manifest
        wanted = retrieval == "index" or (retrieval == "auto" and self.device == "cpu")
        if m.index is None or not wanted:
            if retrieval == "index":
                raise BundleError(
                    f"retrieval=index, but bundle {m.version} has no item index (export --index)"
                )
            return None
        try:
            index = ItemIndex(
                self.bundle.path / INDEX_FILE, m.temperature, ef or int(m.index["ef_search"]), threads
            )
        except ImportError:
            if retrieval == "index":
                raise BundleError("retrieval=index needs faiss-cpu (pip install 'causerec[index]')") from None
            log.warning(
                "bundle %s has an item index, but faiss is not installed: scoring every item", m.version
            )
            return None
        log.info("retrieval: approximate item index (%s, ef %s)", m.index["kind"], index.ef_search)
        return index

    # ---- history tokens (used by the store) ------------------------------------------------------
    def bucket_tokens(self, bucket_items: np.ndarray, bucket_cats: np.ndarray) -> np.ndarray:
        """(n, G) int64 items (0 = empty) and (n,) int64 categories -> (n, D) float32 tokens."""
        if self.history is None:
            raise BundleError(
                f"bundle {self.bundle.version} ({self.bundle.manifest.mode}) has no history graph"
            )
        if len(bucket_cats) == 0:
            return np.zeros((0, self.d_model), np.float32)
        out = self.history.run(
            None, {"bucket_items": bucket_items.astype(np.int64), "bucket_cats": bucket_cats.astype(np.int64)}
        )
        return np.asarray(out[0], np.float32)

    def _load_initial_memory(self) -> np.ndarray:
        path = self.bundle.path / MEMORY_INIT
        m = self.bundle.manifest
        try:
            initial = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise BundleError(f"{path}: unreadable: {exc}") from None
        if initial.shape != (m.num_buckets, m.d_model) or initial.dtype != np.float32:
            raise BundleError(
                f"{path}: {initial.dtype}{list(initial.shape)}, "
                f"expected float32[{m.num_buckets}, {m.d_model}]"
            )
        return np.asarray(initial, np.float32)

    def fold(self, memory: np.ndarray, segments: dict[str, np.ndarray]) -> np.ndarray:
        """memory (n, C, D) float32 + one segment per row (n, S arrays per model.segments) -> (n, C, D)."""
        if self.folder is None:
            raise BundleError(f"bundle {self.bundle.version} has no fold graph (not a memory compressor)")
        feeds = {"memory": np.ascontiguousarray(memory, np.float32), **segments}
        return np.asarray(self.folder.run(list(FOLD_OUTPUTS), feeds)[0], np.float32)

    # ---- ranking ---------------------------------------------------------------------------------
    def padded_length(self, n: int) -> int:
        return next((b for b in self.length_buckets if b >= n), self.length_buckets[-1])

    def encoder_feeds(self, users: list[UserFeatures]) -> dict[str, np.ndarray]:
        b = len(users)
        length = self.padded_length(max(len(u.items) for u in users))
        v = max(self.num_buckets, 1)
        feeds: dict[str, Any] = {
            "user_hash": np.array([u.user_hash for u in users], np.int64),
            "hist_tokens": np.zeros((b, v, self.d_model), np.float32),
            "hist_mask": np.zeros((b, v), bool),
            "hist_ts": np.zeros((b, v), np.int64),
            "items": np.zeros((b, length), np.int64),
            "actions": np.zeros((b, length), np.int64),
            "ts": np.zeros((b, length), np.int64),
            "mask": np.zeros((b, length), bool),
        }
        for i, u in enumerate(users):
            n = min(len(u.items), length)
            if n:  # left-padded: the newest event is always the last token
                feeds["items"][i, -n:] = u.items[-n:]
                feeds["actions"][i, -n:] = u.actions[-n:]
                feeds["ts"][i, -n:] = u.ts[-n:]
                feeds["mask"][i, -n:] = True
            if u.hist_tokens is not None and self.num_buckets:
                feeds["hist_tokens"][i] = u.hist_tokens
                feeds["hist_mask"][i] = u.hist_mask
                feeds["hist_ts"][i] = u.hist_ts
        return {name: value for name, value in feeds.items() if name in self.encoder_inputs}

    def encode(self, users: list[UserFeatures]) -> np.ndarray:
        """(B, D) float32 unit-norm query vectors: the backbone, run once per change of a user."""
        if not users:
            return np.zeros((0, self.d_model), np.float32)
        return np.asarray(self.encoder.run(list(ENCODER_OUTPUTS), self.encoder_feeds(users))[0], np.float32)

    def score(self, queries: np.ndarray, seen: list[np.ndarray | None], k: int) -> list[Ranked]:
        """Top-k per query vector in one call (the scorer graph, or the item index); excluded
        (``seen``) items never appear."""
        k = min(k, self.bundle.manifest.num_items)
        if self.index is not None:
            return [Ranked(ids, scores) for ids, scores in self.index.top_k(queries, seen, k)]
        width = max([len(s) for s in seen if s is not None] + [1])
        exclude = np.full((len(seen), width), -1, np.int64)
        for i, s in enumerate(seen):
            if s is not None and len(s):
                exclude[i, : len(s)] = s
        feeds: dict[str, np.ndarray] = {
            "query": np.ascontiguousarray(queries, np.float32),
            "exclude": exclude,
            "k": np.array([k], np.int64),
        }
        scores, ids = self._run_scorer(feeds)
        out = []
        for s, i in zip(scores, ids, strict=True):
            keep = np.isfinite(s)  # fewer than k candidates left after exclusions
            out.append(Ranked(i[keep].astype(np.int64), s[keep].astype(np.float32)))
        return out

    def rank(self, users: list[UserFeatures], seen: list[np.ndarray | None], k: int) -> list[Ranked]:
        """encode + score: the whole model for users whose query is not cached."""
        return self.score(self.encode(users), seen, k)

    def _run_scorer(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        if not self.io_binding:
            scores, ids = self.scorer.run(["scores", "ids"], feeds)
            return scores, ids
        binding = self.scorer.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        binding.bind_output("scores", "cpu")
        binding.bind_output("ids", "cpu")
        self.scorer.run_with_iobinding(binding)
        scores, ids = binding.copy_outputs_to_cpu()
        return scores, ids

    def warmup(self) -> None:
        """Run every padded length once so the first real request pays no allocation cost."""
        for length in self.length_buckets:
            user = UserFeatures(
                0, np.ones(length, np.int64), np.ones(length, np.int64), np.zeros(length, np.int64)
            )
            self.rank([user], [None], 10)
        if self.history is not None:
            self.bucket_tokens(
                np.ones((1, self.bundle.manifest.bucket_size), np.int64), np.zeros(1, np.int64)
            )
        if self.folder is not None:
            s = self.bundle.manifest.segment_len
            self.fold(self.initial_memory[None], segment_arrays([[Event(0, 0, 1, 1)] * s], s))
