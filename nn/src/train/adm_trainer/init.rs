//! guided-diffusion's parameter initialisation.

use crate::train::params::ParamLayout;
use crate::weights::spec::ParamKind;

/// guided-diffusion's initialisation (PyTorch defaults): conv/linear weights and biases
/// U(−1/√fan_in, 1/√fan_in) (`kaiming_uniform_(a=√5)` and the bias rule), GroupNorm γ = 1,
/// β = 0, and `zero_module` on every ResBlock's `out_layers.3`, every attention `proj_out` and
/// the output conv `out.2`. Tensor i, element e draws `noise::uniform(seed, i, COUNTER_INIT, e)`.
pub fn init_params(layout: &ParamLayout, kinds: &[ParamKind], seed: u64) -> Vec<f32> {
    let mut p = layout.zeros();
    let mut fan_in = 1usize;
    for (i, (v, kind)) in layout.views().iter().zip(kinds).enumerate() {
        let zero = v.name.contains(".out_layers.3.")
            || v.name.contains(".proj_out.")
            || v.name.starts_with("out.2.");
        let bound = match *kind {
            ParamKind::Weight { fan_in: f } => {
                fan_in = f.max(1);
                Some(1.0 / (fan_in as f64).sqrt())
            }
            // A bias follows its weight in state_dict order.
            ParamKind::Bias => Some(1.0 / (fan_in as f64).sqrt()),
            ParamKind::NormWeight => {
                p[v.range()].fill(1.0);
                None
            }
            ParamKind::NormBias => None,
        };
        if let (Some(b), false) = (bound, zero) {
            for (e, x) in p[v.range()].iter_mut().enumerate() {
                let u = tweedie_core::noise::uniform(
                    seed,
                    i as u64,
                    tweedie_core::noise::COUNTER_INIT,
                    e as u64,
                );
                *x = ((2.0 * u - 1.0) * b) as f32;
            }
        }
    }
    p
}
