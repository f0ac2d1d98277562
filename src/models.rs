//! Shipped model bundles: `models/<family>/` holds the family's experts as ONNX files and a
//! manifest that ties them together.
//!
//! ```text
//! models/dam_break/
//!   manifest.json   family, parameter range and bands, architecture, normalisation,
//!                   sha256 + training record of each expert, the calibrated map once fitted
//!   anchor.onnx  low.onnx  high.onnx
//! ```
//!
//! [`FamilyModels::load`] refuses a bundle whose files are missing, corrupt, do not match the
//! manifest's sha256, or do not share one graph, naming the file and the mismatch.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ccm::{CalibratedMap, Experts, Interval, Scale};
use crate::config::{Family, ParameterConfig};
use crate::fno::expert::{Expert, ExpertError, sha256_hex};
use crate::fno::{FnoConfig, Normalization, onnx};
use crate::infer::{OnnxError, OnnxExpert};

/// Version of the manifest layout.
pub const MANIFEST_VERSION: u32 = 1;

/// One expert file of a bundle.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExpertEntry {
    /// File name inside the bundle.
    pub file: String,
    /// sha256 of the file.
    pub sha256: String,
    /// Parameter range of its training data.
    pub p_range: [f64; 2],
    /// Training record (epochs, losses, data seeds), as the trainer wrote it.
    pub training: serde_json::Value,
}

/// The calibration of the readouts, fitted by `ccm-twin calibrate`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Calibration {
    /// The monotone map `s(p) → α` (CCM-calibrated).
    pub map: CalibratedMap,
    /// CCM-Scale's γ, fitted on the `val` split.
    pub scale: Option<Scale>,
    /// Per calibration regime: `(p, s(p), best α, its rollout error)`.
    pub points: Vec<[f64; 4]>,
    /// Interval the best α were searched in.
    pub interval: Interval,
    /// Rollout horizon the errors were measured over.
    pub horizon: usize,
    /// CCM-Prefix's debiasing gain, fitted on the same split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<PrefixCalibration>,
}

/// CCM-Prefix's debiasing gain: per calibration regime, the mean `α` read out of the prefixes
/// against the best `α` (least squares through the origin: `best ≈ gain · read`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PrefixCalibration {
    /// The gain.
    pub gain: f64,
    /// Per calibration regime: `(p, mean α read out of the prefixes, best α)`.
    pub points: Vec<[f64; 3]>,
}

impl PrefixCalibration {
    /// Fits the gain to `(p, read α, best α)` points; `None` when the read α's hold too little
    /// signal (`Σ read² < 0.05`) for a slope.
    pub fn fit(points: Vec<[f64; 3]>) -> Option<Self> {
        let sxx: f64 = points.iter().map(|r| r[1] * r[1]).sum();
        let sxy: f64 = points.iter().map(|r| r[1] * r[2]).sum();
        (sxx >= 0.05 && sxy > 0.0).then(|| PrefixCalibration {
            gain: sxy / sxx,
            points,
        })
    }
}

/// The bundle manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Layout version.
    pub format_version: u32,
    /// Tool that wrote it.
    pub generator: String,
    /// Family.
    pub family: Family,
    /// The regime parameter, its range, bands and test values.
    pub parameter: ParameterConfig,
    /// Architecture shared by all experts.
    pub model: FnoConfig,
    /// Normalisation shared by all experts.
    pub normalization: Normalization,
    /// `anchor`, `low`, `high` (and any others).
    pub experts: BTreeMap<String, ExpertEntry>,
    /// The readouts' calibration, once fitted.
    pub calibration: Option<Calibration>,
}

