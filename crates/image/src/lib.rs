//! skiff-image
