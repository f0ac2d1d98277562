//! Signed model updates on the shipped dam-break bundle: a package signed by a trusted key
//! installs atomically under the data folder; unsigned, tampered, foreign-key, wrong-family,
//! oversized and rolled-back packages, and archives with `../`, absolute paths, links,
//! directories or unknown files, are each refused before anything is written; a signed bundle
//! whose experts do not share a graph is refused at install and the installed one stays current.

use std::path::{Path, PathBuf};

use ccm_twin::config::Family;
use ccm_twin::twin::update::{
    self, DEFAULT_MAX_BYTES, SignatureFile, TrustedKeys, UpdateError, Verified, signed_message,
};
use ed25519_dalek::{Signer, SigningKey};

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/dam_break")
}

fn key() -> (SigningKey, TrustedKeys) {
    let (secret, public) = update::keygen();
    (
        update::signing_key(&secret).unwrap(),
        TrustedKeys::parse(&[public]).unwrap(),
    )
}

/// The entries of a package, in order.
fn entries(package: &[u8]) -> Vec<(String, Vec<u8>)> {
    use std::io::Read;
    let mut a = tar::Archive::new(package);
    a.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut b = Vec::new();
            e.read_to_end(&mut b).unwrap();
            (name, b)
        })
        .collect()
}

/// A tar of `entries`, names written raw (so `../x` and `/x` go in as given), each with its type.
fn archive(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, bytes) in entries {
        let mut h = tar::Header::new_gnu();
        let raw = &mut h.as_gnu_mut().unwrap().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(*kind);
        if *kind == tar::EntryType::Symlink {
            h.set_link_name("/etc/passwd").unwrap();
        }
        h.set_cksum();
        b.append(&h, *bytes).unwrap();
    }
    b.into_inner().unwrap()
}

fn regular(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let list: Vec<(&str, tar::EntryType, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), tar::EntryType::Regular, b.as_slice()))
        .collect();
    archive(&list)
}

/// Signs `files` (manifest and experts, as given) as `release` of `family` with `key`.
fn sign(files: &[(String, Vec<u8>)], family: Family, release: u64, key: &SigningKey) -> Vec<u8> {
    let manifest = &files.iter().find(|f| f.0 == "manifest.json").unwrap().1;
    let sha = ccm_twin::fno::expert::sha256_hex(manifest);
    let sig = SignatureFile {
        format: 1,
        family,
        release,
        manifest_sha256: sha.clone(),
        public_key: key
            .verifying_key()
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        signature: key
            .sign(&signed_message(family, release, &sha))
            .to_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    };
    let mut all = files.to_vec();
    all.push(("signature.json".into(), serde_json::to_vec(&sig).unwrap()));
    regular(&all)
}

fn verify(package: &[u8], keys: &TrustedKeys) -> Result<Verified, UpdateError> {
    update::verify(package, keys, Family::DamBreak, DEFAULT_MAX_BYTES)
}

