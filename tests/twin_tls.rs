//! TLS to a real broker: Mosquitto with a TLS listener and certificates made at test time.
//! The link trusts only the CA given; a broker signed by another CA, or a plain connection to
//! the TLS port, is refused with an explanation; and `serve` runs a station end to end over
//! TLS with a password and a client certificate.

mod mqtt_support;

use std::path::Path;
use std::time::Duration;

use ccm_twin::twin::mqtt::{Credentials, LinkOptions, MqttError, MqttLink, TlsFiles};
use ccm_twin::twin::serve::{ServeEvent, StationConfig, TlsConfig};
use firmware_bridge::topic::{QoS, Topic};
use mqtt_support::{Mosquitto, pki::Pki};

const WAIT: Duration = Duration::from_secs(10);

fn tls_files(ca: &Path, client: Option<(&Path, &Path)>) -> TlsFiles {
    TlsFiles {
        ca_file: ca.to_path_buf(),
        client_cert_file: client.map(|c| c.0.to_path_buf()),
        client_key_file: client.map(|c| c.1.to_path_buf()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_over_tls_delivers_and_a_wrong_ca_or_plain_tcp_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let broker = Mosquitto::start_with_tls(pki.listener(false), None);
    let with = |client: &str, tls: Option<TlsFiles>| {
        let mut opts = LinkOptions::new(broker.addr().into(), client);
        opts.retry_min = Duration::from_millis(50);
        opts.retry_max = Duration::from_millis(200);
        opts.tls = tls.map(|t| t.client_config().unwrap());
        opts
    };
    let mut sub_opts = with("tls-sub", Some(tls_files(&pki.ca, None)));
    sub_opts.subscriptions = vec![("ccm/st-tls/status".into(), QoS::AtLeastOnce)];
    let (sub, mut rx) = MqttLink::start_subscriber(sub_opts).unwrap();
    assert!(sub.wait_connected(WAIT).await, "{:?}", sub.stats());
    tokio::time::sleep(Duration::from_millis(200)).await; // the subscription
    let publisher = MqttLink::start(with("tls-pub", Some(tls_files(&pki.ca, None)))).unwrap();
    publisher
        .publish_to(Topic::Status, "st-tls", b"{\"over\":\"tls\"}".to_vec())
        .unwrap();
    publisher.flush(WAIT).await.unwrap();
    let got = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.payload, b"{\"over\":\"tls\"}");

    // a broker certificate from a CA not trusted, and plain TCP to the TLS listener
    let stranger =
        MqttLink::start(with("tls-wrong-ca", Some(tls_files(&pki.other_ca, None)))).unwrap();
    let plain = MqttLink::start(with("tls-plain", None)).unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let s = stranger.stats();
    assert!(
        !s.connected && s.connections == 0 && s.failed_attempts >= 2,
        "{s:?}"
    );
    let why = s.last_error.unwrap_or_default();
    assert!(
        why.contains("TLS handshake") && why.contains("ca_file"),
        "{why}"
    );
    let s = plain.stats();
    assert!(
        !s.connected && s.connections == 0,
        "plain TCP got in: {s:?}"
    );
    for link in [&sub, &publisher, &stranger, &plain] {
        link.close().await;
    }
}

#[test]
fn unusable_tls_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let err = |t: TlsFiles| match t.client_config() {
        Err(e @ MqttError::Tls { .. }) => e.to_string(),
        other => panic!("{other:?}"),
    };
    let missing = dir.path().join("nope.pem");
    let e = err(tls_files(&missing, None));
    assert!(e.contains("nope.pem"), "{e}");
    let e = err(tls_files(&pki.server_key, None));
    assert!(
        e.contains("server.key") && e.contains("no PEM certificate"),
        "{e}"
    );
    // a key that is not the certificate's
    let e = err(tls_files(
        &pki.ca,
        Some((&pki.client_cert, &pki.server_key)),
    ));
    assert!(e.contains("do not go together"), "{e}");
    let half = TlsFiles {
        client_key_file: None,
        ..tls_files(&pki.ca, Some((&pki.client_cert, &pki.client_key)))
    };
    assert!(err(half).contains("needs its key"));
    assert!(
        tls_files(&pki.ca, Some((&pki.client_cert, &pki.client_key)))
            .client_config()
            .is_ok()
    );
}

