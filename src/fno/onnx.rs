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

    /// The bypass added to the spectral part `k` of layer `l` (of `layers`), then GELU but
    /// after the last layer.
    fn layer_end(&mut self, v: &str, k: &str, l: usize, layers: usize) -> String {
        let bypass = self.pointwise(
            v,
            &format!("layers.{l}.bypass.weight"),
            &format!("layers.{l}.bypass.bias"),
        );
        let sum = self.binary("Add", k, &bypass);
        if l + 1 < layers { self.gelu(&sum) } else { sum }
    }

    /// The spectral part of layer `l` in the stacked layout (the `stacked.*` and
    /// `dft.stacked.*` constants): `v` `[b, w, n, n]` → `[b, w, n, n]`.
    fn stacked_spectral(&mut self, v: &str, l: usize) -> String {
        let perm = |p: &[i64]| vec![attr_ints("perm", p)];
        let swap_23 = [0, 1, 3, 2, 4];
        // along w: [b, w, h, (re | im) × m], then the parts under each other: [b, w, 2h, m]
        let x = self.binary("MatMul", v, "dft.stacked.w");
        let x = self.binary("Reshape", &x, "stacked.x5");
        let x = self.op("Transpose", &[&x], perm(&swap_23));
        let x = self.binary("Reshape", &x, "stacked.x4");
        // along h: [b, w, (re, im) × 2m, m]
        let y = self.binary("MatMul", "dft.stacked.h", &x);
        // the parts beside the channels: [b, (re, im) × w, 2m, m]; mixing per mode
        // modes first, each a contiguous [b, 2w] row: [2m, m, b, (re, im) × w]
        let y = self.binary("Reshape", &y, "stacked.y5");
        let y = self.op("Transpose", &[&y], perm(&[3, 4, 0, 2, 1]));
        let y = self.binary("Reshape", &y, "stacked.y4");
        let o = self.op(
            "Einsum",
            &[&y, &stacked_mixing_name(l)],
            vec![attr_str("equation", "xybi,xyio->xybo")],
        );
        // back under each other: [b, w, (re, im) × 2m, m]; inverse along h: [b, w, (re, im) × h, m]
        let o = self.binary("Reshape", &o, "stacked.o5");
        let o = self.op("Transpose", &[&o], perm(&[2, 4, 3, 0, 1]));
        let o = self.binary("Reshape", &o, "stacked.o4");
        let z = self.binary("MatMul", "dft.stacked.hi", &o);
        // the parts beside each other along w: [b, w, h, (re | im) × m]; real inverse along w
        let z = self.binary("Reshape", &z, "stacked.z5");
        let z = self.op("Transpose", &[&z], perm(&swap_23));
        let z = self.binary("Reshape", &z, "stacked.z4");
        self.binary("MatMul", &z, "dft.stacked.wi")
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

/// How a Fourier layer's complex products are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpectralLayout {
    /// Real and imaginary parts as separate operands: 12 matrix products and 4 mixing einsums
    /// per layer, every trainable tensor under its canonical name. The file format.
    Split,
    /// Real and imaginary parts stacked into one operand, so that each half of the 2-D DFT, its
    /// inverse, and the complex channel mixing are one product each: 4 matrix products and 1
    /// einsum per layer. The layer's two mixing tensors become one,
    /// `layers.{l}.spectral.weight_stacked`, `[2m, m, 2w, 2w]`. The same values up to
    /// rounding; for runtimes that pay per operation rather than per multiply (tract runs each
    /// einsum as one small product per Fourier mode).
    Stacked,
}

/// The name of layer `l`'s stacked mixing tensor ([`SpectralLayout::Stacked`]).
fn stacked_mixing_name(l: usize) -> String {
    format!("layers.{l}.spectral.weight_stacked")
}

/// Layer `l` of a [`SpectralLayout::Stacked`] graph and the canonical tensor `name`: whether
/// `name` is one of the two mixing tensors the stacked one is made of.
fn is_mixing_part(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("layers.")?;
    let (l, part) = rest.split_once('.')?;
    matches!(part, "spectral.weight_re" | "spectral.weight_im")
        .then(|| l.parse().ok())
        .flatten()
}

/// The shape of a stacked mixing tensor, `[rows, modes, 2w, 2w]`, from its parts'
/// `[w, w, rows, modes]`.
fn stacked_mixing_dims(part: &[usize]) -> [usize; 4] {
    [part[2], part[3], 2 * part[0], 2 * part[1]]
}

