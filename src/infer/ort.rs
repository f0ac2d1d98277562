//! The ONNX Runtime backend (cargo feature `ort`, on by default).
//!
//! ONNX Runtime is a C++ library, not linked into the binary: [`OrtBackend::new`] opens the
//! shared library at run time, from the path in [`OrtOptions::library`] or else from the
//! `ORT_DYLIB_PATH` environment variable. A missing or unusable library is an
//! [`InferError::Library`] that names the path tried and says how to install one; nothing here
//! panics on it. The PyPI wheel works as is:
//!
//! ```sh
//! python3 -m pip install --no-deps --target ~/.cache/ccm-twin/onnxruntime onnxruntime==1.32.0
//! export ORT_DYLIB_PATH=~/.cache/ccm-twin/onnxruntime/onnxruntime/capi/libonnxruntime.so.1.32.0
//! ```
//!
//! One process loads one library: the first path loaded stays for the life of the process, and
//! asking for another is an error rather than a silent reuse.
//!
//! Built without the feature, [`OrtBackend`] still exists and its constructor returns
//! [`InferError::NotCompiled`], so callers need no `#[cfg]`.

use std::path::PathBuf;

use super::InferError;

/// The environment variable that names the ONNX Runtime library when no explicit path is given.
pub const ORT_DYLIB_PATH: &str = "ORT_DYLIB_PATH";

/// Settings of the ONNX Runtime backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrtOptions {
    /// The ONNX Runtime shared library (`libonnxruntime.so.1.32.0`). When `None`, the path in
    /// `ORT_DYLIB_PATH` is used.
    pub library: Option<PathBuf>,
    /// Threads one step may use (ONNX Runtime's intra-op pool); 2 = the edge box's cores.
    pub intra_threads: usize,
}

impl Default for OrtOptions {
    fn default() -> Self {
        OrtOptions {
            library: None,
            intra_threads: 2,
        }
    }
}

impl OrtOptions {
    /// The library to load: [`library`](Self::library) if given, else `ORT_DYLIB_PATH` (an empty
    /// value counts as unset), else an [`InferError::Library`] saying how to provide one.
    pub fn library_path(&self) -> Result<PathBuf, InferError> {
        if let Some(p) = &self.library {
            return Ok(p.clone());
        }
        match std::env::var_os(ORT_DYLIB_PATH) {
            Some(v) if !v.is_empty() => Ok(PathBuf::from(v)),
            _ => Err(InferError::Library {
                tried: None,
                reason: format!("no library path was configured and {ORT_DYLIB_PATH} is not set"),
            }),
        }
    }
}

#[cfg(feature = "ort")]
pub use enabled::OrtBackend;

#[cfg(not(feature = "ort"))]
pub use disabled::OrtBackend;

#[cfg(feature = "ort")]
mod enabled {
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    use ::ort::environment::Environment;
    use ::ort::session::Session;
    use ::ort::value::TensorRef;
    use prost::Message;

    use super::OrtOptions;
    use crate::ccm::WeightSet;
    use crate::infer::{Backend, InferError, OnnxExpert, RunGraph, StepShape};

    /// The library this process loaded, and its one ONNX Runtime environment (ort allows one per
    /// process, and a library once loaded cannot be swapped).
    struct Loaded {
        path: PathBuf,
        env: Environment,
    }

    static LOADED: Mutex<Option<Loaded>> = Mutex::new(None);

