//! TODO(skeleton): filled in by the sampler work.
