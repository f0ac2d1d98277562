//! Signed model updates: a new bundle (the three experts and their manifest) arrives as one
//! package, over MQTT or dropped into a folder, and is installed only when its ed25519 signature
//! verifies against a key the station trusts and its release is newer than the installed one.
//!
//! A package is a tar archive of exactly five regular files at its top level: `manifest.json`,
//! the three ONNX files the manifest names (`anchor.onnx`, `low.onnx`, `high.onnx`) and
//! `signature.json`. The signature covers the family, the release number and the manifest's
//! sha256; the manifest holds every expert's sha256, so one signature covers every byte. The
//! archive is read entry by entry and never unpacked as such: a directory, a link, a device, a
//! path with more than a plain file name (`../`, `/abs`), an unknown or repeated name, an entry
//! or a package over the size limit, each refuses the whole package before anything is written.
//!
//! [`install`] writes a verified package into `<data_dir>/bundles/<family>-r<release>/` through a
//! staging directory and a rename, loads it as a bundle (checksums, one shared graph), and then
//! switches `<data_dir>/<family>.current.json` (written aside and renamed) to it: a reader sees the
//! old bundle or the new one, never a mix. Nothing is written outside `data_dir`.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::config::Family;
use crate::fno::expert::sha256_hex;
use crate::models::FamilyModels;

/// The files a package holds besides its signature.
pub const BUNDLE_FILES: [&str; 4] = ["manifest.json", "anchor.onnx", "low.onnx", "high.onnx"];
/// The signature's file name.
pub const SIGNATURE_FILE: &str = "signature.json";
/// Default size limit of a package (the shipped bundles are about 11.4 MB).
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;

/// Why a package was refused, or an install failed.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The package or an entry is larger than allowed.
    #[error("model update refused: {what} is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// The package or the entry.
        what: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// An entry may not be in a package.
    #[error("model update refused: entry `{name}` {reason}")]
    BadEntry {
        /// The entry's path as the archive gives it.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The archive cannot be read.
    #[error("model update refused: not a readable bundle package ({0})")]
    Unreadable(String),
    /// A file is missing.
    #[error("model update refused: the package has no `{0}`")]
    Missing(&'static str),
    /// The signature file is malformed.
    #[error("model update refused: bad signature file ({0})")]
    BadSignatureFile(String),
    /// The key that signed is not trusted.
    #[error("model update refused: signed by key {0}, which is not in the station's updates.keys")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error(
        "model update refused: the signature does not match the package (it was changed after \
         signing, or signed for another release or family)"
    )]
    BadSignature,
    /// A file differs from what the signed manifest says.
    #[error("model update refused: {0}")]
    Tampered(String),
    /// The package is for another family.
    #[error("model update refused: a {found} bundle, this station serves {expected}")]
    WrongFamily {
        /// The station's family.
        expected: Family,
        /// The package's.
        found: Family,
    },
    /// The release is not newer than the installed one.
    #[error(
        "model update refused: release {offered} is not newer than the installed release \
         {installed} (a rollback)"
    )]
    Rollback {
        /// The package's release.
        offered: u64,
        /// The installed release.
        installed: u64,
    },
    /// The verified files do not load as a bundle.
    #[error("model update refused: the bundle does not load ({0})")]
    Invalid(String),
    /// A key is malformed.
    #[error("{0}")]
    BadKey(String),
    /// Reading or writing the data folder failed.
    #[error("model update: {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> UpdateError {
    let path = path.to_path_buf();
    move |source| UpdateError::Io {
        action,
        path,
        source,
    }
}

/// `signature.json`: who signed which release of which family's manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SignatureFile {
    /// Layout version (1).
    pub format: u32,
    /// The family of the bundle.
    pub family: Family,
    /// Release number: a station installs only releases newer than its own.
    pub release: u64,
    /// sha256 of `manifest.json`.
    pub manifest_sha256: String,
    /// The signer's ed25519 public key (hex).
    pub public_key: String,
    /// The ed25519 signature (hex) of [`signed_message`].
    pub signature: String,
}

