//! `TensorSpec`: one expected state_dict entry (PyTorch name, shape, role), the contract
//! between an architecture description and the weights loader.

/// What a parameter is for; used for random initialisation and for the f16 storage policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// A conv or linear weight with `fan_in` inputs per output.
    Weight {
        /// Inputs per output (in_channels · kernel area).
        fan_in: usize,
    },
    /// A conv or linear bias.
    Bias,
    /// A GroupNorm scale γ.
    NormWeight,
    /// A GroupNorm shift β.
    NormBias,
}

/// One state_dict tensor: its PyTorch name, shape and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// PyTorch state_dict name, e.g. `input_blocks.3.1.qkv.weight`.
    pub name: String,
    /// PyTorch shape, e.g. `[192, 64, 1]`.
    pub shape: Vec<usize>,
    /// The parameter's role.
    pub kind: ParamKind,
}

impl TensorSpec {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Total number of parameters of a state_dict.
pub fn parameter_count(specs: &[TensorSpec]) -> usize {
    specs.iter().map(TensorSpec::numel).sum()
}
