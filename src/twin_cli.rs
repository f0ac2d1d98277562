//! The `simulate` and `bridge` subcommands of the `ccm-twin` binary: argument parsing and glue
//! around `ccm_twin::twin`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use ccm_twin::config::{Family, FamilyConfig};
use ccm_twin::twin::bridge::{Bridge, BridgeError, BridgeOptions, Input, InputSource};
use ccm_twin::twin::broker::{BrokerError, EmbeddedBroker};
use ccm_twin::twin::mqtt::{BrokerAddress, LinkOptions, MqttError, MqttLink};
use ccm_twin::twin::simulator::{
    self, Encoding, Pacing, Sensors, SimulatorError, SimulatorOptions, StationSimulator,
};

/// How long the commands wait at the end for the broker to acknowledge what is queued.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(clap::Args)]
pub struct SimulateArgs {
    /// Family: navier_stokes, reaction_diffusion or dam_break.
    #[arg(long)]
    family: Family,
    /// The regime parameter p (ν, D_u or Manning n; see `ccm-twin config FAMILY`).
    #[arg(long, allow_negative_numbers = true)]
    p: f64,
    /// Frames per second of wall-clock time (0: as fast as possible, the default).
    #[arg(long, value_name = "HZ", conflicts_with_all = ["realtime", "speed"])]
    rate: Option<f64>,
    /// Pace frames in simulation time: one frame every `time.frame_dt` seconds.
    #[arg(long, conflicts_with = "speed")]
    realtime: bool,
    /// Like --realtime, FACTOR times faster.
    #[arg(long, value_name = "FACTOR")]
    speed: Option<f64>,
    /// MQTT broker to publish to; without it an embedded broker is started on 127.0.0.1.
    #[arg(long, value_name = "HOST:PORT")]
    broker: Option<BrokerAddress>,
    /// Port of the embedded broker (when --broker is not given); 0 picks a free one.
    #[arg(
        long,
        value_name = "PORT",
        default_value_t = 1883,
        conflicts_with = "broker"
    )]
    embedded_port: u16,
    /// Station id: the topic is ccm/<station>/frames.
    #[arg(long, value_name = "ID", default_value = "st-01")]
    station: String,
    /// Seeds the initial condition, the noise, the dropped frames and random points.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stop after N frames (default: run until Ctrl-C).
    #[arg(long, value_name = "N")]
    frames: Option<u64>,
    /// Report N random sensor points instead of the whole field.
    #[arg(long, value_name = "N", conflicts_with = "points_file")]
    points: Option<usize>,
    /// Report the sensor points listed in PATH (one `row col` per line).
    #[arg(long, value_name = "PATH")]
    points_file: Option<PathBuf>,
    /// Report only these channels, comma-separated (`--channels h`: a depth gauge station);
    /// default: all of the family's.
    #[arg(long, value_name = "NAMES", value_delimiter = ',')]
    channels: Option<Vec<String>>,
    /// Standard deviation of Gaussian noise added to every value (field units).
    #[arg(long, value_name = "SIGMA", default_value_t = 0.0)]
    noise: f64,
    /// Probability that a frame is dropped (not published; its seq is skipped).
    #[arg(long, value_name = "PROB", default_value_t = 0.0)]
    drop: f64,
    /// Quantise values to 16-bit counts (`i16`) instead of sending f32.
    #[arg(long, value_name = "i16")]
    quantize: Option<Encoding>,
    /// A family config file to use instead of the built-in one (grid size, frame_dt, solver).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Frames held while the broker is away (the oldest are dropped beyond this).
    #[arg(long, value_name = "N", default_value_t = 1024)]
    buffer: usize,
}

#[derive(clap::Args)]
pub struct BridgeArgs {
    /// Where COBS-framed messages come from: stdin, udp:ADDR:PORT or serial:/dev/ttyXXX (set
    /// the serial line first, e.g. `stty -F /dev/ttyUSB0 115200 raw -echo`).
    #[arg(long, value_name = "INPUT")]
    input: Input,
    /// MQTT broker to publish to.
    #[arg(long, value_name = "HOST:PORT")]
    broker: BrokerAddress,
    /// Forward only this station's frames.
    #[arg(long, value_name = "ID")]
    station_filter: Option<String>,
    /// Frames held while the broker is away (the oldest are dropped beyond this).
    #[arg(long, value_name = "N", default_value_t = 1024)]
    buffer: usize,
    /// Seconds between counter reports in the log (-v); 0: only at the end.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    stats_interval: u64,
}

