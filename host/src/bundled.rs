//! The models shipped inside the `host` binary, so the README's main command needs no
//! download: `host sample`, `host restore` and `host denoise` use the MNIST VP model when no
//! `--weights` is given, and `--weights bundled:NAME` names one explicitly.
//!
//! The files are the EMA weights written by `host train` (f16, `tweedie.*` metadata); how
//! they were trained is in models/README.md and in their `tweedie.train` metadata.

/// A model compiled into the binary.
pub struct BundledModel {
    /// The name after `bundled:`.
    pub name: &'static str,
    /// One line for help texts.
    pub about: &'static str,
    /// The safetensors file.
    pub bytes: &'static [u8],
}

/// The `--weights` prefix that names a bundled model.
pub const PREFIX: &str = "bundled:";

/// The model used when `--weights` is absent.
pub const DEFAULT: &str = "mnist-vp";

/// Every bundled model.
pub const MODELS: &[BundledModel] = &[
    BundledModel {
        name: "mnist-vp",
        about: "MNIST digits, 1×32×32, VP (DDPM ε-prediction, t input), ADM 1.19 M parameters",
        bytes: include_bytes!("../../models/mnist-vp.safetensors"),
    },
    BundledModel {
        name: "mnist-ve",
        about: "MNIST digits, 1×32×32, VE (ε-prediction at 1/√(1+σ²)·x, 250·ln σ input), ADM 1.19 M parameters",
        bytes: include_bytes!("../../models/mnist-ve.safetensors"),
    },
];

/// The judge of `host evaluate fid`: the MNIST digit classifier and its reference statistics
/// (`models/mnist-classifier.safetensors`, read by [`crate::eval::judge::Judge::bundled`]).
pub const JUDGE: &[u8] = include_bytes!("../../models/mnist-classifier.safetensors");

/// The bundled model called `name`.
pub fn find(name: &str) -> Option<&'static BundledModel> {
    MODELS.iter().find(|m| m.name == name)
}

/// The names, comma-separated (for error messages).
pub fn names() -> String {
    MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tweedie_nn::tensors::SafetensorsFile;
    use tweedie_nn::weights::WeightsMeta;

    /// Every bundled file is valid safetensors with the metadata a sampler needs.
    #[test]
    fn bundled_files_carry_their_metadata() {
        for m in MODELS {
            let file = SafetensorsFile::from_bytes(m.bytes.to_vec(), m.name.into()).unwrap();
            let meta = WeightsMeta::parse(&file.metadata().unwrap()).unwrap();
            assert!(meta.kind.is_some(), "{}", m.name);
            assert!(meta.output.is_some(), "{}", m.name);
            assert!(meta.noise_input.is_some(), "{}", m.name);
        }
        assert!(find(DEFAULT).is_some());
        assert!(find("mnist-ve").is_some());
        assert!(find("nope").is_none());
    }

    /// The judge is frozen (models/README.md): a changed file must change this pin, in a
    /// commit that says why.
    #[test]
    fn bundled_judge_is_the_frozen_one() {
        assert_eq!(
            tweedie_nn::sha256::of_bytes(JUDGE),
            "2eacd9d90b8fc610a92642142e0060b5ab60204373340b4b4220c86bfae7957a"
        );
        let judge = crate::eval::judge::Judge::bundled().unwrap();
        assert_eq!(judge.metadata["tweedie.kind"], "mnist-classifier");
        let accuracy: f64 = judge.metadata["tweedie.test_accuracy"].parse().unwrap();
        assert!(accuracy >= 0.99, "{accuracy}");
        assert_eq!(judge.test.stats.n, 10_000);
        assert_eq!(judge.train.stats.n, 60_000);
        assert_eq!(judge.train.label_counts.iter().sum::<f64>(), 60_000.0);
    }
}