/// Every path under `dir`, relative.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_signed_bundle_installs_and_a_rollback_is_refused() {
    let (key, keys) = key();
    let data = tempfile::tempdir().unwrap();
    let package = update::pack(&shipped(), 2, &key).unwrap();
    let v = verify(&package, &keys).unwrap();
    assert_eq!((v.family, v.release), (Family::DamBreak, 2));
    let (installed, models) = update::install(data.path(), &v).unwrap();
    assert_eq!(installed.release, 2);
    assert_eq!(models.manifest.family, Family::DamBreak);
    assert_eq!(
        update::current(data.path(), Family::DamBreak).unwrap(),
        Some(installed.clone())
    );
    // the installed files are the shipped ones, and nothing else was written
    for f in ["anchor.onnx", "low.onnx", "high.onnx", "manifest.json"] {
        assert_eq!(
            std::fs::read(installed.path(data.path()).join(f)).unwrap(),
            std::fs::read(shipped().join(f)).unwrap(),
            "{f}"
        );
    }
    assert_eq!(
        tree(data.path()),
        [
            "bundles",
            "bundles/dam_break-r2",
            "bundles/dam_break-r2/anchor.onnx",
            "bundles/dam_break-r2/high.onnx",
            "bundles/dam_break-r2/low.onnx",
            "bundles/dam_break-r2/manifest.json",
            "bundles/dam_break-r2/signature.json",
            "dam_break.current.json",
        ]
    );
    // the same release again, and an older one: refused, release 2 stays
    for release in [2, 1] {
        let old = update::pack(&shipped(), release, &key).unwrap();
        let v = verify(&old, &keys).unwrap();
        match update::install(data.path(), &v) {
            Err(UpdateError::Rollback {
                offered,
                installed: 2,
            }) => assert_eq!(offered, release),
            other => panic!("release {release}: {other:?}"),
        }
    }
    let newer = verify(&update::pack(&shipped(), 3, &key).unwrap(), &keys).unwrap();
    let (installed, _) = update::install(data.path(), &newer).unwrap();
    assert_eq!(installed.release, 3);
    assert_eq!(
        update::current(data.path(), Family::DamBreak)
            .unwrap()
            .unwrap()
            .release,
        3
    );
}

#[test]
fn unsigned_tampered_and_foreign_packages_are_refused() {
    let (key, keys) = key();
    let package = update::pack(&shipped(), 5, &key).unwrap();
    let files = entries(&package);
    let without = |name: &str| -> Vec<(String, Vec<u8>)> {
        files.iter().filter(|f| f.0 != name).cloned().collect()
    };
    let e = verify(&regular(&without("signature.json")), &keys).unwrap_err();
    assert!(matches!(e, UpdateError::Missing("signature.json")), "{e}");
    let e = verify(&regular(&without("low.onnx")), &keys).unwrap_err();
    assert!(matches!(e, UpdateError::Missing("low.onnx")), "{e}");

    // a byte of an expert changed after signing
    let mut changed = files.clone();
    let anchor = changed.iter_mut().find(|f| f.0 == "anchor.onnx").unwrap();
    let last = anchor.1.len() - 1;
    anchor.1[last] ^= 1;
    let e = verify(&regular(&changed), &keys).unwrap_err();
    assert!(
        matches!(e, UpdateError::Tampered(ref m) if m.contains("anchor.onnx")),
        "{e}"
    );
    // the manifest changed after signing
    let mut changed = files.clone();
    changed
        .iter_mut()
        .find(|f| f.0 == "manifest.json")
        .unwrap()
        .1
        .push(b' ');
    let e = verify(&regular(&changed), &keys).unwrap_err();
    assert!(matches!(e, UpdateError::Tampered(_)), "{e}");
    // the release raised in the signature file without signing it again
    let mut changed = files.clone();
    let sig = changed
        .iter_mut()
        .find(|f| f.0 == "signature.json")
        .unwrap();
    let mut s: SignatureFile = serde_json::from_slice(&sig.1).unwrap();
    s.release = 99;
    sig.1 = serde_json::to_vec(&s).unwrap();
    let e = verify(&regular(&changed), &keys).unwrap_err();
    assert!(matches!(e, UpdateError::BadSignature), "{e}");
    // signed by a key the station does not trust
    let (other, _) = self::key();
    let e = verify(&update::pack(&shipped(), 5, &other).unwrap(), &keys).unwrap_err();
    assert!(matches!(e, UpdateError::UnknownKey(_)), "{e}");
    assert!(e.to_string().contains("updates.keys"), "{e}");
    // another family's station
    let e = update::verify(&package, &keys, Family::NavierStokes, DEFAULT_MAX_BYTES).unwrap_err();
    assert!(matches!(e, UpdateError::WrongFamily { .. }), "{e}");
    // over the size limit
    let e = update::verify(&package, &keys, Family::DamBreak, 1 << 20).unwrap_err();
    assert!(matches!(e, UpdateError::TooLarge { .. }), "{e}");
    // not an archive at all
    let e = verify(b"random bytes, not a tar archive at all", &keys).unwrap_err();
    assert!(
        matches!(e, UpdateError::Unreadable(_) | UpdateError::Missing(_)),
        "{e}"
    );
    // bad trusted keys are named
    let e = TrustedKeys::parse(&["abc".into()]).unwrap_err();
    assert!(e.to_string().contains("updates.keys[0]"), "{e}");
    assert!(TrustedKeys::parse(&[]).is_err());
}

