//! Writes an FNO expert as an ONNX model that both tract and ONNX Runtime run.
//!
//! The truncated spectral convolution is written as real matrix products with the fixed cosine
//! and sine bases of [`DftBases`] (stored as `dft.*` initializers), the channel mixing per mode as
//! `Einsum("bixy,ioxy->boxy")`, GELU in its tanh form from elementary ops, and pointwise layers
//! as 1×1 `Conv`s whose kernels are reshaped from the canonical `[out, in]` weights inside the
//! graph. Every trainable tensor is an initializer under its canonical name and shape
//! ([`FnoConfig::param_shapes`]), so all experts of a family share one graph and differ only in
//! initializer values — which is what makes merging ONNX files possible. Opset 17, no DFT op.
//!
//! The model's [`FnoConfig`] and [`Normalization`] travel in the metadata (`ccm_twin.fno`), so a
//! runtime can rebuild everything it needs from the file alone.

use prost::Message;
use tract_onnx::pb;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::DataType;

use super::spec::{DftBases, FnoConfig, Normalization};
use crate::ccm::{WeightError, WeightSet};

/// Metadata key holding the expert's [`ExpertMeta`] as JSON.
pub const META_KEY: &str = "ccm_twin.fno";
/// Name of the graph input: `[batch, T_in·C, n, n]`.
pub const INPUT: &str = "state";
/// Name of the graph output: `[batch, C, n, n]`.
pub const OUTPUT: &str = "next";
/// The opset the exporter writes.
pub const OPSET: i64 = 17;