/// The bytes a signature covers.
pub fn signed_message(family: Family, release: u64, manifest_sha256: &str) -> Vec<u8> {
    format!(
        "ccm-twin model bundle v1\nfamily {}\nrelease {release}\nmanifest sha256 {manifest_sha256}\n",
        family.name()
    )
    .into_bytes()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(text: &str, what: &str) -> Result<[u8; N], String> {
    let t = text.trim();
    if t.len() != 2 * N || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{what}: expected {} hex digits", 2 * N));
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).expect("checked hex");
    }
    Ok(out)
}

/// A new signing key: `(secret key hex, public key hex)`. Keep the secret off the stations; give
/// them the public key (`[updates] keys`).
pub fn keygen() -> (String, String) {
    let secret: [u8; 32] = rand::random();
    let key = SigningKey::from_bytes(&secret);
    (hex(&secret), hex(key.verifying_key().as_bytes()))
}

/// Reads a secret key (64 hex digits, the first line of a file).
pub fn signing_key(text: &str) -> Result<SigningKey, UpdateError> {
    let line = text.lines().next().unwrap_or_default();
    unhex::<32>(line, "secret key")
        .map(|b| SigningKey::from_bytes(&b))
        .map_err(UpdateError::BadKey)
}

/// The public keys a station trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKeys(Vec<VerifyingKey>);

impl TrustedKeys {
    /// Parses hex ed25519 public keys; every bad one is named.
    pub fn parse(keys: &[String]) -> Result<Self, UpdateError> {
        let mut out = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let bytes =
                unhex::<32>(k, &format!("updates.keys[{i}]")).map_err(UpdateError::BadKey)?;
            out.push(VerifyingKey::from_bytes(&bytes).map_err(|e| {
                UpdateError::BadKey(format!(
                    "updates.keys[{i}]: not an ed25519 public key ({e})"
                ))
            })?);
        }
        if out.is_empty() {
            return Err(UpdateError::BadKey(
                "updates.keys: at least one trusted public key is needed".into(),
            ));
        }
        Ok(TrustedKeys(out))
    }
}

/// Packs the bundle in `dir` as release `release`, signed with `key`.
pub fn pack(dir: &Path, release: u64, key: &SigningKey) -> Result<Vec<u8>, UpdateError> {
    let models = FamilyModels::load(dir).map_err(|e| UpdateError::Invalid(e.to_string()))?;
    let manifest = std::fs::read(dir.join("manifest.json"))
        .map_err(io("cannot read", &dir.join("manifest.json")))?;
    let family = models.manifest.family;
    let manifest_sha256 = sha256_hex(&manifest);
    let signature = key.sign(&signed_message(family, release, &manifest_sha256));
    let sig = SignatureFile {
        format: 1,
        family,
        release,
        manifest_sha256,
        public_key: hex(key.verifying_key().as_bytes()),
        signature: hex(&signature.to_bytes()),
    };
    let mut files: Vec<(String, Vec<u8>)> = vec![("manifest.json".into(), manifest)];
    for role in ["anchor", "low", "high"] {
        let name = &models.manifest.experts[role].file;
        let path = dir.join(name);
        files.push((
            name.clone(),
            std::fs::read(&path).map_err(io("cannot read", &path))?,
        ));
    }
    files.push((
        SIGNATURE_FILE.into(),
        serde_json::to_vec_pretty(&sig).expect("a signature serialises"),
    ));
    let mut archive = tar::Builder::new(Vec::new());
    for (name, bytes) in &files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        archive
            .append_data(&mut header, name, bytes.as_slice())
            .map_err(|e| UpdateError::Unreadable(e.to_string()))?;
    }
    archive
        .into_inner()
        .map_err(|e| UpdateError::Unreadable(e.to_string()))
}

/// A package whose signature verified.
#[derive(Debug, Clone)]
pub struct Verified {
    /// Its family.
    pub family: Family,
    /// Its release.
    pub release: u64,
    /// The key that signed it (hex).
    pub key: String,
    /// `(file name, bytes)` of the bundle's files (signature included).
    pub files: Vec<(String, Vec<u8>)>,
}