/// The stacked mixing tensor from a layer's `[w, w, rows, modes]` real and imaginary parts: for
/// each Fourier mode, mode-major, the `[2w, 2w]` matrix `[[W_re, W_im], [−W_im, W_re]]`. Input
/// channels `[0, w)` take the real part of a mode, `[w, 2w)` the imaginary part; output
/// channels likewise.
fn stacked_mixing(re: &[f32], im: &[f32], w: usize, out: &mut Vec<f32>) {
    let plane = re.len() / (w * w);
    out.clear();
    out.resize(4 * re.len(), 0.0);
    for i in 0..2 * w {
        for o in 0..2 * w {
            let (src, sign) = match (i < w, o < w) {
                (true, true) | (false, false) => (re, 1.0),
                (true, false) => (im, 1.0),
                (false, true) => (im, -1.0),
            };
            let from = ((i % w) * w + o % w) * plane;
            for (p, x) in src[from..from + plane].iter().enumerate() {
                out[(p * 2 * w + i) * 2 * w + o] = sign * x;
            }
        }
    }
}

/// Builds the ONNX model of an expert (the file format, [`SpectralLayout::Split`]).
pub fn export(
    cfg: &FnoConfig,
    norm: &Normalization,
    weights: &WeightSet,
) -> Result<pb::ModelProto, ExportError> {
    export_with(cfg, norm, weights, SpectralLayout::Split)
}

/// Builds the ONNX model of an expert with the Fourier layers written in `layout`.
pub fn export_with(
    cfg: &FnoConfig,
    norm: &Normalization,
    weights: &WeightSet,
    layout: SpectralLayout,
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
    let stacked = layout == SpectralLayout::Stacked;
    let mut buf = Vec::new();
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
        match is_mixing_part(&name).filter(|_| stacked) {
            // the pair as one tensor, where the imaginary part comes
            Some(l) if name.ends_with("_im") => {
                let re = weights.get(&format!("layers.{l}.spectral.weight_re"))?;
                stacked_mixing(re, weights.get(&name)?, cfg.width, &mut buf);
                g.init_f32(&stacked_mixing_name(l), &stacked_mixing_dims(&shape), &buf);
            }
            Some(_) => {}
            None => {
                g.init_f32(&name, &shape, weights.get(&name)?);
            }
        }
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
    if !stacked {
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
    }
    if stacked {
        // [cos | −sin] along w; [[C, S], [−S, C]] along h (rows: real, then imaginary parts)
        let (w, r) = (cfg.width as i64, 2 * m as i64);
        let (n_, m_) = (n as i64, m as i64);
        let mut wf = vec![0.0f32; n * 2 * m];
        for x in 0..n {
            for k in 0..m {
                wf[x * 2 * m + k] = b.fwd_w_cos[x * m + k];
                wf[x * 2 * m + m + k] = -b.fwd_w_sin[x * m + k];
            }
        }
        g.init_f32("dft.stacked.w", &[n, 2 * m], &wf);
        let block = |rows: usize, cols: usize, parts: [[&[f32]; 2]; 2]| -> Vec<f32> {
            let mut out = vec![0.0f32; 4 * rows * cols];
            for (bi, row) in parts.iter().enumerate() {
                for (bj, part) in row.iter().enumerate() {
                    for i in 0..rows {
                        for j in 0..cols {
                            out[(bi * rows + i) * 2 * cols + bj * cols + j] = part[i * cols + j];
                        }
                    }
                }
            }
            out
        };
        let (hs, hms) = (b.fwd_h_sin.clone(), neg(&b.fwd_h_sin));
        g.init_f32(
            "dft.stacked.h",
            &[4 * m, 2 * n],
            &block(2 * m, n, [[&b.fwd_h_cos, &hs], [&hms, &b.fwd_h_cos]]),
        );
        let his_m = neg(&b.inv_h_sin);
        g.init_f32(
            "dft.stacked.hi",
            &[2 * n, 4 * m],
            &block(
                n,
                2 * m,
                [[&b.inv_h_cos, &his_m], [&b.inv_h_sin, &b.inv_h_cos]],
            ),
        );
        let mut wi = b.inv_w_cos.clone();
        wi.extend(neg(&b.inv_w_sin));
        g.init_f32("dft.stacked.wi", &[2 * m, n], &wi);
        // reshapes (0: the batch, copied) and the permutations between them
        g.init_i64("stacked.x5", &[0, w, n_, 2, m_]);
        g.init_i64("stacked.x4", &[0, w, 2 * n_, m_]);
        g.init_i64("stacked.y5", &[0, w, 2, r, m_]);
        g.init_i64("stacked.y4", &[r, m_, 0, 2 * w]);
        g.init_i64("stacked.o5", &[r, m_, 0, 2, w]);
        g.init_i64("stacked.o4", &[0, w, 2 * r, m_]);
        g.init_i64("stacked.z5", &[0, w, 2, n_, m_]);
        g.init_i64("stacked.z4", &[0, w, n_, 2 * m_]);
    }
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
        if stacked {
            let k = g.stacked_spectral(&v, l);
            v = g.layer_end(&v, &k, l, cfg.layers);
            continue;
        }
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
        v = g.layer_end(&v, &k, l, cfg.layers);
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
