//! The MQTT link against real brokers: frames larger than rumqttc's 10 KiB default pass both
//! brokers; a broker that is down at start is reported and reached once it is up; oversized
//! messages are refused before they can break a connection.

mod mqtt_support;

use std::net::SocketAddr;
use std::time::Duration;

use ccm_twin::twin::mqtt::{LinkOptions, MqttError, MqttLink};
use firmware_bridge::topic::{QoS, Topic};
use mqtt_support::{Mosquitto, Subscriber};

const WAIT: Duration = Duration::from_secs(5);

fn link_to(addr: SocketAddr, client_id: &str) -> MqttLink {
    let mut opts = LinkOptions::new(addr.into(), client_id);
    opts.retry_min = Duration::from_millis(50);
    opts.retry_max = Duration::from_millis(200);
    MqttLink::start(opts).unwrap()
}

/// A 64×64×3 f32 frame is 48 KiB: it needs `set_max_packet_size` on both sides.
fn big_payload(tag: u8) -> Vec<u8> {
    (0..64 * 64 * 3 * 4)
        .map(|i| (i % 251) as u8 ^ tag)
        .collect()
}

async fn large_messages_arrive(addr: SocketAddr, name: &str) {
    let mut sub = Subscriber::connect(addr, "ccm/+/frames", None).await;
    let link = link_to(addr, name);
    for tag in 0..3 {
        link.publish_to(Topic::Frames, "st-big", big_payload(tag))
            .unwrap();
    }
    link.flush(WAIT).await.unwrap();
    let msgs = sub.take(3, WAIT).await;
    for (tag, m) in msgs.iter().enumerate() {
        assert_eq!(m.topic, "ccm/st-big/frames");
        assert!(m.payload == big_payload(tag as u8), "message {tag} differs");
    }
    let stats = link.stats();
    assert_eq!(
        (stats.delivered, stats.queued, stats.connections),
        (3, 0, 1)
    );
    link.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_larger_than_10_kib_pass_mosquitto() {
    let broker = Mosquitto::start();
    large_messages_arrive(broker.addr(), "big-mosquitto").await;
}

#[cfg(feature = "embedded-broker")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_larger_than_10_kib_pass_the_embedded_broker() {
    let broker = ccm_twin::twin::broker::EmbeddedBroker::start(0).unwrap();
    large_messages_arrive(broker.addr(), "big-embedded").await;
}

