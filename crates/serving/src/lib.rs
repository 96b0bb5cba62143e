//! skiff-serving
