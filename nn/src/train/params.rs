//! A flat f32 parameter buffer with named per-tensor views (llm.c style).
//!
//! Weights, gradients, EMA weights and both AdamW moments share one [`ParamLayout`]: tensor i
//! occupies `offset..offset + numel` of every buffer, in state_dict order. Element-wise
//! updates (AdamW, EMA, clipping) then run over whole buffers, and checkpoints name each
//! slice by its PyTorch name.

use std::collections::HashMap;

use anyhow::{bail, Result};

use crate::weights::spec::TensorSpec;

/// One tensor's place in the flat buffers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamView {
    /// PyTorch state_dict name.
    pub name: String,
    /// PyTorch shape.
    pub shape: Vec<usize>,
    /// First element in the flat buffers.
    pub offset: usize,
    /// Number of elements (product of `shape`).
    pub len: usize,
}

impl ParamView {
    /// The element range of this tensor in a flat buffer.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len
    }
}

/// The layout shared by all flat buffers of a model.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParamLayout {
    views: Vec<ParamView>,
    index: HashMap<String, usize>,
    total: usize,
}

impl ParamLayout {
    /// Lays tensors out back to back in the given order. Duplicate names, empty names and
    /// element counts that overflow are errors.
    pub fn new<I, S>(tensors: I) -> Result<ParamLayout>
    where
        I: IntoIterator<Item = (S, Vec<usize>)>,
        S: Into<String>,
    {
        let mut layout = ParamLayout::default();
        for (name, shape) in tensors {
            let name = name.into();
            if name.is_empty() {
                bail!("parameter layout: empty tensor name");
            }
            let Some(len) = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) else {
                bail!("parameter layout: `{name}` has too many elements ({shape:?})");
            };
            let Some(end) = layout.total.checked_add(len) else {
                bail!("parameter layout: total element count overflows at `{name}`");
            };
            if layout
                .index
                .insert(name.clone(), layout.views.len())
                .is_some()
            {
                bail!("parameter layout: duplicate tensor `{name}`");
            }
            layout.views.push(ParamView {
                name,
                shape,
                offset: layout.total,
                len,
            });
            layout.total = end;
        }
        Ok(layout)
    }

    /// The layout of an architecture's expected state_dict.
    pub fn from_specs(specs: &[TensorSpec]) -> Result<ParamLayout> {
        ParamLayout::new(specs.iter().map(|s| (s.name.clone(), s.shape.clone())))
    }

    /// Total number of elements of every flat buffer.
    pub fn total(&self) -> usize {
        self.total
    }

    /// All tensors, in buffer order.
    pub fn views(&self) -> &[ParamView] {
        &self.views
    }

    /// The view of one tensor by name.
    pub fn get(&self, name: &str) -> Result<&ParamView> {
        match self.index.get(name) {
            Some(&i) => Ok(&self.views[i]),
            None => bail!("parameter layout has no tensor `{name}`"),
        }
    }

    /// A zero-filled buffer of [`total`](Self::total) elements.
    pub fn zeros(&self) -> Vec<f32> {
        vec![0.0; self.total]
    }

    /// One tensor's slice of a flat buffer.
    pub fn slice<'a>(&self, buf: &'a [f32], name: &str) -> Result<&'a [f32]> {
        self.check_buffer(buf.len())?;
        Ok(&buf[self.get(name)?.range()])
    }

    /// One tensor's mutable slice of a flat buffer.
    pub fn slice_mut<'a>(&self, buf: &'a mut [f32], name: &str) -> Result<&'a mut [f32]> {
        self.check_buffer(buf.len())?;
        let range = self.get(name)?.range();
        Ok(&mut buf[range])
    }

    /// Errors unless a buffer has exactly [`total`](Self::total) elements.
    pub fn check_buffer(&self, len: usize) -> Result<()> {
        if len != self.total {
            bail!(
                "flat parameter buffer has {len} elements, the layout needs {}",
                self.total
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_are_back_to_back() {
        let layout = ParamLayout::new([("a", vec![2, 3]), ("b", vec![4]), ("c", vec![])]).unwrap();
        assert_eq!(layout.total(), 11);
        assert_eq!(layout.get("b").unwrap().range(), 6..10);
        // A 0-d tensor (shape []) has one element.
        assert_eq!(layout.get("c").unwrap().range(), 10..11);
        let mut buf: Vec<f32> = (0..11).map(|i| i as f32).collect();
        assert_eq!(layout.slice(&buf, "b").unwrap(), &[6.0, 7.0, 8.0, 9.0]);
        layout.slice_mut(&mut buf, "c").unwrap()[0] = -1.0;
        assert_eq!(buf[10], -1.0);
        assert!(layout.slice(&buf[..10], "a").is_err());
        assert!(layout.get("d").is_err());
    }

    #[test]
    fn bad_layouts_are_refused() {
        assert!(ParamLayout::new([("a", vec![1]), ("a", vec![2])]).is_err());
        assert!(ParamLayout::new([("", vec![1])]).is_err());
        assert!(ParamLayout::new([("a", vec![usize::MAX, 2])]).is_err());
        assert!(ParamLayout::new([("a", vec![usize::MAX]), ("b", vec![1])]).is_err());
    }
}