#[test]
fn archive_entries_that_could_escape_the_data_folder_are_refused() {
    use tar::EntryType::{Directory, Regular, Symlink};
    let (key, keys) = key();
    let files = entries(&update::pack(&shipped(), 7, &key).unwrap());
    let with = |extra: (&str, tar::EntryType, &[u8])| {
        let mut list: Vec<(&str, tar::EntryType, &[u8])> = files
            .iter()
            .map(|(n, b)| (n.as_str(), Regular, b.as_slice()))
            .collect();
        list.insert(0, extra);
        archive(&list)
    };
    for (what, extra) in [
        ("parent", ("../evil.onnx", Regular, b"x".as_slice())),
        ("nested parent", ("bundles/../../evil", Regular, b"x")),
        ("absolute", ("/tmp/evil.onnx", Regular, b"x")),
        ("directory path", ("sub/anchor.onnx", Regular, b"x")),
        ("symlink", ("anchor.onnx", Symlink, b"")),
        ("directory", ("bundles", Directory, b"")),
        (
            "unknown file",
            ("run.sh", Regular, b"#!/bin/sh\nrm -rf /\n"),
        ),
        ("duplicate", ("manifest.json", Regular, b"{}")),
    ] {
        let e = verify(&with(extra), &keys).unwrap_err();
        assert!(matches!(e, UpdateError::BadEntry { .. }), "{what}: {e}");
    }
}

#[test]
fn a_signed_bundle_whose_experts_do_not_share_a_graph_keeps_the_installed_one() {
    let (key, keys) = key();
    let data = tempfile::tempdir().unwrap();
    let good = verify(&update::pack(&shipped(), 1, &key).unwrap(), &keys).unwrap();
    update::install(data.path(), &good).unwrap();
    let before = tree(data.path());

    // release 2: the low expert replaced by another family's (a 2-channel graph), its checksum
    // put in the manifest, and all of it signed: the signature holds, the bundle does not load
    let mut files = entries(&update::pack(&shipped(), 2, &key).unwrap());
    files.retain(|f| f.0 != "signature.json");
    let foreign = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/reaction_diffusion/anchor.onnx"),
    )
    .unwrap();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&files.iter().find(|f| f.0 == "manifest.json").unwrap().1).unwrap();
    manifest["experts"]["low"]["sha256"] =
        serde_json::json!(ccm_twin::fno::expert::sha256_hex(&foreign));
    for f in files.iter_mut() {
        match f.0.as_str() {
            "low.onnx" => f.1 = foreign.clone(),
            "manifest.json" => f.1 = serde_json::to_vec_pretty(&manifest).unwrap(),
            _ => {}
        }
    }
    let v = verify(&sign(&files, Family::DamBreak, 2, &key), &keys).unwrap();
    let e = update::install(data.path(), &v).unwrap_err();
    assert!(matches!(e, UpdateError::Invalid(_)), "{e}");
    assert_eq!(
        update::current(data.path(), Family::DamBreak)
            .unwrap()
            .unwrap()
            .release,
        1
    );
    assert_eq!(tree(data.path()), before, "nothing left behind");
}

mod mqtt_support;

