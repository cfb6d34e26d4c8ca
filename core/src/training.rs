//! TODO(skeleton): filled in by the training work.