/// Whether an error is the user's input (exit code 2) rather than a failure.
pub fn is_bad_input(e: &(dyn std::error::Error + 'static)) -> bool {
    matches!(
        e.downcast_ref::<SimulatorError>(),
        Some(
            SimulatorError::BadOption { .. }
                | SimulatorError::BadStation { .. }
                | SimulatorError::BadPoints(_)
                | SimulatorError::PointsFile { .. }
                | SimulatorError::PointsSyntax { .. }
        )
    ) || matches!(
        e.downcast_ref::<BridgeError>(),
        Some(BridgeError::BadInput { .. } | BridgeError::BadStation { .. })
    ) || matches!(
        e.downcast_ref::<MqttError>(),
        Some(MqttError::BadAddress { .. })
    )
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

pub fn simulate(args: SimulateArgs) -> Result<()> {
    let cfg = match &args.config {
        Some(path) => FamilyConfig::load(path)?,
        None => FamilyConfig::builtin(args.family),
    };
    anyhow::ensure!(
        cfg.family == args.family,
        "config {} is for family {}, not {}",
        args.config
            .as_deref()
            .unwrap_or(std::path::Path::new("?"))
            .display(),
        cfg.family,
        args.family
    );
    let sensors = match (&args.points, &args.points_file) {
        (Some(count), _) => {
            Sensors::Points(simulator::random_points(cfg.grid.n, *count, args.seed)?)
        }
        (None, Some(path)) => Sensors::Points(simulator::load_points(path)?),
        (None, None) => Sensors::Dense,
    };
    let pacing = match (args.rate, args.realtime, args.speed) {
        (Some(hz), _, _) => Pacing::rate(hz)?,
        (None, true, _) => Pacing::simulated_time(cfg.time.frame_dt, 1.0)?,
        (None, false, Some(speed)) => Pacing::simulated_time(cfg.time.frame_dt, speed)?,
        (None, false, None) => Pacing::Unpaced,
    };
    let mut opts = SimulatorOptions::new(args.station.clone(), args.p, args.seed);
    opts.sensors = sensors;
    opts.channels = args.channels;
    opts.noise_sigma = args.noise;
    opts.drop_probability = args.drop;
    opts.encoding = args.quantize.unwrap_or_default();
    opts.start_us = ccm_twin::twin::unix_time_us();
    let sim = StationSimulator::new(&cfg, opts)?;

    let broker = match args.broker {
        Some(addr) => addr,
        None => {
            let embedded = EmbeddedBroker::start(args.embedded_port)
                .map_err(|e: BrokerError| anyhow::Error::new(e))
                .context("starting the embedded MQTT broker (pass --broker HOST:PORT to use a running one)")?;
            eprintln!(
                "embedded MQTT broker listening on {} (it stops when this command ends)",
                embedded.addr()
            );
            BrokerAddress::from(embedded.addr())
        }
    };
    let shape = sim.shape();
    eprintln!(
        "station {} simulating {} at p = {} ({}×{}, {} channel(s){}) -> ccm/{}/frames on {broker}",
        args.station,
        cfg.family,
        args.p,
        shape.rows,
        shape.cols,
        shape.channels,
        sim.points()
            .map(|p| format!(", {} sensor points", p.len()))
            .unwrap_or_default(),
        args.station
    );
    let rt = runtime()?;
    rt.block_on(async {
        let mut link_opts = LinkOptions::new(
            broker.clone(),
            format!("ccm-sim-{}-{}", args.station, std::process::id()),
        );
        link_opts.buffer = args.buffer;
        let link = MqttLink::start(link_opts)?;
        let report = simulator::run_simulation(sim, &link, pacing, args.frames, ctrl_c()).await?;
        let flushed = link.flush(FLUSH_TIMEOUT).await;
        let stats = link.stats();
        link.close().await;
        eprintln!(
            "simulated {} frame(s) ({} dropped on purpose), {} acknowledged by the broker at {broker}",
            report.frames, report.dropped, stats.delivered
        );
        flushed?;
        Ok(())
    })
}

pub fn bridge(args: BridgeArgs) -> Result<()> {
    let opts = BridgeOptions {
        station_filter: args.station_filter,
        stats_interval: Duration::from_secs(args.stats_interval),
        flush_timeout: FLUSH_TIMEOUT,
        ..BridgeOptions::default()
    };
    let rt = runtime()?;
    rt.block_on(async {
        let mut link_opts = LinkOptions::new(
            args.broker.clone(),
            format!("ccm-bridge-{}", std::process::id()),
        );
        link_opts.buffer = args.buffer;
        let link = MqttLink::start(link_opts)?;
        let bridge = Bridge::new(link.clone(), opts)?;
        let input = InputSource::open(&args.input).await?;
        eprintln!("bridge: {} -> MQTT broker at {}", args.input, args.broker);
        let stats = bridge.run(input, ctrl_c()).await?;
        link.close().await;
        eprintln!("bridge: {stats}");
        Ok(())
    })
}

#[derive(clap::Args)]
pub struct ServeArgs {
    /// The station's config (see configs/station.toml).
    #[arg(long, value_name = "PATH")]
    config: PathBuf,
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    () = ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => ctrl_c().await,
        }
    }
    #[cfg(not(unix))]
    ctrl_c().await;
}

