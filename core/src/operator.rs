//! TODO(skeleton): filled in by the operator work.
