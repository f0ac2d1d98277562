//! ONNX expert files: reading, checking that experts share one graph, and writing merged weights
//! back.
//!
//! Any producer's ONNX works (ours, or `torch.onnx.export`): every `float` initializer is a
//! weight, in file order; other initializers (shapes, indices) must be identical across experts.
//! A merged model is the first expert's protobuf with its float initializers replaced, so
//! everything else in the file (nodes, attributes, metadata) is preserved.

use std::path::{Path, PathBuf};

use prost::Message;
use tract_onnx::pb;
use tract_onnx::pb::tensor_proto::DataType;

use crate::ccm::{WeightError, WeightSet};
use crate::fno::onnx::{ExpertMeta, META_KEY, SpectralLayout, export, export_with};

/// Why an ONNX expert could not be used.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The bytes are not an ONNX model (corrupt or truncated file).
    #[error("{path}: not a readable ONNX model ({reason}); the file is corrupt or truncated")]
    Decode {
        /// The file.
        path: PathBuf,
        /// Decoder message.
        reason: String,
    },
    /// The model has no graph.
    #[error("{path}: the ONNX model has no graph")]
    NoGraph {
        /// The file.
        path: PathBuf,
    },
    /// An initializer could not be read as f32.
    #[error("{path}: initializer '{name}': {reason}")]
    Initializer {
        /// The file.
        path: PathBuf,
        /// Initializer name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// Two experts differ in structure.
    #[error("{left} and {right} do not share one graph: {difference}")]
    GraphMismatch {
        /// First file.
        left: PathBuf,
        /// Second file.
        right: PathBuf,
        /// The first difference found.
        difference: String,
    },
    /// Weights given for writing do not match the model.
    #[error(transparent)]
    Weights(#[from] WeightError),
    /// The stacked layout of the model could not be written.
    #[error("the stacked layout of the model: {0}")]
    Layout(String),
}

/// An ONNX expert: its protobuf and its float initializers as a [`WeightSet`].
#[derive(Debug, Clone)]
pub struct OnnxExpert {
    /// Where it came from (for messages).
    pub path: PathBuf,
    /// The model.
    pub proto: pb::ModelProto,
    /// Float initializers, in file order.
    pub weights: WeightSet,
}

fn f32_values(t: &pb::TensorProto) -> Result<Vec<f32>, String> {
    if t.data_location == Some(1) {
        return Err(
            "external data is not supported; save the model with its weights inside".into(),
        );
    }
    let len: usize = t.dims.iter().map(|&d| d.max(0) as usize).product();
    let values: Vec<f32> = if !t.raw_data.is_empty() {
        if t.raw_data.len() != 4 * len {
            return Err(format!(
                "raw data holds {} bytes, the shape needs {}",
                t.raw_data.len(),
                4 * len
            ));
        }
        t.raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    } else {
        t.float_data.clone()
    };
    if values.len() != len {
        return Err(format!("{} values for shape {:?}", values.len(), t.dims));
    }
    Ok(values)
}

impl OnnxExpert {
    /// Parses ONNX bytes; `path` names the source in messages.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, OnnxError> {
        let proto = pb::ModelProto::decode(bytes).map_err(|e| OnnxError::Decode {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let graph = proto.graph.as_ref().ok_or_else(|| OnnxError::NoGraph {
            path: path.to_path_buf(),
        })?;
        if graph.node.is_empty() {
            return Err(OnnxError::Decode {
                path: path.to_path_buf(),
                reason: "the graph has no nodes".into(),
            });
        }
        let mut weights = WeightSet::default();
        for t in &graph.initializer {
            if t.data_type != DataType::Float as i32 {
                continue;
            }
            let err = |reason: String| OnnxError::Initializer {
                path: path.to_path_buf(),
                name: t.name.clone(),
                reason,
            };
            let values = f32_values(t).map_err(err)?;
            let shape = t.dims.iter().map(|&d| d as usize).collect();
            weights
                .push(t.name.clone(), shape, &values)
                .map_err(|e| err(e.to_string()))?;
        }
        Ok(OnnxExpert {
            path: path.to_path_buf(),
            proto,
            weights,
        })
    }

    /// Reads an ONNX file.
    pub fn load(path: &Path) -> Result<Self, OnnxError> {
        let bytes = std::fs::read(path).map_err(|source| OnnxError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes, path)
    }

    /// The expert metadata our exporter writes, if present.
    pub fn meta(&self) -> Option<ExpertMeta> {
        self.proto
            .metadata_props
            .iter()
            .find(|p| p.key == META_KEY)
            .and_then(|p| serde_json::from_str(&p.value).ok())
    }

    /// Checks that `other` has the same graph: nodes, inputs, outputs, initializer names, shapes
    /// and types, and identical non-float initializers. Float initializer *values* may differ.
    pub fn same_graph(&self, other: &OnnxExpert) -> Result<(), OnnxError> {
        let fail = |difference: String| OnnxError::GraphMismatch {
            left: self.path.clone(),
            right: other.path.clone(),
            difference,
        };
        let (a, b) = (
            self.proto.graph.as_ref().expect("checked at load"),
            other.proto.graph.as_ref().expect("checked at load"),
        );
        if a.node.len() != b.node.len() {
            return Err(fail(format!("{} nodes vs {}", a.node.len(), b.node.len())));
        }
        for (i, (x, y)) in a.node.iter().zip(&b.node).enumerate() {
            if x.op_type != y.op_type || x.domain != y.domain {
                return Err(fail(format!(
                    "node {i} is {} in one and {} in the other",
                    x.op_type, y.op_type
                )));
            }
            if x.input != y.input || x.output != y.output {
                return Err(fail(format!(
                    "node {i} ({}) is wired differently: {:?} -> {:?} vs {:?} -> {:?}",
                    x.op_type, x.input, x.output, y.input, y.output
                )));
            }
            if x.attribute
                .iter()
                .map(|a| a.encode_to_vec())
                .ne(y.attribute.iter().map(|a| a.encode_to_vec()))
            {
                return Err(fail(format!(
                    "node {i} ({}) has different attributes",
                    x.op_type
                )));
            }
        }
        let io = |g: &pb::GraphProto| -> (Vec<String>, Vec<String>) {
            (
                g.input
                    .iter()
                    .map(|v| v.encode_to_vec())
                    .map(hex_digest)
                    .collect(),
                g.output
                    .iter()
                    .map(|v| v.encode_to_vec())
                    .map(hex_digest)
                    .collect(),
            )
        };
        if io(a) != io(b) {
            return Err(fail("graph inputs or outputs differ".into()));
        }
        if a.initializer.len() != b.initializer.len() {
            return Err(fail(format!(
                "{} initializers vs {}",
                a.initializer.len(),
                b.initializer.len()
            )));
        }
        for (x, y) in a.initializer.iter().zip(&b.initializer) {
            if x.name != y.name {
                return Err(fail(format!(
                    "initializer '{}' where the other has '{}'",
                    x.name, y.name
                )));
            }
            if x.dims != y.dims || x.data_type != y.data_type {
                return Err(fail(format!(
                    "initializer '{}' has shape {:?} (type {}) vs {:?} (type {})",
                    x.name, x.dims, x.data_type, y.dims, y.data_type
                )));
            }
            if x.data_type != DataType::Float as i32 && x.encode_to_vec() != y.encode_to_vec() {
                return Err(fail(format!(
                    "non-float initializer '{}' has different values",
                    x.name
                )));
            }
        }
        Ok(())
    }

    /// This model with its float initializers replaced by `weights` (same layout).
    pub fn with_weights(&self, weights: &WeightSet) -> Result<pb::ModelProto, OnnxError> {
        self.weights
            .same_layout(weights)
            .map_err(|m| OnnxError::Weights(WeightError::Unknown(m.to_string())))?;
        let mut proto = self.proto.clone();
        let graph = proto.graph.as_mut().expect("checked at load");
        for t in graph.initializer.iter_mut() {
            if t.data_type != DataType::Float as i32 {
                continue;
            }
            let values = weights.get(&t.name)?;
            t.float_data.clear();
            t.raw_data.clear();
            t.raw_data.reserve(values.len() * 4);
            for v in values {
                t.raw_data.extend_from_slice(&v.to_le_bytes());
            }
        }
        Ok(proto)
    }

    /// This model with the float initializers `names` turned into graph inputs (appended after
    /// the existing inputs, in the order given), so a runtime can optimise the graph once and be
    /// handed new values for them on every run. The other initializers stay constants.
    pub fn with_weights_as_inputs(&self, names: &[String]) -> Result<pb::ModelProto, OnnxError> {
        let mut proto = self.proto.clone();
        let graph = proto.graph.as_mut().expect("checked at load");
        for name in names {
            let info = self.weights.info(name)?;
            let at = graph
                .initializer
                .iter()
                .position(|t| &t.name == name)
                .expect("every float initializer is in the weight set");
            graph.initializer.remove(at);
            let dim = info
                .shape
                .iter()
                .map(|&d| pb::tensor_shape_proto::Dimension {
                    value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(d as i64)),
                    ..Default::default()
                })
                .collect();
            graph.input.push(pb::ValueInfoProto {
                name: name.clone(),
                r#type: Some(pb::TypeProto {
                    value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                        elem_type: DataType::Float as i32,
                        shape: Some(pb::TensorShapeProto { dim }),
                    })),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        Ok(proto)
    }

    /// Writes a model to a file (atomically: a temporary file renamed into place).
    pub fn save(proto: &pb::ModelProto, path: &Path) -> Result<(), OnnxError> {
        let tmp = path.with_extension("onnx.tmp");
        let io = |source| OnnxError::Io {
            path: path.to_path_buf(),
            source,
        };
        std::fs::write(&tmp, proto.encode_to_vec()).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

fn hex_digest(bytes: Vec<u8>) -> String {
    use sha2::{Digest, Sha256};
    format!("{:x}", Sha256::digest(&bytes))
}

/// The graph a runtime builds for an expert's weights.
///
/// An expert written by our exporter (its graph, inputs, outputs and constants exactly what
/// [`crate::fno::onnx::export`] writes for its metadata and weights) runs in the stacked layout
/// ([`SpectralLayout::Stacked`]): the same model in 4 matrix products and 1 mixing einsum per
/// Fourier layer instead of 12 and 4, which both tract and ONNX Runtime run faster
/// (`docs/PERFORMANCE.md`). A graph from any other producer runs as it is.
#[derive(Debug, Clone)]
pub enum RunGraph {
    /// The file's graph, with the weights written in.
    File,
    /// Our exporter's stacked layout of the same model.
    Stacked(ExpertMeta),
}

impl RunGraph {
    /// [`RunGraph::Stacked`] when `expert`'s graph is exactly our exporter's, else
    /// [`RunGraph::File`].
    pub fn for_expert(expert: &OnnxExpert) -> Self {
        let ours = || {
            let meta = expert.meta()?;
            let fresh = export(&meta.config, &meta.normalization, &expert.weights).ok()?;
            let (a, b) = (fresh.graph.as_ref()?, expert.proto.graph.as_ref()?);
            let same_nodes = a.node.len() == b.node.len()
                && a.node.iter().zip(&b.node).all(|(x, y)| {
                    x.op_type == y.op_type
                        && x.domain == y.domain
                        && x.input == y.input
                        && x.output == y.output
                        && x.attribute == y.attribute
                });
            // the constants too, trainable ones included (exported from these very weights)
            (same_nodes
                && a.input == b.input
                && a.output == b.output
                && a.initializer == b.initializer)
                .then_some(meta)
        };
        ours().map_or(RunGraph::File, RunGraph::Stacked)
    }

    /// Whether this is the stacked layout.
    pub fn is_stacked(&self) -> bool {
        matches!(self, RunGraph::Stacked(_))
    }

    /// The model to build for `weights` (`expert`'s layout).
    pub fn proto(
        &self,
        expert: &OnnxExpert,
        weights: &WeightSet,
    ) -> Result<pb::ModelProto, OnnxError> {
        match self {
            RunGraph::File => expert.with_weights(weights),
            RunGraph::Stacked(meta) => {
                expert
                    .weights
                    .same_layout(weights)
                    .map_err(|m| OnnxError::Layout(m.to_string()))?;
                // the stacked layout writes its fixed tensors (bases, normalisation, grid) from
                // the metadata: a weight set that changes any of them runs in the file's graph
                let trainable: Vec<String> = meta
                    .config
                    .param_shapes()
                    .into_iter()
                    .map(|(name, _)| name)
                    .collect();
                let close = |x: f32, y: f32| (x - y).abs() <= 1e-6 * x.abs().max(y.abs());
                for info in expert.weights.tensors() {
                    if !trainable.contains(&info.name)
                        && !expert
                            .weights
                            .get(&info.name)?
                            .iter()
                            .zip(weights.get(&info.name)?)
                            .all(|(x, y)| close(*x, *y))
                    {
                        return expert.with_weights(weights);
                    }
                }
                export_with(
                    &meta.config,
                    &meta.normalization,
                    weights,
                    SpectralLayout::Stacked,
                )
                .map_err(|e| OnnxError::Layout(e.to_string()))
            }
        }
    }
}