/// The next `Update` event: (installed, release, message).
async fn next_update(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<ccm_twin::twin::serve::ServeEvent>,
) -> (bool, Option<u64>, String) {
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(30), events.recv()).await {
            Ok(Some(ccm_twin::twin::serve::ServeEvent::Update {
                installed,
                release,
                message,
            })) => return (installed, release, message),
            Ok(Some(_)) => continue,
            other => panic!("no update event: {other:?}"),
        }
    }
}

/// The runtime with `[updates]`: packages dropped into the watched folder and published on the
/// bundle topic. A tampered one and a rollback are refused and reported while the model keeps
/// serving; signed newer releases are installed and served at once (the status names the
/// release and the new manifest's checksum); a restart serves the installed release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_installs_signed_updates_from_a_folder_and_mqtt_and_refuses_the_rest() {
    use ccm_twin::twin::mqtt::{LinkOptions, MqttLink};
    use ccm_twin::twin::serve::{ServeEvent, StationConfig};
    use firmware_bridge::topic::{QoS, Topic};
    use std::time::Duration;

    let broker = mqtt_support::Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let (secret, public) = update::keygen();
    let key = update::signing_key(&secret).unwrap();
    // a re-calibrated copy of the shipped bundle: same experts, another manifest
    let recal = dir.path().join("recalibrated");
    std::fs::create_dir(&recal).unwrap();
    for f in ["anchor.onnx", "low.onnx", "high.onnx"] {
        std::fs::copy(shipped().join(f), recal.join(f)).unwrap();
    }
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(shipped().join("manifest.json")).unwrap()).unwrap();
    manifest["calibration"]["prefix"]["gain"] = serde_json::json!(1.0);
    let manifest = serde_json::to_vec_pretty(&manifest).unwrap();
    std::fs::write(recal.join("manifest.json"), &manifest).unwrap();
    let new_sha = ccm_twin::fno::expert::sha256_hex(&manifest);

    let incoming = dir.path().join("incoming");
    std::fs::create_dir(&incoming).unwrap();
    let config = dir.path().join("station.toml");
    std::fs::write(
        &config,
        format!(
            "[broker]\nhost = \"127.0.0.1\"\nport = {}\n\n[station]\nid = \"st-upd\"\n\
             family = \"dam_break\"\nmodels = \"{}\"\n\n[updates]\nkeys = [\"{public}\"]\n\
             data_dir = \"data\"\nfolder = \"incoming\"\nmqtt = true\npoll_seconds = 0.2\n",
            broker.port(),
            shipped().display()
        ),
    )
    .unwrap();
    let cfg = StationConfig::load(&config).unwrap();
    let (stop, mut events, server) = mqtt_support::spawn_serve(cfg.clone());
    let mut statuses =
        mqtt_support::Subscriber::connect(broker.addr(), "ccm/st-upd/status", None).await;

    // 1. a tampered package in the folder
    let mut tampered = update::pack(&recal, 2, &key).unwrap();
    let n = tampered.len();
    tampered[n / 2] ^= 0x40;
    std::fs::write(incoming.join("a-tampered.tar"), &tampered).unwrap();
    let (installed, _, message) = next_update(&mut events).await;
    assert!(!installed, "{message}");
    assert!(message.contains("keeps serving"), "{message}");
    assert!(incoming.join("taken/a-tampered.tar").is_file());

    // 2. a signed release 2 in the folder: served, and the status carries its manifest
    std::fs::write(
        incoming.join("b-release2.tar"),
        update::pack(&recal, 2, &key).unwrap(),
    )
    .unwrap();
    let (installed, release, message) = next_update(&mut events).await;
    assert!(installed && release == Some(2), "{message}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = statuses
            .recv(Duration::from_secs(5))
            .await
            .expect("a status");
        let s: firmware_bridge::dashboard::StatusMessage =
            serde_json::from_slice(&m.payload).unwrap();
        if s.model_release == Some(2) {
            assert_eq!(s.model_sha256.as_deref(), Some(new_sha.as_str()));
            assert!(s.last_update.unwrap().contains("release 2"));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{s:?}");
    }

    // 3. over MQTT: release 1 (a rollback), then release 3
    let mut opts = LinkOptions::new(broker.addr().into(), "st-upd-publisher");
    opts.max_packet_size = 32 << 20;
    let publisher = MqttLink::start(opts).unwrap();
    let mut outcomes = Vec::new();
    for release in [1, 3] {
        publisher
            .publish(
                "ccm/st-upd/bundle",
                QoS::AtLeastOnce,
                false,
                update::pack(&shipped(), release, &key).unwrap(),
            )
            .unwrap();
        publisher.flush(Duration::from_secs(30)).await.unwrap();
        outcomes.push(next_update(&mut events).await);
    }
    assert!(
        !outcomes[0].0 && outcomes[0].2.contains("rollback"),
        "{outcomes:?}"
    );
    assert!(outcomes[1].0 && outcomes[1].1 == Some(3), "{outcomes:?}");

    // the new model forecasts
    let family = ccm_twin::config::FamilyConfig::builtin(Family::DamBreak);
    let mut sim = ccm_twin::twin::simulator::StationSimulator::new(
        &family,
        ccm_twin::twin::simulator::SimulatorOptions::new("st-upd", 0.0125, 2),
    )
    .unwrap();
    for _ in 0..family.time.prefix {
        publisher
            .publish_to(
                Topic::Frames,
                "st-upd",
                sim.next_frame().unwrap().encode().unwrap(),
            )
            .unwrap();
    }
    publisher.flush(Duration::from_secs(10)).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(60), events.recv()).await {
            Ok(Some(ServeEvent::Forecast { .. })) => break,
            Ok(Some(_)) => continue,
            other => panic!("no forecast after the update: {other:?}"),
        }
    }
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    assert_eq!(
        update::current(&dir.path().join("data"), Family::DamBreak)
            .unwrap()
            .unwrap()
            .release,
        3
    );

    // a restart serves release 3 (the retained status says so)
    let (stop, _events, server) = mqtt_support::spawn_serve(cfg);
    let mut sub = mqtt_support::Subscriber::connect(broker.addr(), "ccm/st-upd/status", None).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        let m = sub.recv(Duration::from_secs(5)).await.expect("a status");
        let s: firmware_bridge::dashboard::StatusMessage =
            serde_json::from_slice(&m.payload).unwrap();
        if s.state == firmware_bridge::dashboard::StationState::Online {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "{s:?}");
    };
    assert_eq!(status.model_release, Some(3), "{status:?}");
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    publisher.close().await;
}

