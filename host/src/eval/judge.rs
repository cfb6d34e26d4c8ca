//! The judge of `host evaluate fid`: the digit classifier's weights and the reference
//! statistics of the MNIST test and training sets in its feature space, in one safetensors file
//! (`models/mnist-classifier.safetensors`, compiled in: [`crate::bundled::JUDGE`]).
//!
//! Per reference split S (`test`, `train`), the file holds
//! - `reference.S.mean` (f64 [128]) and `reference.S.cov` (f64 [128, 128]) over the whole split;
//! - `reference.S.features` (f16 [m, 128]): the features of m images of the split in a seeded
//!   random order (what precision/recall needs: its first n rows are a random subset);
//! - `reference.S.label_counts` (f64 [10]): how many images of each digit the split has (the
//!   proportions of the class-balance χ²);
//!
//! and the classifier's tensors ([`tweedie_nn::model::classifier::TENSORS`], f32).

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use half::f16;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

use serde::Serialize;

use super::fid::{
    frechet_distance, inception_score, mean_pairwise_distance, precision_recall, FeatureStats,
    PrecisionRecall,
};
use super::stats::{chi_square, ChiSquare};
use tweedie_nn::data::order::epoch_permutation;
use tweedie_nn::model::classifier::{Classifier, CLASSES, FEATURES, PIXELS};
use tweedie_nn::tensors::SafetensorsFile;

/// Which MNIST split a reference describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// The 10,000 test images (held out from the classifier's training).
    Test,
    /// The 60,000 training images.
    Train,
}

impl Split {
    /// The name in tensor names and reports.
    pub fn name(self) -> &'static str {
        match self {
            Split::Test => "test",
            Split::Train => "train",
        }
    }
}

/// The reference statistics of one split.
#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    /// Mean and covariance of the whole split's features.
    pub stats: FeatureStats,
    /// Features (`m × FEATURES`, widened from f16) of m images in a seeded random order.
    pub features: Vec<f32>,
    /// Images per digit in the split.
    pub label_counts: Vec<f64>,
}

impl Reference {
    /// The reference of a split from its images' features (`n × FEATURES`) and labels: the
    /// statistics of all, and the features of the first `keep` images of the seeded
    /// permutation `epoch_permutation(n, seed, 0)`, rounded to f16.
    pub fn build(features: &[f32], labels: &[u8], keep: usize, seed: u64) -> Result<Reference> {
        let stats = FeatureStats::of(features, FEATURES)?;
        if labels.len() != stats.n || labels.iter().any(|&l| usize::from(l) >= CLASSES) {
            bail!("reference: {} labels for {} images", labels.len(), stats.n);
        }
        let mut label_counts = vec![0.0f64; CLASSES];
        for &l in labels {
            label_counts[usize::from(l)] += 1.0;
        }
        let order = epoch_permutation(stats.n, seed, 0)?;
        let kept = order
            .iter()
            .take(keep)
            .flat_map(|&i| &features[i * FEATURES..(i + 1) * FEATURES])
            .map(|&v| f16::from_f32(v).to_f32())
            .collect();
        Ok(Reference {
            stats,
            features: kept,
            label_counts,
        })
    }

    /// Number of stored feature vectors.
    pub fn kept(&self) -> usize {
        self.features.len() / FEATURES
    }
}

/// The classifier and both references.
#[derive(Debug, Clone, PartialEq)]
pub struct Judge {
    /// The feature extractor.
    pub classifier: Classifier,
    /// MNIST test set reference.
    pub test: Reference,
    /// MNIST training set reference.
    pub train: Reference,
    /// The file's metadata (training record, accuracy).
    pub metadata: HashMap<String, String>,
}

/// Raw little-endian tensor bytes of a given dtype.
fn tensor_bytes(
    file: &SafetensorsFile,
    name: &str,
    dtype: Dtype,
    shape: &[usize],
) -> Result<Vec<u8>> {
    let st = file.view()?;
    let t = st
        .tensor(name)
        .map_err(|_| anyhow::anyhow!("{}: no tensor `{name}`", file.label()))?;
    if t.dtype() != dtype || (!shape.is_empty() && t.shape() != shape) {
        bail!(
            "{}: `{name}` is {:?} {:?}, expected {dtype:?} {shape:?}",
            file.label(),
            t.dtype(),
            t.shape()
        );
    }
    Ok(t.data().to_vec())
}

fn f64s(bytes: &[u8]) -> Vec<f64> {
    bytes
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
        .collect()
}