/// The runtime behind a broker that wants TLS, a client certificate and a password: the config's
/// `[broker.tls]` (paths relative to the file) and credentials get it in, and a forecast comes
/// out to a TLS subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_over_tls_with_a_client_certificate_and_a_password() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let broker = Mosquitto::start_with_tls(pki.listener(true), Some(("st-tls", "s3cret-tls")));
    std::fs::write(dir.path().join("mqtt.pass"), "s3cret-tls\n").unwrap();
    let models = std::fs::canonicalize("models/dam_break").unwrap();
    let config = dir.path().join("station.toml");
    std::fs::write(
        &config,
        format!(
            "[broker]\nhost = \"127.0.0.1\"\nport = {}\nusername = \"st-tls\"\n\
             password_file = \"mqtt.pass\"\n\n[broker.tls]\nca_file = \"ca.pem\"\n\
             client_cert_file = \"client.pem\"\nclient_key_file = \"client.key\"\n\n\
             [station]\nid = \"st-tls\"\nfamily = \"dam_break\"\nmodels = \"{}\"\n",
            broker.port(),
            models.display()
        ),
    )
    .unwrap();
    let cfg = StationConfig::load(&config).unwrap();
    assert_eq!(
        cfg.broker.tls,
        Some(TlsConfig {
            ca_file: dir.path().join("ca.pem"),
            client_cert_file: Some(dir.path().join("client.pem")),
            client_key_file: Some(dir.path().join("client.key")),
        })
    );
    let (stop_tx, mut ev_rx, server) = mqtt_support::spawn_serve(cfg);

    // the station and a subscriber, each over TLS with the client certificate and the password
    let client = |id: &str| {
        let mut o = LinkOptions::new(broker.addr().into(), id);
        o.tls = Some(
            tls_files(&pki.ca, Some((&pki.client_cert, &pki.client_key)))
                .client_config()
                .unwrap(),
        );
        o.credentials = Some(Credentials {
            username: "st-tls".into(),
            password: "s3cret-tls".into(),
        });
        o
    };
    let mut sub_opts = client("tls-observer");
    sub_opts.subscriptions = vec![("ccm/st-tls/forecast".into(), QoS::AtLeastOnce)];
    let (observer, mut forecasts) = MqttLink::start_subscriber(sub_opts).unwrap();
    let station = MqttLink::start(client("tls-station")).unwrap();
    assert!(
        observer.wait_connected(WAIT).await,
        "{:?}",
        observer.stats()
    );
    assert!(station.wait_connected(WAIT).await, "{:?}", station.stats());
    tokio::time::sleep(Duration::from_millis(500)).await; // the runtime subscribes
    let family = ccm_twin::config::FamilyConfig::builtin(ccm_twin::config::Family::DamBreak);
    let mut sim = ccm_twin::twin::simulator::StationSimulator::new(
        &family,
        ccm_twin::twin::simulator::SimulatorOptions::new("st-tls", 0.0125, 3),
    )
    .unwrap();
    for _ in 0..family.time.prefix {
        let frame = sim.next_frame().unwrap();
        station
            .publish(
                Topic::Frames.for_station("st-tls").unwrap(),
                QoS::AtLeastOnce,
                false,
                frame.encode().unwrap(),
            )
            .unwrap();
    }
    station.flush(WAIT).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(60), forecasts.recv())
        .await
        .expect("a forecast within a minute")
        .unwrap();
    let f = firmware_bridge::decode_forecast(&got.payload).unwrap();
    assert_eq!((f.station, f.based_on_seq), ("st-tls", 3));
    let mut rejected = Vec::new();
    while let Ok(ev) = ev_rx.try_recv() {
        if let ServeEvent::Rejected { reason } = ev {
            rejected.push(reason);
        }
    }
    assert!(rejected.is_empty(), "{rejected:?}");
    let _ = stop_tx.send(());
    let summary = server.await.unwrap().unwrap();
    assert_eq!(summary.counters.forecasts_published, 1);
    assert_eq!(
        summary.counters.leads_published, 1,
        "its first step went out first"
    );
    for link in [&observer, &station] {
        link.close().await;
    }
}
