//! TODO(skeleton): filled in by the tweedie work.