fn read_reference(file: &SafetensorsFile, split: Split) -> Result<Reference> {
    let name = |t: &str| format!("reference.{}.{t}", split.name());
    let mean = f64s(&tensor_bytes(file, &name("mean"), Dtype::F64, &[FEATURES])?);
    let cov = f64s(&tensor_bytes(
        file,
        &name("cov"),
        Dtype::F64,
        &[FEATURES, FEATURES],
    )?);
    let label_counts = f64s(&tensor_bytes(
        file,
        &name("label_counts"),
        Dtype::F64,
        &[CLASSES],
    )?);
    let raw = tensor_bytes(file, &name("features"), Dtype::F16, &[])?;
    let features: Vec<f32> = raw
        .chunks_exact(2)
        .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect();
    let n: usize = file
        .metadata()?
        .get(&format!("tweedie.reference.{}.n", split.name()))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("{}: no tweedie.reference.{}.n", file.label(), split.name()))?;
    if features.is_empty() || !features.len().is_multiple_of(FEATURES) {
        bail!(
            "{}: `{}` is not [m, {FEATURES}]",
            file.label(),
            name("features")
        );
    }
    if mean
        .iter()
        .chain(&cov)
        .chain(&label_counts)
        .any(|v| !v.is_finite())
        || features.iter().any(|v| !v.is_finite())
    {
        bail!("{}: non-finite reference values", file.label());
    }
    Ok(Reference {
        stats: FeatureStats {
            n,
            dim: FEATURES,
            mean,
            cov,
        },
        features,
        label_counts,
    })
}

impl Judge {
    /// The judge compiled into the binary.
    pub fn bundled() -> Result<Judge> {
        let file = SafetensorsFile::from_bytes(
            crate::bundled::JUDGE.to_vec(),
            "bundled mnist-classifier".into(),
        )?;
        Judge::from_file(&file)
    }

    /// Reads a judge file.
    pub fn from_file(file: &SafetensorsFile) -> Result<Judge> {
        Ok(Judge {
            classifier: Classifier::from_file(file)?,
            test: read_reference(file, Split::Test)?,
            train: read_reference(file, Split::Train)?,
            metadata: file.metadata()?,
        })
    }

    /// The reference of `split`.
    pub fn reference(&self, split: Split) -> &Reference {
        match split {
            Split::Test => &self.test,
            Split::Train => &self.train,
        }
    }

    /// The safetensors bytes, with `metadata` plus each reference's image count.
    pub fn to_bytes(&self, mut metadata: HashMap<String, String>) -> Result<Vec<u8>> {
        let le64 = |v: &[f64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = self
            .classifier
            .tensors()
            .into_iter()
            .map(|(name, shape, v)| {
                let b = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                (name.to_string(), Dtype::F32, shape, b)
            })
            .collect();
        for split in [Split::Test, Split::Train] {
            let r = self.reference(split);
            let name = |t: &str| format!("reference.{}.{t}", split.name());
            let f16s: Vec<u8> = r
                .features
                .iter()
                .flat_map(|&v| f16::from_f32(v).to_le_bytes())
                .collect();
            tensors.push((
                name("mean"),
                Dtype::F64,
                vec![FEATURES],
                le64(&r.stats.mean),
            ));
            tensors.push((
                name("cov"),
                Dtype::F64,
                vec![FEATURES, FEATURES],
                le64(&r.stats.cov),
            ));
            tensors.push((name("features"), Dtype::F16, vec![r.kept(), FEATURES], f16s));
            tensors.push((
                name("label_counts"),
                Dtype::F64,
                vec![CLASSES],
                le64(&r.label_counts),
            ));
            metadata.insert(
                format!("tweedie.reference.{}.n", split.name()),
                r.stats.n.to_string(),
            );
        }
        let views = tensors
            .iter()
            .map(|(name, dtype, shape, bytes)| {
                Ok((name.clone(), TensorView::new(*dtype, shape.clone(), bytes)?))
            })
            .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
        Ok(safetensors::serialize(views, Some(metadata))?)
    }
}

/// Precision/recall's k (Kynkäänniemi et al. 2019).
pub const K: usize = 3;

/// Everything `host evaluate fid` reports about a set of digits.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scores {
    /// Number of digits.
    pub n: usize,
    /// The reference split.
    pub reference: &'static str,
    /// Fréchet distance of the features to the reference's.
    pub fid: f64,
    /// The Inception-score analogue (1 … 10).
    pub inception_score: f64,
    /// Digits per predicted class 0 … 9.
    pub class_counts: Vec<usize>,
    /// χ² of those counts against the training set's label proportions.
    pub class_balance: Option<ChiSquare>,
    /// Precision and recall (k = [`K`]) against the first min(n, stored) reference vectors.
    pub precision_recall: PrecisionRecall,
    /// Mean pairwise feature distance of the samples, and of the same reference vectors.
    pub diversity: Diversity,
}

