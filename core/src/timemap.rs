//! TODO(skeleton): filled in by the timemap work.