/// Checks a package: its layout, its size, its signature against `keys`, every file against the
/// signed manifest, and its family.
pub fn verify(
    package: &[u8],
    keys: &TrustedKeys,
    family: Family,
    max_bytes: u64,
) -> Result<Verified, UpdateError> {
    if package.len() as u64 > max_bytes {
        return Err(UpdateError::TooLarge {
            what: "the package".into(),
            size: package.len() as u64,
            limit: max_bytes,
        });
    }
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut archive = tar::Archive::new(package);
    let entries = archive
        .entries()
        .map_err(|e| UpdateError::Unreadable(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| UpdateError::Unreadable(e.to_string()))?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let bad = |reason| UpdateError::BadEntry {
            name: raw.clone(),
            reason,
        };
        if !matches!(
            entry.header().entry_type(),
            tar::EntryType::Regular | tar::EntryType::Continuous
        ) {
            return Err(bad(
                "is not a regular file (links, directories and devices are refused)",
            ));
        }
        let path = Path::new(&raw);
        let mut parts = path.components();
        let name = match (parts.next(), parts.next()) {
            (Some(Component::Normal(n)), None) => n.to_string_lossy().into_owned(),
            _ => {
                return Err(bad(
                    "is not a plain file name (no directories, `..` or absolute paths)",
                ));
            }
        };
        if !BUNDLE_FILES.contains(&name.as_str()) && name != SIGNATURE_FILE {
            return Err(bad("is not a file of a model bundle"));
        }
        if files.iter().any(|(n, _)| *n == name) {
            return Err(bad("appears twice"));
        }
        let size = entry
            .header()
            .size()
            .map_err(|e| UpdateError::Unreadable(e.to_string()))?;
        if size > max_bytes {
            return Err(UpdateError::TooLarge {
                what: format!("entry `{name}`"),
                size,
                limit: max_bytes,
            });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        entry
            .by_ref()
            .take(max_bytes + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| UpdateError::Unreadable(e.to_string()))?;
        files.push((name, bytes));
    }
    let get = |name: &'static str| -> Result<&[u8], UpdateError> {
        files
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.as_slice())
            .ok_or(UpdateError::Missing(name))
    };
    let sig: SignatureFile = serde_json::from_slice(get(SIGNATURE_FILE)?)
        .map_err(|e| UpdateError::BadSignatureFile(e.to_string()))?;
    if sig.format != 1 {
        return Err(UpdateError::BadSignatureFile(format!(
            "format {}, this runtime reads 1",
            sig.format
        )));
    }
    let public =
        unhex::<32>(&sig.public_key, "public_key").map_err(UpdateError::BadSignatureFile)?;
    let signature = Signature::from_bytes(
        &unhex::<64>(&sig.signature, "signature").map_err(UpdateError::BadSignatureFile)?,
    );
    let key = keys
        .0
        .iter()
        .find(|k| k.as_bytes() == &public)
        .ok_or_else(|| UpdateError::UnknownKey(sig.public_key.clone()))?;
    key.verify(
        &signed_message(sig.family, sig.release, &sig.manifest_sha256),
        &signature,
    )
    .map_err(|_| UpdateError::BadSignature)?;
    // the signature holds; now every byte must be the signed one
    let manifest_bytes = get("manifest.json")?;
    if sha256_hex(manifest_bytes) != sig.manifest_sha256 {
        return Err(UpdateError::Tampered(
            "manifest.json differs from the signed one".into(),
        ));
    }
    let manifest: crate::models::Manifest = serde_json::from_slice(manifest_bytes)
        .map_err(|e| UpdateError::Invalid(format!("manifest.json: {e}")))?;
    if manifest.family != sig.family {
        return Err(UpdateError::Tampered(
            "the manifest's family differs from the signed one".into(),
        ));
    }
    for role in ["anchor", "low", "high"] {
        let entry = manifest
            .experts
            .get(role)
            .ok_or_else(|| UpdateError::Invalid(format!("the manifest lists no {role} expert")))?;
        let expected = format!("{role}.onnx");
        if entry.file != expected {
            return Err(UpdateError::Invalid(format!(
                "the manifest names `{}` for the {role} expert; a package holds `{expected}`",
                entry.file
            )));
        }
        let name = BUNDLE_FILES
            .iter()
            .find(|f| **f == expected)
            .expect("an expert file name");
        if sha256_hex(get(name)?) != entry.sha256 {
            return Err(UpdateError::Tampered(format!(
                "{expected} differs from the signed manifest's checksum"
            )));
        }
    }
    if sig.family != family {
        return Err(UpdateError::WrongFamily {
            expected: family,
            found: sig.family,
        });
    }
    Ok(Verified {
        family: sig.family,
        release: sig.release,
        key: sig.public_key,
        files,
    })
}