/// Diversity: the mean Euclidean distance between two feature vectors of a set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Diversity {
    /// Of the samples.
    pub samples: f64,
    /// Of the first min(n, stored) reference vectors (real digits).
    pub real: f64,
}

impl Judge {
    /// Scores `images` (`n × PIXELS` bytes, n ≥ 10) against the reference `split`.
    pub fn score(&self, images: &[u8], split: Split, threads: usize) -> Result<Scores> {
        let n = images.len() / PIXELS;
        if n < 10 || images.len() != n * PIXELS {
            bail!("need at least 10 digits to score ({n} given)");
        }
        let out = self.classifier.infer(images, threads)?;
        let r = self.reference(split);
        let stats = FeatureStats::of(&out.features, FEATURES)?;
        let fid = frechet_distance(&stats, &r.stats)?;
        let mut class_counts = vec![0usize; CLASSES];
        for c in out.classes() {
            class_counts[c] += 1;
        }
        let real = &r.features[..n.min(r.kept()) * FEATURES];
        Ok(Scores {
            n,
            reference: split.name(),
            fid,
            inception_score: inception_score(&out.logits, CLASSES)?,
            class_balance: chi_square(&class_counts, &self.train.label_counts),
            class_counts,
            precision_recall: precision_recall(real, &out.features, FEATURES, K, threads)?,
            diversity: Diversity {
                samples: mean_pairwise_distance(&out.features, FEATURES, threads)?,
                real: mean_pairwise_distance(real, FEATURES, threads)?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_judge_round_trips_through_its_file() {
        let n = 40;
        let features: Vec<f32> = (0..n * FEATURES)
            .map(|i| ((i * 13 % 97) as f32) * 0.125)
            .collect();
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        let test = Reference::build(&features, &labels, 25, 1).unwrap();
        assert_eq!(test.kept(), 25);
        assert_eq!(test.label_counts, vec![4.0; 10]);
        let train = Reference::build(&features[..30 * FEATURES], &labels[..30], 30, 2).unwrap();
        let judge = Judge {
            classifier: Classifier::init(0),
            test,
            train,
            metadata: HashMap::from([("tweedie.kind".into(), "x".into())]),
        };
        let bytes = judge.to_bytes(judge.metadata.clone()).unwrap();
        let file = SafetensorsFile::from_bytes(bytes, "judge".into()).unwrap();
        let back = Judge::from_file(&file).unwrap();
        assert_eq!(back.classifier, judge.classifier);
        assert_eq!(back.test, judge.test);
        assert_eq!(back.train, judge.train);
        assert_eq!(back.reference(Split::Train).stats.n, 30);
        assert_eq!(back.metadata["tweedie.kind"], "x");
    }

    #[test]
    fn a_set_scored_against_its_own_reference() {
        let n = 30;
        let images: Vec<u8> = (0..n * PIXELS)
            .map(|i| (tweedie_core::noise::bits(2, 0, 0, i as u64) >> 60) as u8 * 17)
            .collect();
        let classifier = Classifier::init(4);
        let out = classifier.infer(&images, 2).unwrap();
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        let reference = Reference::build(&out.features, &labels, n, 0).unwrap();
        let judge = Judge {
            classifier,
            test: reference.clone(),
            train: reference,
            metadata: HashMap::new(),
        };
        let s = judge.score(&images, Split::Test, 3).unwrap();
        assert_eq!(s.n, n);
        assert!(s.fid.abs() < 1e-6, "{}", s.fid);
        assert_eq!(s.class_counts.iter().sum::<usize>(), n);
        let pr = s.precision_recall;
        assert_eq!(
            (pr.precision, pr.recall, pr.real, pr.samples),
            (1.0, 1.0, n, n)
        );
        assert!(s.inception_score >= 1.0 && s.inception_score <= 10.0);
        // The samples are the reference (stored rounded): the same diversity.
        let d = s.diversity;
        assert!((d.samples - d.real).abs() < 1e-4 * d.real, "{d:?}");
        assert!(s.diversity.samples > 0.0);
        assert!(judge.score(&images[..9 * PIXELS], Split::Test, 1).is_err());
    }
}
