//! One AdamW step against PyTorch (../golden/adm_train): `torch.optim.AdamW` with lr 1e-3,
//! betas (0.9, 0.999), eps 1e-8, weight decay 0 applied to adm_small's weights with the
//! stored float32 gradients; the five stored `adamw1.<name>` tensors must agree to 1e-6
//! (the README's tolerance for a step computed from the stored gradients).

use std::path::PathBuf;

use tweedie_nn::tensors::SafetensorsFile;
use tweedie_nn::train::optim::{AdamW, AdamWConfig};
use tweedie_nn::train::params::ParamLayout;

/// The repository root, which holds `golden/` (a byte-identical copy of the reference data).
fn shared() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

const CHECKED: [&str; 5] = [
    "input_blocks.0.0.weight",
    "input_blocks.1.0.in_layers.0.weight",
    "input_blocks.3.1.qkv.weight",
    "out.2.weight",
    "out.2.bias",
];

#[test]
fn one_adamw_step_matches_pytorch() {
    let weights_path = shared().join("golden/adm_small/weights.safetensors");
    let io_path = shared().join("golden/adm_train/io.safetensors");
    let weights = SafetensorsFile::open(&weights_path).unwrap();
    let io = SafetensorsFile::open(&io_path).unwrap();
    let view = weights.view().unwrap();
    let mut names: Vec<(String, Vec<usize>)> = view
        .iter()
        .map(|(n, t)| (n.to_string(), t.shape().to_vec()))
        .collect();
    names.sort();
    assert_eq!(names.len(), 198);
    let layout = ParamLayout::new(names).unwrap();
    assert_eq!(layout.total(), 1_371_974);

    let (mut params, mut grads) = (layout.zeros(), layout.zeros());
    for v in layout.views() {
        let w = weights.tensor_f32(&v.name).unwrap();
        let g = io.tensor_f32(&format!("grad.{}", v.name)).unwrap();
        assert_eq!((&w.shape, &g.shape), (&v.shape, &v.shape), "{}", v.name);
        params[v.range()].copy_from_slice(&w.data);
        grads[v.range()].copy_from_slice(&g.data);
    }
    let before = params.clone();
    let config = AdamWConfig {
        betas: (0.9, 0.999),
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let mut opt = AdamW::new(config, layout.total()).unwrap();
    opt.step(&mut params, &grads, 1e-3).unwrap();

    for name in CHECKED {
        let want = io.tensor_f32(&format!("adamw1.{name}")).unwrap();
        let ours = layout.slice(&params, name).unwrap();
        let err = ours
            .iter()
            .zip(&want.data)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        eprintln!("{name}: max abs diff {err:e}");
        assert!(err <= 1e-6, "{name}: max abs diff {err}");
        // The step really moved the tensor (by ~lr) where the gradient is non-zero.
        let moved = layout
            .slice(&before, name)
            .unwrap()
            .iter()
            .zip(ours)
            .filter(|(a, b)| a != b)
            .count();
        assert!(moved > 0, "{name} did not move");
    }
    // Rows 3..5 of out.2 have an exactly zero gradient: unchanged, bit for bit.
    let bias = layout.slice(&params, "out.2.bias").unwrap();
    let bias0 = layout.slice(&before, "out.2.bias").unwrap();
    assert_eq!(&bias[3..6], &bias0[3..6]);
}
