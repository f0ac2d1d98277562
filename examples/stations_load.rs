//! How many stations one process serves: N dam-break runtimes (`serve`, the shipped bundle, the
//! native runtime, one readout thread each) in one process behind one broker, each fed by its
//! own simulated station at a fixed frame interval, for a while. Reports per N the forecasts
//! made against the frames that could have had one, the frames shed, and the frame-to-forecast
//! latency percentiles: a process keeps up while nothing is shed and the latency stays below
//! the frame interval.
//!
//! ```text
//! cargo run --release --example stations_load -- 500 30 1 2 4 8   (interval ms, seconds, N...)
//! ```
//!
//! The broker is the embedded one unless `CCM_TWIN_BROKER=host:port` names another.

use std::path::Path;
use std::time::Duration;

use ccm_twin::config::{Family, FamilyConfig};
use ccm_twin::twin::mqtt::{BrokerAddress, LinkOptions, MqttLink};
use ccm_twin::twin::serve::{ServeEvent, StationConfig, serve};
use ccm_twin::twin::simulator::{SimulatorOptions, StationSimulator};
use firmware_bridge::topic::Topic;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(
        args.len() >= 3,
        "usage: stations_load <frame interval ms> <seconds> <N stations>..."
    );
    let (interval, seconds) = (Duration::from_millis(args[0]), args[1]);
    let (broker, _embedded) = match std::env::var("CCM_TWIN_BROKER") {
        Ok(a) => (a.parse::<BrokerAddress>()?, None),
        Err(_) => {
            let e = ccm_twin::twin::broker::EmbeddedBroker::start(0)?;
            (BrokerAddress::new("127.0.0.1", e.port()), Some(e))
        }
    };
    println!(
        "{:>3} {:>9} {:>9} {:>6} {:>8} {:>8} {:>8}  (frame every {} ms, {seconds} s)",
        "N",
        "forecasts",
        "possible",
        "shed",
        "p50 ms",
        "p95 ms",
        "max ms",
        interval.as_millis()
    );
    for &n in &args[2..] {
        let frames = (seconds * 1000 / args[0].max(1)) as u32;
        let mut stops = Vec::new();
        let mut servers = Vec::new();
        let (ev_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..n {
            let mut cfg = StationConfig::load(Path::new("configs/station.toml"))?;
            cfg.broker.host = broker.host.clone();
            cfg.broker.port = broker.port;
            cfg.station.id = format!("load-{n}-{i}");
            cfg.station.readout_threads = Some(1);
            cfg.alerts.clear();
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let tx = ev_tx.clone();
            servers.push(tokio::spawn(async move {
                serve(
                    &cfg,
                    async {
                        let _ = stop_rx.await;
                    },
                    Some(tx),
                )
                .await
            }));
            stops.push(stop_tx);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let family = FamilyConfig::builtin(Family::DamBreak);
        let mut stations = Vec::new();
        for i in 0..n {
            let id = format!("load-{n}-{i}");
            let link = MqttLink::start(LinkOptions::new(broker.clone(), format!("{id}-sim")))?;
            let sim = StationSimulator::new(&family, SimulatorOptions::new(&id, 0.0125, i))?;
            stations.push((id, link, sim));
        }
        let mut next = tokio::time::Instant::now();
        let mut latencies = Vec::new();
        let mut forecasts = 0u64;
        for _ in 0..frames {
            tokio::time::sleep_until(next).await;
            next += interval;
            for (id, link, sim) in &mut stations {
                link.publish_to(Topic::Frames, id, sim.next_frame()?.encode()?)?;
            }
            while let Ok(ev) = events.try_recv() {
                if let ServeEvent::Forecast { total_ms, .. } = ev {
                    forecasts += 1;
                    latencies.push(total_ms);
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        while let Ok(ev) = events.try_recv() {
            if let ServeEvent::Forecast { total_ms, .. } = ev {
                forecasts += 1;
                latencies.push(total_ms);
            }
        }
        for s in stops {
            let _ = s.send(());
        }
        let mut shed = 0;
        for s in servers {
            let summary = s.await??;
            shed += summary
                .counters
                .frames_rejected
                .get("shed_backlog")
                .copied()
                .unwrap_or(0);
        }
        for (_, link, _) in &stations {
            link.close().await;
        }
        latencies.sort_by(f64::total_cmp);
        let pct = |q: f64| {
            latencies
                .get(((latencies.len().max(1) - 1) as f64 * q).round() as usize)
                .copied()
                .unwrap_or(f64::NAN)
        };
        let possible = n * u64::from(frames.saturating_sub(family.time.prefix as u32 - 1));
        println!(
            "{n:>3} {forecasts:>9} {possible:>9} {shed:>6} {:>8.0} {:>8.0} {:>8.0}",
            pct(0.5),
            pct(0.95),
            pct(1.0)
        );
    }
    Ok(())
}