pub fn serve(args: ServeArgs) -> Result<()> {
    let cfg = ccm_twin::twin::serve::StationConfig::load(&args.config)?;
    let rt = runtime()?;
    rt.block_on(async {
        tracing::info!(
            station = %cfg.station.id,
            broker = %format!("{}:{}", cfg.broker.host, cfg.broker.port),
            "serving; Ctrl-C or SIGTERM stops cleanly"
        );
        let summary = ccm_twin::twin::serve::serve(
            &cfg,
            async {
                shutdown_signal().await;
                tracing::info!(
                    "shutting down: the current cycle is abandoned, offline status published"
                );
            },
            None,
        )
        .await?;
        eprintln!(
            "served {} frames, {} forecasts, {} alerts; last α {}",
            summary.counters.frames_received,
            summary.counters.forecasts_published,
            summary.counters.alerts_published,
            summary
                .alpha
                .map(|a| format!("{a:+.2}"))
                .unwrap_or_else(|| "none".into())
        );
        Ok(())
    })
}

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Family: dam_break (default), reaction_diffusion or navier_stokes.
    #[arg(long, default_value = "dam_break")]
    family: Family,
    /// The station's true regime (default: the family's first out-of-range test value).
    #[arg(long, allow_negative_numbers = true)]
    p: Option<f64>,
    /// Frames the station sends.
    #[arg(long, default_value_t = 12)]
    frames: usize,
    /// Milliseconds between frames.
    #[arg(long, default_value_t = 200)]
    interval_ms: u64,
    /// Use this MQTT broker instead of starting an embedded one.
    #[arg(long, value_name = "HOST:PORT")]
    broker: Option<BrokerAddress>,
    /// The model bundle (default models/<family>).
    #[arg(long)]
    models: Option<PathBuf>,
    /// Where to write the picture of the first forecast's last frame next to the truth.
    #[arg(long, default_value = "demo-forecast.png")]
    png: PathBuf,
    /// Runtime: native (default), tract, or ort (ONNX Runtime, library from ORT_DYLIB_PATH).
    #[arg(long, default_value = "native")]
    runtime: ccm_twin::infer::Runtime,
    /// Sparse sensors: the station reports this many random cells per frame instead of whole
    /// fields.
    #[arg(long, value_name = "N")]
    sensors: Option<usize>,
    /// The station measures only these channels, comma-separated (`--channels h`: depth and
    /// no momentum); the runtime takes the others from its background.
    #[arg(long, value_name = "NAMES", value_delimiter = ',')]
    channels: Option<Vec<String>>,
}

pub fn demo(args: DemoArgs) -> Result<()> {
    use ccm_twin::twin::demo::{DemoOptions, run};
    let mut opts = DemoOptions::new(args.family);
    opts.p = args.p;
    opts.frames = args.frames;
    opts.frame_interval = Duration::from_millis(args.interval_ms);
    opts.broker = args.broker;
    opts.runtime = args.runtime;
    opts.sensors = args.sensors;
    opts.channels = args.channels;
    if let Some(m) = args.models {
        opts.models = m;
    }
    let rt = runtime()?;
    let s = rt.block_on(run(opts, &mut |line| eprintln!("  {line}")))?;
    eprintln!();
    eprintln!("summary ({:.1} s):", s.seconds);
    eprintln!(
        "  true regime p = {} (s(p) = {:+.2}); α read from the prefix {}; calibrated α for the true p {}",
        s.p,
        s.coordinate,
        s.alpha
            .map(|a| format!("{a:+.2}"))
            .unwrap_or_else(|| "none".into()),
        s.calibrated_alpha
            .map(|a| format!("{a:+.2}"))
            .unwrap_or_else(|| "none".into())
    );
    if let Some((ccm, anchor)) = s.mean_errors() {
        eprintln!(
            "  {} forecasts: mean error {ccm:.3} vs the family anchor's {anchor:.3} ({:+.0} %)",
            s.forecasts.len(),
            100.0 * (ccm - anchor) / anchor
        );
    }
    eprintln!("  {} alert message(s)", s.alerts.len());
    if let Some(first) = &s.first {
        write_demo_png(&s, first, &args.png)?;
        eprintln!("  wrote {}", args.png.display());
    }
    Ok(())
}

