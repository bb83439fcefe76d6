//! Integration tests for fleming-model (one binary).