/// What the exporter records about the model in the ONNX metadata.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ExpertMeta {
    /// Architecture.
    pub config: FnoConfig,
    /// Normalisation constants.
    pub normalization: Normalization,
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The weights do not match the architecture.
    #[error("weights do not match the FNO configuration: {0}")]
    Weights(#[from] WeightError),
    /// The architecture is invalid.
    #[error(transparent)]
    Config(#[from] super::spec::FnoConfigError),
    /// The normalisation has the wrong number of channels or a non-positive std.
    #[error("normalisation: {0}")]
    Normalization(String),
}

struct Graph {
    nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
    next_id: usize,
}

fn attr_int(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

fn attr_str(name: &str, v: &str) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::String as i32,
        s: v.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn attr_ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

impl Graph {
    fn new() -> Self {
        Graph {
            nodes: Vec::new(),
            inits: Vec::new(),
            next_id: 0,
        }
    }

    fn init_f32(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        assert_eq!(dims.iter().product::<usize>(), data.len(), "{name}");
        let mut raw = Vec::with_capacity(data.len() * 4);
        for v in data {
            raw.extend_from_slice(&v.to_le_bytes());
        }
        self.inits.push(pb::TensorProto {
            name: name.into(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: DataType::Float as i32,
            raw_data: raw,
            ..Default::default()
        });
        name.to_string()
    }

    fn init_i64(&mut self, name: &str, data: &[i64]) -> String {
        self.inits.push(pb::TensorProto {
            name: name.into(),
            dims: vec![data.len() as i64],
            data_type: DataType::Int64 as i32,
            int64_data: data.to_vec(),
            ..Default::default()
        });
        name.to_string()
    }

    fn scalar(&mut self, name: &str, v: f32) -> String {
        self.init_f32(name, &[], &[v])
    }

    fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<pb::AttributeProto>) -> String {
        self.next_id += 1;
        let out = format!("{}_{}", op.to_ascii_lowercase(), self.next_id);
        self.nodes.push(pb::NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            name: out.clone(),
            op_type: op.into(),
            attribute: attrs,
            ..Default::default()
        });
        out
    }

    fn binary(&mut self, op: &str, a: &str, b: &str) -> String {
        self.op(op, &[a, b], vec![])
    }

    fn gelu(&mut self, x: &str) -> String {
        let x2 = self.binary("Mul", x, x);
        let x3 = self.binary("Mul", &x2, x);
        let a = self.binary("Mul", &x3, "const.gelu_cubic");
        let inner = self.binary("Add", x, &a);
        let scaled = self.binary("Mul", &inner, "const.gelu_scale");
        let t = self.op("Tanh", &[&scaled], vec![]);
        let one_plus = self.binary("Add", &t, "const.one");
        let half_x = self.binary("Mul", x, "const.half");
        self.binary("Mul", &half_x, &one_plus)
    }

    /// A pointwise linear layer from the canonical `[out, in]` weight and `[out]` bias.
    fn pointwise(&mut self, x: &str, weight: &str, bias: &str) -> String {
        let kernel = self.binary("Reshape", weight, "const.kernel_1x1");
        self.op(
            "Conv",
            &[x, &kernel, bias],
            vec![attr_ints("kernel_shape", &[1, 1])],
        )
    }
}

/// Builds the ONNX model of an expert.
pub fn export(
    cfg: &FnoConfig,
    norm: &Normalization,
    weights: &WeightSet,
) -> Result<pb::ModelProto, ExportError> {
    cfg.validate()?;
    if cfg.conditioning != 0 {
        return Err(ExportError::Normalization(
            "a parameter-conditioned model is an evaluation baseline: it takes the regime as an \
             input, so it cannot be merged along a CCM line and is not exported"
                .into(),
        ));
    }
    let (c, n, m) = (cfg.channels, cfg.n, cfg.modes);
    if norm.mean.len() != c || norm.std.len() != c {
        return Err(ExportError::Normalization(format!(
            "{} channels expected, got {} means and {} stds",
            c,
            norm.mean.len(),
            norm.std.len()
        )));
    }
    if norm.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(ExportError::Normalization(format!(
            "std must be positive: {:?}",
            norm.std
        )));
    }
    let mut g = Graph::new();
    // trainable tensors first, in canonical order
    for (name, shape) in cfg.param_shapes() {
        let info = weights.info(&name)?;
        if info.shape != shape {
            return Err(ExportError::Weights(WeightError::Size {
                name,
                shape: info.shape.clone(),
                expected: shape.iter().product(),
                found: info.len(),
            }));
        }
        g.init_f32(&name, &shape, weights.get(&name)?);
    }
    // fixed tensors
    let tin_c = cfg.t_in * c;
    let tiled = |v: &[f32]| -> Vec<f32> { (0..tin_c).map(|i| v[i % c]).collect() };
    g.init_f32("norm.mean_in", &[1, tin_c, 1, 1], &tiled(&norm.mean));
    g.init_f32("norm.std_in", &[1, tin_c, 1, 1], &tiled(&norm.std));
    g.init_f32("norm.std_out", &[1, c, 1, 1], &norm.std);
    let mut grid = vec![0.0f32; 2 * n * n];
    for h in 0..n {
        for w in 0..n {
            grid[h * n + w] = (w as f32 + 0.5) / n as f32;
            grid[n * n + h * n + w] = (h as f32 + 0.5) / n as f32;
        }
    }
    g.init_f32("grid", &[1, 2, n, n], &grid);
    let b = DftBases::new(n, m);
    let neg = |v: &[f32]| -> Vec<f32> { v.iter().map(|x| -x).collect() };
    g.init_f32("dft.w_cos", &[n, m], &b.fwd_w_cos);
    g.init_f32("dft.w_msin", &[n, m], &neg(&b.fwd_w_sin));
    g.init_f32("dft.h_cos", &[2 * m, n], &b.fwd_h_cos);
    g.init_f32("dft.h_sin", &[2 * m, n], &b.fwd_h_sin);
    g.init_f32("dft.h_msin", &[2 * m, n], &neg(&b.fwd_h_sin));
    g.init_f32("dft.hi_cos", &[n, 2 * m], &b.inv_h_cos);
    g.init_f32("dft.hi_sin", &[n, 2 * m], &b.inv_h_sin);
    g.init_f32("dft.hi_msin", &[n, 2 * m], &neg(&b.inv_h_sin));
    g.init_f32("dft.wi_cos", &[m, n], &b.inv_w_cos);
    g.init_f32("dft.wi_msin", &[m, n], &neg(&b.inv_w_sin));
    g.scalar("const.gelu_cubic", 0.044_715);
    g.scalar("const.gelu_scale", 0.797_884_6);
    g.scalar("const.one", 1.0);
    g.scalar("const.half", 0.5);
    g.init_i64("const.kernel_1x1", &[0, -1, 1, 1]);
    g.init_i64("const.grid_dims", &[2, n as i64, n as i64]);
    g.init_i64("const.batch_start", &[0]);
    g.init_i64("const.batch_end", &[1]);
    g.init_i64("const.last_start", &[((cfg.t_in - 1) * c) as i64]);
    g.init_i64("const.last_end", &[tin_c as i64]);
    g.init_i64("const.channel_axis", &[1]);

    // normalise, append the grid
    let centred = g.binary("Sub", INPUT, "norm.mean_in");
    let z = g.binary("Div", &centred, "norm.std_in");
    let shape = g.op("Shape", &[INPUT], vec![]);
    let batch = g.op(
        "Slice",
        &[&shape, "const.batch_start", "const.batch_end"],
        vec![],
    );
    let grid_shape = g.op(
        "Concat",
        &[&batch, "const.grid_dims"],
        vec![attr_int("axis", 0)],
    );
    let grid_b = g.op("Expand", &["grid", &grid_shape], vec![]);
    let z = g.op("Concat", &[&z, &grid_b], vec![attr_int("axis", 1)]);
    let mut v = g.pointwise(&z, "lift.weight", "lift.bias");
    for l in 0..cfg.layers {
        let wre = format!("layers.{l}.spectral.weight_re");
        let wim = format!("layers.{l}.spectral.weight_im");
        // forward along w: X = v·(cos − i sin)
        let xr = g.binary("MatMul", &v, "dft.w_cos");
        let xi = g.binary("MatMul", &v, "dft.w_msin");
        // forward along h on the kept rows: Y = (C_h − i S_h)·X
        let a = g.binary("MatMul", "dft.h_cos", &xr);
        let bb = g.binary("MatMul", "dft.h_sin", &xi);
        let yr = g.binary("Add", &a, &bb);
        let a = g.binary("MatMul", "dft.h_cos", &xi);
        let bb = g.binary("MatMul", "dft.h_msin", &xr);
        let yi = g.binary("Add", &a, &bb);
        // complex channel mixing per mode
        let eq = vec![attr_str("equation", "bixy,ioxy->boxy")];
        let rr = g.op("Einsum", &[&yr, &wre], eq.clone());
        let ii = g.op("Einsum", &[&yi, &wim], eq.clone());
        let ri = g.op("Einsum", &[&yr, &wim], eq.clone());
        let ir = g.op("Einsum", &[&yi, &wre], eq);
        let or = g.binary("Sub", &rr, &ii);
        let oi = g.binary("Add", &ri, &ir);
        // inverse along h: Z = (C_h' + i S_h')·O / n
        let a = g.binary("MatMul", "dft.hi_cos", &or);
        let bb = g.binary("MatMul", "dft.hi_msin", &oi);
        let zr = g.binary("Add", &a, &bb);
        let a = g.binary("MatMul", "dft.hi_cos", &oi);
        let bb = g.binary("MatMul", "dft.hi_sin", &or);
        let zi = g.binary("Add", &a, &bb);
        // real inverse along w: Re(Z·(cos + i sin))·c_k / n
        let a = g.binary("MatMul", &zr, "dft.wi_cos");
        let bb = g.binary("MatMul", &zi, "dft.wi_msin");
        let k = g.binary("Add", &a, &bb);
        let bypass = g.pointwise(
            &v,
            &format!("layers.{l}.bypass.weight"),
            &format!("layers.{l}.bypass.bias"),
        );
        let sum = g.binary("Add", &k, &bypass);
        v = if l + 1 < cfg.layers {
            g.gelu(&sum)
        } else {
            sum
        };
    }
    let h = g.pointwise(&v, "proj1.weight", "proj1.bias");
    let h = g.gelu(&h);
    let q = g.pointwise(&h, "proj2.weight", "proj2.bias");
    let step = g.binary("Mul", &q, "norm.std_out");
    let last = g.op(
        "Slice",
        &[
            INPUT,
            "const.last_start",
            "const.last_end",
            "const.channel_axis",
        ],
        vec![],
    );
    let out = g.binary("Add", &last, &step);
    g.nodes.push(pb::NodeProto {
        input: vec![out],
        output: vec![OUTPUT.into()],
        name: "output".into(),
        op_type: "Identity".into(),
        ..Default::default()
    });

    let tensor_type = |channels: usize| pb::TypeProto {
        value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
            elem_type: DataType::Float as i32,
            shape: Some(pb::TensorShapeProto {
                dim: [None, Some(channels), Some(n), Some(n)]
                    .iter()
                    .map(|d| pb::tensor_shape_proto::Dimension {
                        value: Some(match d {
                            Some(v) => {
                                pb::tensor_shape_proto::dimension::Value::DimValue(*v as i64)
                            }
                            None => {
                                pb::tensor_shape_proto::dimension::Value::DimParam("batch".into())
                            }
                        }),
                        ..Default::default()
                    })
                    .collect(),
            }),
        })),
        ..Default::default()
    };
    let meta = ExpertMeta {
        config: *cfg,
        normalization: norm.clone(),
    };
    Ok(pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "ccm-twin".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: "Fourier neural operator expert (one autoregressive step)".into(),
        graph: Some(pb::GraphProto {
            name: "fno".into(),
            node: g.nodes,
            initializer: g.inits,
            input: vec![pb::ValueInfoProto {
                name: INPUT.into(),
                r#type: Some(tensor_type(tin_c)),
                ..Default::default()
            }],
            output: vec![pb::ValueInfoProto {
                name: OUTPUT.into(),
                r#type: Some(tensor_type(c)),
                ..Default::default()
            }],
            ..Default::default()
        }),
        metadata_props: vec![pb::StringStringEntryProto {
            key: META_KEY.into(),
            value: serde_json::to_string(&meta).expect("metadata serialises"),
        }],
        ..Default::default()
    })
}

/// [`export`], encoded as ONNX protobuf bytes.
pub fn export_bytes(
    cfg: &FnoConfig,
    norm: &Normalization,
    weights: &WeightSet,
) -> Result<Vec<u8>, ExportError> {
    Ok(export(cfg, norm, weights)?.encode_to_vec())
}
