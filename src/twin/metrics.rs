//! A Prometheus-style text endpoint (`GET /metrics`) with what the retained status says: the
//! counters (frames received and rejected by reason, frames lost, forecasts and alerts published)
//! and the gauges of the last cycle (α, its confidence, the prefix fit error, stage timings).
//!
//! A plain HTTP/1.1 responder on tokio (one request per connection, requests capped at 8 KiB):
//! enough for a scraper, with no web framework in the edge build.

use std::fmt::Write as _;
use std::net::SocketAddr;

use firmware_bridge::dashboard::{StationState, StatusMessage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The endpoint: the latest rendered page, served by a background task until dropped.
#[derive(Debug)]
pub struct MetricsServer {
    page: watch::Sender<String>,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// Listens on `listen` (`host:port`; port 0 picks a free one).
    pub async fn bind(listen: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (page, rx) = watch::channel(String::new());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let rx = rx.clone();
                tokio::spawn(async move {
                    let mut request = Vec::with_capacity(512);
                    let mut buf = [0u8; 1024];
                    // read the request head (bounded), then answer and close
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let line = request.split(|&b| b == b'\r').next().unwrap_or_default();
                    let ok = line.starts_with(b"GET /metrics ") || line == b"GET /metrics";
                    let (status, body) = if ok {
                        ("200 OK", rx.borrow().clone())
                    } else {
                        (
                            "404 Not Found",
                            "only GET /metrics is served here\n".to_string(),
                        )
                    };
                    let head = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(head.as_bytes()).await;
                    let _ = stream.write_all(body.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Ok(MetricsServer { page, addr, task })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `status` from now on.
    pub fn update(&self, status: &StatusMessage) {
        self.page.send_replace(render(status));
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `status` in the Prometheus text format (version 0.0.4).
pub fn render(status: &StatusMessage) -> String {
    let station = status.station.replace(['\\', '"', '\n'], "_");
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP ccm_twin_{name} {help}");
        let _ = writeln!(out, "# TYPE ccm_twin_{name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(
                out,
                "ccm_twin_{name}{{station=\"{station}\"{labels}}} {value}"
            );
        }
    };
    let c = &status.counters;
    let one = |v: f64| vec![(String::new(), v)];
    metric(
        "online",
        "gauge",
        "1 while the runtime serves the station, 0 once it stopped.",
        &one(f64::from(u8::from(status.state == StationState::Online))),
    );
    metric(
        "frames_received_total",
        "counter",
        "Frames received.",
        &one(c.frames_received as f64),
    );
    let rejected: Vec<(String, f64)> = c
        .frames_rejected
        .iter()
        .map(|(reason, n)| (format!(",reason=\"{reason}\""), *n as f64))
        .collect();
    metric(
        "frames_rejected_total",
        "counter",
        "Frames rejected, by reason.",
        &rejected,
    );
    metric(
        "frames_skipped_total",
        "counter",
        "Frames between model steps (the station samples faster than the model steps).",
        &one(c.frames_skipped as f64),
    );
    metric(
        "frames_lost_total",
        "counter",
        "Chunked frames dropped incomplete.",
        &one(c.frames_lost as f64),
    );
    metric(
        "forecasts_published_total",
        "counter",
        "Forecasts published.",
        &one(c.forecasts_published as f64),
    );
    metric(
        "leads_published_total",
        "counter",
        "Forecasts' first steps published ahead of them on the lead topic.",
        &one(c.leads_published as f64),
    );
    metric(
        "alerts_published_total",
        "counter",
        "Alerts published, all-clears included.",
        &one(c.alerts_published as f64),
    );
    let gauges: [(&str, &str, Option<f64>); 8] = [
        ("alpha", "The CCM coordinate in use.", status.alpha),
        (
            "alpha_confidence",
            "How sharply the readout determined alpha (0 to 1).",
            status.alpha_confidence,
        ),
        (
            "prefix_fit_error",
            "Relative L2 error of the merge on the observed prefix.",
            status.prefix_fit_error,
        ),
        (
            "readout_ms",
            "Duration of the last prefix readout, ms.",
            status.timings.readout_ms,
        ),
        (
            "merge_ms",
            "Duration of the last merge and deployment, ms.",
            status.timings.merge_ms,
        ),
        (
            "rollout_ms",
            "Duration of the last rollout, ms.",
            status.timings.rollout_ms,
        ),
        (
            "frame_to_forecast_ms",
            "From a frame's arrival to its forecast's publication, ms.",
            status.timings.frame_to_forecast_ms,
        ),
        (
            "frame_to_lead_ms",
            "From a frame's arrival to its forecast's first step's publication, ms.",
            status.timings.frame_to_lead_ms,
        ),
    ];
    for (name, help, value) in gauges {
        if let Some(v) = value {
            metric(name, "gauge", help, &one(v));
        }
    }
    out
}
