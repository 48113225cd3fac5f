//! Shared helpers for Manifold's multi-process tests.