#[cfg(feature = "embedded-broker")]
#[test]
fn embedded_brokers_get_ports_of_their_own_and_a_taken_port_is_explained() {
    use ccm_twin::twin::broker::EmbeddedBroker;

    let a = EmbeddedBroker::start(0).unwrap();
    let b = EmbeddedBroker::start(0).unwrap();
    assert_ne!(a.port(), b.port());
    let err = EmbeddedBroker::start(a.port()).unwrap_err().to_string();
    assert!(
        err.contains(&format!("could not listen on 127.0.0.1:{}", a.port()))
            && err.contains("is another broker running there?"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_is_down_at_start_is_reached_once_it_is_up() {
    let mut broker = Mosquitto::start_persistent();
    let mut sub = Subscriber::connect(broker.addr(), "ccm/+/status", Some("late-broker-sub")).await;
    broker.stop();

    let link = link_to(broker.addr(), "late-broker");
    for i in 0..3 {
        link.publish_to(
            Topic::Status,
            "st-late",
            format!("{{\"n\":{i}}}").into_bytes(),
        )
        .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = link.stats();
    assert!(
        !waiting.connected && waiting.failed_attempts >= 1,
        "{waiting:?}"
    );
    assert_eq!(waiting.queued, 3);

    broker.restart();
    link.flush(WAIT).await.unwrap();
    let msgs = sub.take(3, WAIT).await;
    let bodies: Vec<_> = msgs
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    assert_eq!(bodies, [r#"{"n":0}"#, r#"{"n":1}"#, r#"{"n":2}"#]);
    link.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_over_the_packet_limit_are_refused_with_advice() {
    let mut opts = LinkOptions::new("127.0.0.1:1".parse().unwrap(), "too-large");
    opts.max_packet_size = 1000;
    let link = MqttLink::start(opts).unwrap();
    let err = link
        .publish("ccm/x/frames", QoS::AtLeastOnce, false, vec![0; 2000])
        .unwrap_err();
    assert!(matches!(
        err,
        MqttError::TooLarge {
            len: 2000,
            max: 1000,
            ..
        }
    ));
    assert!(
        err.to_string().contains("send the frame in chunks"),
        "{err}"
    );
    let err = link
        .publish_to(Topic::Frames, "bad/station", vec![1])
        .unwrap_err();
    assert!(matches!(err, MqttError::BadStation { .. }), "{err}");
    assert_eq!(link.stats().accepted, 0);
    let flushed = link.flush(Duration::from_millis(10)).await;
    assert!(
        flushed.is_ok(),
        "nothing was accepted, so nothing is pending"
    );
    link.close().await;
    assert!(matches!(
        link.publish("t", QoS::AtMostOnce, false, vec![]),
        Err(MqttError::Closed)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribing_link_receives_and_subscribes_again_after_a_broker_restart() {
    let mut broker = Mosquitto::start();
    let mut opts = LinkOptions::new(broker.addr().into(), "runtime-sub");
    opts.retry_min = Duration::from_millis(50);
    opts.retry_max = Duration::from_millis(200);
    opts.subscriptions = vec![(
        Topic::Status.filter_all_stations().to_string(),
        QoS::AtLeastOnce,
    )];
    let (sub, mut rx) = MqttLink::start_subscriber(opts).unwrap();
    let publisher = link_to(broker.addr(), "status-pub");
    assert!(sub.wait_connected(WAIT).await && publisher.wait_connected(WAIT).await);

    // Status messages are retained: they arrive whether or not the subscription is active yet.
    publisher
        .publish_to(Topic::Status, "st-1", b"one".to_vec())
        .unwrap();
    let first = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (first.topic.as_str(), first.payload.as_slice()),
        ("ccm/st-1/status", &b"one"[..])
    );

    broker.restart(); // without persistence: the subscription must be renewed by the link
    let deadline = std::time::Instant::now() + WAIT;
    while sub.stats().connections < 2 || publisher.stats().connections < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no reconnect: {:?}",
            sub.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(sub.wait_connected(WAIT).await && publisher.wait_connected(WAIT).await);
    publisher
        .publish_to(Topic::Status, "st-1", b"two".to_vec())
        .unwrap();
    let second = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.payload, b"two");
    let stats = sub.stats();
    assert_eq!((stats.received, stats.connections), (2, 2), "{stats:?}");
    publisher.close().await;
    sub.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_in_flight_when_the_broker_restarts_are_resent_not_lost() {
    let mut broker = Mosquitto::start_persistent();
    let mut sub = Subscriber::connect(broker.addr(), "ccm/+/frames", Some("in-flight-sub")).await;
    let n = 1500_u32;
    let mut opts = LinkOptions::new(broker.addr().into(), "in-flight-pub");
    opts.buffer = n as usize; // room for everything: this test is about resending, not dropping
    opts.retry_min = Duration::from_millis(50);
    let link = MqttLink::start(opts).unwrap();
    assert!(link.wait_connected(WAIT).await);
    let mut restarted_with = None;
    for i in 0..n {
        let mut payload = vec![0_u8; 8 * 1024];
        payload[..4].copy_from_slice(&i.to_le_bytes());
        link.publish_to(Topic::Frames, "st-f", payload).unwrap();
        if i == n / 2 {
            restarted_with = Some(link.stats().queued);
            broker.restart();
        }
    }
    link.flush(Duration::from_secs(20)).await.unwrap();
    let stats = link.stats();
    assert!(
        restarted_with.unwrap() > 0 && stats.requeued > 0,
        "nothing was in flight at the restart: {stats:?}"
    );
    assert_eq!(
        (stats.delivered, stats.connections),
        (u64::from(n), 2),
        "{stats:?}"
    );
    assert_eq!(stats.dropped_oldest + stats.dropped_undeliverable, 0);

    let mut seen = vec![false; n as usize];
    let mut distinct = 0;
    while distinct < n {
        let Some(m) = sub.recv(WAIT).await else {
            let missing: Vec<_> = (0..n).filter(|&i| !seen[i as usize]).take(10).collect();
            panic!("{distinct} of {n} arrived; missing e.g. {missing:?}; {stats:?}");
        };
        let i = u32::from_le_bytes(m.payload[..4].try_into().unwrap());
        if !std::mem::replace(&mut seen[i as usize], true) {
            distinct += 1;
        }
    }
}

/// A broker that admits one user: the link with its credentials delivers; a wrong password and
/// no credentials are refused, keep being retried, and the link says why in words that point
/// at the credentials; the password never shows in the options' debug output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_open_a_password_protected_broker_and_refusals_are_explained() {
    use ccm_twin::twin::mqtt::Credentials;
    let broker = Mosquitto::start_with_password("station-7", "t0p-s3cret");
    let with = |client: &str, credentials: Option<(&str, &str)>| {
        let mut opts = LinkOptions::new(broker.addr().into(), client);
        opts.retry_min = Duration::from_millis(50);
        opts.retry_max = Duration::from_millis(200);
        opts.credentials = credentials.map(|(u, p)| Credentials {
            username: u.into(),
            password: p.into(),
        });
        opts
    };
    let opts = with("cred-ok", Some(("station-7", "t0p-s3cret")));
    let shown = format!("{opts:?}");
    assert!(
        shown.contains("station-7") && !shown.contains("t0p-s3cret"),
        "{shown}"
    );
    let good = MqttLink::start(opts).unwrap();
    good.publish_to(Topic::Status, "st-7", b"{}".to_vec())
        .unwrap();
    good.flush(WAIT).await.unwrap();
    let stats = good.stats();
    assert_eq!((stats.connections, stats.delivered), (1, 1), "{stats:?}");
    good.close().await;

    let wrong = MqttLink::start(with("cred-bad", Some(("station-7", "guess")))).unwrap();
    let anonymous = MqttLink::start(with("cred-none", None)).unwrap();
    for link in [&wrong, &anonymous] {
        link.publish_to(Topic::Status, "st-7", b"{}".to_vec())
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    for (name, link) in [("wrong password", &wrong), ("no credentials", &anonymous)] {
        let s = link.stats();
        assert!(
            !s.connected && s.connections == 0 && s.failed_attempts >= 2,
            "{name}: {s:?}"
        );
        assert_eq!(s.queued, 1, "{name}: the message waits");
        let why = s.last_error.unwrap_or_default();
        assert!(why.contains("credentials"), "{name}: {why}");
    }
    wrong.close().await;
    anonymous.close().await;
}