    fn same_file(a: &Path, b: &Path) -> bool {
        match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
            (Ok(a), Ok(b)) => a == b,
            _ => a == b,
        }
    }

    /// Loads the library at `path` (once per process) and returns the environment.
    fn environment(path: &Path) -> Result<Environment, InferError> {
        let library_error = |reason: String| InferError::Library {
            tried: Some(path.to_path_buf()),
            reason,
        };
        if !path.is_file() {
            return Err(library_error(
                if path.exists() {
                    "it is not a file"
                } else {
                    "no such file"
                }
                .into(),
            ));
        }
        // a panic elsewhere while holding the lock leaves the data consistent: take it anyway
        let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = loaded.as_ref() {
            if same_file(&l.path, path) {
                return Ok(l.env.clone());
            }
            return Err(InferError::Runtime(format!(
                "cannot load ONNX Runtime from {}: this process already loaded it from {}, and a \
                 process can use only one ONNX Runtime library; configure the same path everywhere",
                path.display(),
                l.path.display()
            )));
        }
        let env = ::ort::init_from(path)
            .map_err(|e| library_error(e.to_string()))?
            .with_name("ccm-twin")
            .build()
            .map_err(|e| library_error(format!("the library loaded but refused to start: {e}")))?;
        *loaded = Some(Loaded {
            path: path.to_path_buf(),
            env: env.clone(),
        });
        Ok(env)
    }

    /// An FNO expert (or merge) running in ONNX Runtime.
    ///
    /// Deploying a weight set commits a new session from the template's protobuf with the new
    /// float initializers written in ([`OnnxExpert::with_weights`], encoded in memory); for our
    /// exporter's graph, from its stacked layout ([`RunGraph`]), which ONNX Runtime also runs
    /// faster.
    ///
    /// Measured on a shipped 64×64 expert (0.9 M parameters, 2 threads, a loaded 2-core box):
    /// this takes ~10 ms per deployment. The alternative, one cached template plus session
    /// initializer overrides (`SessionBuilder::with_initializer`), was only ~1 ms cheaper (~9 ms)
    /// and is **wrong** for our graphs: ONNX Runtime 1.32 silently ignored the overrides of the
    /// pointwise (1×1 `Conv`) weights and biases (`lift.*`, `layers.*.bypass.*`, `proj*`), so
    /// the session ran those tensors of the template (2–4e-3 relative L2 off the intended
    /// merge). Only the re-encoded protobuf matches tract and burn (~1e-7).
    pub struct OrtBackend {
        template: OnnxExpert,
        shape: StepShape,
        /// The graph a deployment builds: the stacked layout of our exporter's, or the file's.
        graph: RunGraph,
        env: Environment,
        intra_threads: usize,
        session: Option<Session>,
    }

    impl OrtBackend {
        /// A backend for experts with `template`'s graph, with ONNX Runtime loaded from
        /// [`OrtOptions::library_path`]; nothing is deployed yet.
        pub fn new(template: OnnxExpert, options: &OrtOptions) -> Result<Self, InferError> {
            let shape = StepShape::of(&template)?;
            if options.intra_threads == 0 {
                return Err(InferError::Runtime(
                    "ort: intra_threads must be at least 1 (got 0)".into(),
                ));
            }
            let env = environment(&options.library_path()?)?;
            Ok(OrtBackend {
                graph: RunGraph::for_expert(&template),
                template,
                shape,
                env,
                intra_threads: options.intra_threads,
                session: None,
            })
        }

        /// A backend that runs `template`'s graph as it is, even when it is our exporter's (for
        /// comparisons: the stacked layout is the same model in fewer, larger operations).
        pub fn with_file_graph(
            template: OnnxExpert,
            options: &OrtOptions,
        ) -> Result<Self, InferError> {
            let mut b = Self::new(template, options)?;
            b.graph = RunGraph::File;
            Ok(b)
        }

        /// Whether deployments run the stacked layout of the template's graph (it is our
        /// exporter's).
        pub fn stacked(&self) -> bool {
            self.graph.is_stacked()
        }

        fn prepare(&self, what: &str, e: impl std::fmt::Display) -> InferError {
            InferError::Runtime(format!(
                "ONNX Runtime cannot prepare {} ({what}): {e}",
                self.template.path.display()
            ))
        }
    }

    impl Backend for OrtBackend {
        fn name(&self) -> &'static str {
            "ort"
        }

        fn shape(&self) -> StepShape {
            self.shape
        }

        fn deploy(&mut self, weights: &WeightSet) -> Result<(), InferError> {
            let bytes = self.graph.proto(&self.template, weights)?.encode_to_vec();
            // the old session stays until the new one is built: a failed deployment leaves the
            // previous model running
            let session = Session::builder(&self.env)
                .map_err(|e| self.prepare("session options", e))?
                .with_intra_threads(self.intra_threads)
                .map_err(|e| self.prepare("session options", e))?
                // the edge box's other core has work to do: no busy-waiting between steps
                .with_intra_op_spinning(false)
                .map_err(|e| self.prepare("session options", e))?
                .commit_from_memory(&bytes)
                .map_err(|e| self.prepare("session", e))?;
            self.session = Some(session);
            Ok(())
        }

        fn step(&mut self, state: &[f32], out: &mut [f32]) -> Result<(), InferError> {
            let s = self.shape;
            s.check_input(state)?;
            s.check_output(out)?;
            let session = self.session.as_mut().ok_or(InferError::NotDeployed)?;
            let x = TensorRef::from_array_view(([1, s.t_in * s.channels, s.n, s.n], state))
                .map_err(|e| InferError::Runtime(format!("ort input: {e}")))?;
            let outputs = session
                .run(::ort::inputs![x])
                .map_err(|e| InferError::Runtime(format!("ort step failed: {e}")))?;
            let (_, y) = outputs[0]
                .try_extract_tensor::<f32>()
                .map_err(|e| InferError::Runtime(format!("ort output: {e}")))?;
            if y.len() != out.len() {
                return Err(InferError::Shape {
                    what: "ort output",
                    expected: out.len(),
                    found: y.len(),
                });
            }
            out.copy_from_slice(y);
            Ok(())
        }
    }
}

#[cfg(not(feature = "ort"))]
mod disabled {
    use super::OrtOptions;
    use crate::ccm::WeightSet;
    use crate::infer::{Backend, InferError, OnnxExpert, RunGraph, StepShape};

    /// The ONNX Runtime backend, compiled out of this build: [`OrtBackend::new`] returns
    /// [`InferError::NotCompiled`]. Rebuild with `--features ort` to use it.
    pub struct OrtBackend {
        never: std::convert::Infallible,
    }

    fn not_compiled() -> InferError {
        InferError::NotCompiled {
            backend: "ort",
            feature: "ort",
        }
    }

    impl OrtBackend {
        /// Always [`InferError::NotCompiled`] in this build.
        pub fn new(_template: OnnxExpert, _options: &OrtOptions) -> Result<Self, InferError> {
            Err(not_compiled())
        }

        /// Not compiled in: the same error.
        pub fn with_file_graph(
            _template: OnnxExpert,
            _options: &OrtOptions,
        ) -> Result<Self, InferError> {
            Err(not_compiled())
        }

        /// Never called: no backend exists without the feature.
        pub fn stacked(&self) -> bool {
            match self.never {}
        }
    }

    impl Backend for OrtBackend {
        fn name(&self) -> &'static str {
            "ort"
        }
        fn shape(&self) -> StepShape {
            match self.never {}
        }
        fn deploy(&mut self, _weights: &WeightSet) -> Result<(), InferError> {
            match self.never {}
        }
        fn step(&mut self, _state: &[f32], _out: &mut [f32]) -> Result<(), InferError> {
            match self.never {}
        }
    }
}