/// Random damage to a signed package (bytes flipped, cut short, random archives): `verify`
/// never panics, and whatever it accepts holds exactly the signed files (a flip that lands in
/// tar padding changes nothing that is installed).
#[test]
fn damaged_packages_never_panic_and_never_pass_altered_files() {
    use rand::{Rng, SeedableRng};
    let (key, keys) = key();
    let package = update::pack(&shipped(), 1, &key).unwrap();
    let original = entries(&package);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let (mut accepted, mut refused) = (0, 0);
    for i in 0..120 {
        let mut p = package.clone();
        match i % 3 {
            0 => {
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..p.len());
                    p[at] ^= 1 << rng.random_range(0..8);
                }
            }
            1 => p.truncate(rng.random_range(0..p.len())),
            _ => {
                p = (0..rng.random_range(0..4096))
                    .map(|_| rng.random())
                    .collect();
            }
        }
        match verify(&p, &keys) {
            Ok(v) => {
                accepted += 1;
                let mut files = v.files.clone();
                files.sort();
                let mut want = original.clone();
                want.sort();
                assert_eq!(files, want, "iteration {i}: an altered file passed");
            }
            Err(_) => refused += 1,
        }
    }
    eprintln!("{accepted} damaged packages still held the signed files, {refused} refused");
    assert!(refused > 80, "{refused}");
}