/// Why a bundle could not be written or used.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// An expert directory could not be read.
    #[error(transparent)]
    Expert(#[from] ExpertError),
    /// An ONNX file could not be used.
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    /// The export failed.
    #[error(transparent)]
    Export(#[from] onnx::ExportError),
    /// File system trouble.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The manifest is unreadable.
    #[error("{path}: not a model manifest: {reason}")]
    Manifest {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file does not match its manifest entry.
    #[error(
        "{path}: sha256 {found} does not match the manifest ({expected}); the file was changed or corrupted"
    )]
    Checksum {
        /// The file.
        path: PathBuf,
        /// From the manifest.
        expected: String,
        /// Computed.
        found: String,
    },
    /// The experts do not belong together.
    #[error("experts do not belong to one family bundle: {0}")]
    Inconsistent(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError {
    let path = path.to_path_buf();
    move |source| BundleError::Io { path, source }
}

/// Writes a bundle from trained expert directories (anchor, low, high). The parameter
/// description comes from the family config the experts were trained for.
pub fn export_bundle(
    parameter: &ParameterConfig,
    experts: [(&str, &Path); 3],
    out: &Path,
) -> Result<Manifest, BundleError> {
    let loaded: Vec<(&str, Expert)> = experts
        .iter()
        .map(|(role, dir)| Ok((*role, Expert::load(dir)?)))
        .collect::<Result<_, BundleError>>()?;
    let first = &loaded[0].1.meta;
    for (role, e) in &loaded[1..] {
        if e.meta.config != first.config
            || e.meta.normalization != first.normalization
            || e.meta.family != first.family
        {
            return Err(BundleError::Inconsistent(format!(
                "the {role} expert's family, architecture or normalisation differs from the anchor's"
            )));
        }
    }
    std::fs::create_dir_all(out).map_err(io(out))?;
    let mut entries = BTreeMap::new();
    for (role, e) in &loaded {
        let bytes = onnx::export_bytes(&e.meta.config, &e.meta.normalization, &e.weights)?;
        let file = format!("{role}.onnx");
        let path = out.join(&file);
        crate::fno::expert::write_atomic(&path, &bytes)?;
        entries.insert(
            role.to_string(),
            ExpertEntry {
                file,
                sha256: sha256_hex(&bytes),
                p_range: e.meta.p_range,
                training: serde_json::to_value(&e.meta.training).expect("serialisable"),
            },
        );
    }
    let manifest = Manifest {
        format_version: MANIFEST_VERSION,
        generator: format!("ccm-twin {}", env!("CARGO_PKG_VERSION")),
        family: first.family,
        parameter: parameter.clone(),
        model: first.config,
        normalization: first.normalization.clone(),
        experts: entries,
        calibration: None,
    };
    write_manifest(&manifest, out)?;
    Ok(manifest)
}

/// Writes `manifest.json` into a bundle directory (atomically).
pub fn write_manifest(manifest: &Manifest, dir: &Path) -> Result<(), BundleError> {
    let text = serde_json::to_string_pretty(manifest).expect("serialisable") + "\n";
    crate::fno::expert::write_atomic(&dir.join("manifest.json"), text.as_bytes())?;
    Ok(())
}

/// A loaded, verified bundle.
#[derive(Debug, Clone)]
pub struct FamilyModels {
    /// Directory it came from.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// The anchor.
    pub anchor: OnnxExpert,
    /// The low endpoint.
    pub low: OnnxExpert,
    /// The high endpoint.
    pub high: OnnxExpert,
}

impl FamilyModels {
    /// The prefix readout's settings for this family: the interval from the family's service
    /// range, the gain from the calibration (1 when there is none).
    pub fn prefix_config(&self) -> crate::ccm::prefix::PrefixConfig {
        let family = crate::config::FamilyConfig::builtin(self.manifest.family);
        crate::ccm::prefix::PrefixConfig {
            gain: self
                .manifest
                .calibration
                .as_ref()
                .and_then(|c| c.prefix.as_ref())
                .map_or(1.0, |p| p.gain),
            ..crate::ccm::prefix::PrefixConfig::over(family.parameter.readout_interval())
        }
    }

    /// Reads and verifies a bundle.
    pub fn load(dir: &Path) -> Result<Self, BundleError> {
        let path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let manifest: Manifest =
            serde_json::from_str(&text).map_err(|e| BundleError::Manifest {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let load = |role: &str| -> Result<OnnxExpert, BundleError> {
            let entry = manifest
                .experts
                .get(role)
                .ok_or_else(|| BundleError::Manifest {
                    path: path.clone(),
                    reason: format!("no '{role}' expert listed"),
                })?;
            let file = dir.join(&entry.file);
            let bytes = std::fs::read(&file).map_err(io(&file))?;
            let found = sha256_hex(&bytes);
            if found != entry.sha256 {
                return Err(BundleError::Checksum {
                    path: file,
                    expected: entry.sha256.clone(),
                    found,
                });
            }
            Ok(OnnxExpert::from_bytes(&bytes, &file)?)
        };
        let (anchor, low, high) = (load("anchor")?, load("low")?, load("high")?);
        anchor.same_graph(&low)?;
        anchor.same_graph(&high)?;
        Ok(FamilyModels {
            dir: dir.to_path_buf(),
            manifest,
            anchor,
            low,
            high,
        })
    }

    /// The three experts' weights, for decomposition and merging.
    pub fn experts(&self) -> Experts {
        Experts::new(
            self.anchor.weights.clone(),
            self.low.weights.clone(),
            self.high.weights.clone(),
        )
        .expect("same graph checked at load")
    }

    /// A tract backend for merges of these experts that swaps the varying tensors in place of
    /// re-optimising per deployment ([`crate::infer::TractBackend::swappable`]), with the anchor deployed.
    pub fn tract_backend(&self) -> Result<crate::infer::TractBackend, crate::infer::InferError> {
        use crate::infer::Backend as _;
        let mut b =
            crate::infer::TractBackend::swappable(self.anchor.clone(), &self.experts().varying())?;
        b.deploy(&self.anchor.weights)?;
        Ok(b)
    }

    /// A backend of the chosen runtime for merges of these experts, with the anchor deployed
    /// (`ort` reads its library from `ort`).
    pub fn backend(
        &self,
        runtime: crate::infer::Runtime,
        ort: &crate::infer::OrtOptions,
    ) -> Result<Box<dyn crate::infer::Backend + Send>, crate::infer::InferError> {
        use crate::infer::{Backend as _, NativeBackend, OrtBackend, Runtime};
        Ok(match runtime {
            Runtime::Native => {
                let mut b = NativeBackend::new(&self.anchor)?;
                b.deploy(&self.anchor.weights)?;
                Box::new(b)
            }
            Runtime::Tract => Box::new(self.tract_backend()?),
            Runtime::Ort => {
                let mut b = OrtBackend::new(self.anchor.clone(), ort)?;
                b.deploy(&self.anchor.weights)?;
                Box::new(b)
            }
        })
    }

    /// The metadata coordinate `s(p)` of this bundle's parameter.
    pub fn coordinate(&self, p: f64) -> f64 {
        self.manifest.parameter.coordinate(p)
    }
}
