"""Echo Memory: every artifact embedded and searchable (text, image, similar, near-duplicates).

- embedders.py: MiniLM (text, always there) and CLIP (images + queries); `artifact_text(meta)`.
- index.py: `VectorIndex`, one FAISS index per embedder over the catalog's int64 ids (exact up to
  200k vectors, HNSW above); built from index_files.py (atomic generations on disk, checksums, the
  file lock), knn.py (faiss, HNSW calibration, filtered search), dupes.py and reconcile.py
  (reconciliation with the catalog). Import their names from index.py as before.
- service.py: `Memory`, the operations the CLI and API call (add, search_text, search_image, similar,
  dupes, reconcile, stats).
- pngmeta.py: A1111 / ComfyUI / InvokeAI PNG metadata, read for `memory import`; the A1111 writer.

Nothing heavy is imported here: import the submodule you need (numpy at most at import time; faiss,
torch, transformers and sentence-transformers inside the functions that use them).
"""