/// The last frame of the first forecast (first channel): truth, anchor and CCM side by side.
#[cfg(feature = "train")]
fn write_demo_png(
    s: &ccm_twin::twin::demo::DemoSummary,
    first: &ccm_twin::twin::demo::FirstForecast,
    path: &std::path::Path,
) -> Result<()> {
    let cells = s.n * s.n;
    let steps = first.truth.len() / s.frame_len;
    let last = |v: &[f32]| v[(steps - 1) * s.frame_len..][..cells].to_vec();
    let ccm = format!("CCM, α = {:+.2}", first.alpha);
    ccm_twin::eval::plot::field_png(
        path,
        &format!(
            "{} at p = {} (outside the trained range): forecast from frame {}, {steps} steps ahead",
            s.family, s.p, first.based_on_seq
        ),
        s.n,
        &last(&first.truth),
        &[
            ("family anchor", &last(&first.anchor)),
            (&ccm, &last(&first.ccm)),
        ],
    )?;
    Ok(())
}

#[cfg(not(feature = "train"))]
fn write_demo_png(
    _: &ccm_twin::twin::demo::DemoSummary,
    _: &ccm_twin::twin::demo::FirstForecast,
    path: &std::path::Path,
) -> Result<()> {
    eprintln!(
        "  no {}: the plots come with the `train` feature",
        path.display()
    );
    Ok(())
}

#[derive(clap::Subcommand)]
pub enum BundleCmd {
    /// Make an ed25519 signing key: the secret goes to a file (keep it off the stations), the
    /// public key is printed for the stations' `[updates] keys`.
    Keygen {
        /// File for the secret key (created; refused if it exists).
        #[arg(long)]
        out: PathBuf,
    },
    /// Pack a model bundle directory as a signed update package (a tar file).
    Pack {
        /// The bundle (`models/<family>`).
        #[arg(long)]
        models: PathBuf,
        /// Release number; a station installs only releases newer than its own.
        #[arg(long)]
        release: u64,
        /// The secret key file (`bundle keygen`).
        #[arg(long)]
        key: PathBuf,
        /// The package to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a package as a station would: layout, signature against the given public keys,
    /// checksums, family.
    Verify {
        /// The package.
        package: PathBuf,
        /// Trusted public keys (hex), one or more.
        #[arg(long = "key", required = true)]
        keys: Vec<String>,
        /// The station's family.
        #[arg(long)]
        family: Family,
    },
}

pub fn bundle(cmd: BundleCmd) -> Result<()> {
    use ccm_twin::twin::update;
    match cmd {
        BundleCmd::Keygen { out } => {
            let (secret, public) = update::keygen();
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&out)
                .with_context(|| format!("cannot create {} (it must not exist)", out.display()))?;
            writeln!(f, "{secret}").with_context(|| format!("cannot write {}", out.display()))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o600))?;
            }
            eprintln!("secret key -> {} (keep it off the stations)", out.display());
            println!("{public}");
        }
        BundleCmd::Pack {
            models,
            release,
            key,
            out,
        } => {
            let text = std::fs::read_to_string(&key)
                .with_context(|| format!("cannot read the key {}", key.display()))?;
            let package = update::pack(&models, release, &update::signing_key(&text)?)?;
            std::fs::write(&out, &package)
                .with_context(|| format!("cannot write {}", out.display()))?;
            eprintln!(
                "{} release {release}: {} bytes -> {}",
                models.display(),
                package.len(),
                out.display()
            );
        }
        BundleCmd::Verify {
            package,
            keys,
            family,
        } => {
            let bytes = std::fs::read(&package)
                .with_context(|| format!("cannot read {}", package.display()))?;
            let v = update::verify(
                &bytes,
                &update::TrustedKeys::parse(&keys)?,
                family,
                update::DEFAULT_MAX_BYTES,
            )?;
            println!(
                "{}: {} release {}, signed by {}",
                package.display(),
                v.family,
                v.release,
                v.key
            );
        }
    }
    Ok(())
}
