//! skiff-runtime