/// The pointer to a family's installed bundle: `<data_dir>/<family>.current.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Installed {
    /// The family.
    pub family: Family,
    /// The release.
    pub release: u64,
    /// The bundle's directory name under `<data_dir>/bundles/`.
    pub dir: String,
    /// The key that signed it (hex).
    pub key: String,
}

impl Installed {
    /// The bundle's directory.
    pub fn path(&self, data_dir: &Path) -> PathBuf {
        data_dir.join("bundles").join(&self.dir)
    }
}

fn pointer(data_dir: &Path, family: Family) -> PathBuf {
    data_dir.join(format!("{}.current.json", family.name()))
}

/// The installed bundle of `family` under `data_dir`, if any.
pub fn current(data_dir: &Path, family: Family) -> Result<Option<Installed>, UpdateError> {
    let path = pointer(data_dir, family);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("cannot read", &path)(e)),
    };
    let installed: Installed = serde_json::from_slice(&text)
        .map_err(|e| UpdateError::Invalid(format!("{}: {e}", path.display())))?;
    let plain = {
        let mut c = Path::new(&installed.dir).components();
        matches!((c.next(), c.next()), (Some(Component::Normal(_)), None))
    };
    if !plain || installed.family != family {
        return Err(UpdateError::Invalid(format!(
            "{}: does not point at a {family} bundle under {}",
            path.display(),
            data_dir.join("bundles").display()
        )));
    }
    Ok(Some(installed))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), UpdateError> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(io("cannot create", path))?;
    f.write_all(bytes).map_err(io("cannot write", path))?;
    f.sync_all().map_err(io("cannot sync", path))
}

/// Installs a verified package under `data_dir` (see the module docs) and returns the loaded
/// bundle. A release not newer than the installed one is refused; on any failure the installed
/// bundle stays current and nothing half-written is left behind.
pub fn install(data_dir: &Path, v: &Verified) -> Result<(Installed, FamilyModels), UpdateError> {
    if let Some(now) = current(data_dir, v.family)?
        && v.release <= now.release
    {
        return Err(UpdateError::Rollback {
            offered: v.release,
            installed: now.release,
        });
    }
    let bundles = data_dir.join("bundles");
    std::fs::create_dir_all(&bundles).map_err(io("cannot create", &bundles))?;
    let name = format!("{}-r{}", v.family.name(), v.release);
    let staging = bundles.join(format!(".staging-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir(&staging).map_err(io("cannot create", &staging))?;
    let staged = (|| {
        for (file, bytes) in &v.files {
            write_synced(&staging.join(file), bytes)?;
        }
        FamilyModels::load(&staging).map_err(|e| UpdateError::Invalid(e.to_string()))
    })();
    if let Err(e) = staged {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    let target = bundles.join(&name);
    // a leftover of an install that failed before its pointer was switched
    let _ = std::fs::remove_dir_all(&target);
    std::fs::rename(&staging, &target).map_err(io("cannot move into place", &target))?;
    let installed = Installed {
        family: v.family,
        release: v.release,
        dir: name,
        key: v.key.clone(),
    };
    let ptr = pointer(data_dir, v.family);
    let tmp = ptr.with_extension(format!("json.tmp-{}", std::process::id()));
    write_synced(
        &tmp,
        &serde_json::to_vec_pretty(&installed).expect("a pointer serialises"),
    )?;
    std::fs::rename(&tmp, &ptr).map_err(io("cannot switch", &ptr))?;
    let models = FamilyModels::load(&target).map_err(|e| UpdateError::Invalid(e.to_string()))?;
    Ok((installed, models))
}
