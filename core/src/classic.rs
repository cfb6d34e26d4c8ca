//! TODO(skeleton): filled in by the classic work.
