//! TODO(skeleton): filled in by the schedule work.
